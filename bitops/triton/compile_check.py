"""Compile every Triton kernel of bitops for a GPU target without a GPU; print a JSON summary.

Run as ``TRITON_INTERPRET=0 python -m bitops.triton.compile_check 80`` (or 90): no GPU needed. For
each kernel variant (every kernel; each activation dtype, bit width and GEMM path) it prints whether
the PTX holds tensor-core instructions (``mma.sync``, ``wgmma.mma_async``) and fused multiply-adds,
and its shared memory. GEMM kernels are compiled with the config the wrappers launch without
autotuning (ops.default_config), so that config is known to fit the GPU.
tests/test_triton_compile.py runs it in a subprocess, so the test process's interpreter setting
does not apply here.
"""
from __future__ import annotations

import json
import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kernels as K
from .ops import default_config

assert not K.INTERPRETED, "run with TRITON_INTERPRET=0"

PTR = {"int8": "*i8", "fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
DOT = {"fp16": (tl.float16, "tf32"), "bf16": (tl.bfloat16, "tf32"), "fp32": (tl.float32, "tf32x3")}


def _variants():
    for bits in (1, 2):
        yield f"pack_bits{bits}", K.pack_kernel, {"codes_ptr": "*i8", "out_ptr": "*i32", "R": "i32", "K": "i32", "W": "i32"}, \
            dict(BITS=bits, BLOCK_R=16, BLOCK_W=16), {}, False
        yield f"unpack_bits{bits}", K.unpack_kernel, {"packed_ptr": "*i32", "out_ptr": "*i8", "R": "i32", "K": "i32", "W": "i32"}, \
            dict(BITS=bits, BLOCK_R=16, BLOCK_K=256), {}, False
    yield "int8_epilogue", K.int8_epilogue_kernel, {"acc_ptr": "*i32", "xs_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*fp32",
                                                    "y_ptr": "*fp32", "M": "i32", "N": "i32", "G": "i32"}, \
        dict(HAS_BIAS=True, BLOCK_M=16, BLOCK_N=64), dict(enable_fp_fusion=False), False
    ints = {n: "i32" for n in ("M", "N", "K", "W", "G", "GROUP_SIZE")}
    # (activation dtype, bits, path): int8 and every float dtype, both bit widths and both paths covered.
    for act, bits, path in [("int8", 1, "gemm"), ("int8", 2, "splitk"), ("int8", 2, "gemm"), ("fp16", 1, "gemm"),
                            ("fp16", 2, "splitk"), ("bf16", 2, "gemm"), ("fp32", 1, "gemm")]:
        small = path == "splitk"
        sig = {"x_ptr": PTR[act], "xs_ptr": "*fp32", "w_ptr": "*i32", "ws_ptr": "*fp32", "bias_ptr": "*fp32",
               "y_ptr": "*fp32" if act in ("int8", "fp32") else PTR[act], "part_ptr": "*i32" if act == "int8" else "*fp32",
               **ints, "K_PER_SPLIT": "i32", "M_BUCKET": "i32"}
        dot = (tl.int8, "tf32") if act == "int8" else DOT[act]
        cfg = default_config("fwd", small, act == "fp32")
        consts = dict(BITS=bits, IS_INT8=act == "int8", HAS_BIAS=True, SPLIT_K=small,
                      DOT_DTYPE=dot[0], DOT_PRECISION=dot[1], **cfg.kwargs)
        yield f"linear_fwd_{act}_w{bits}_{path}", K.linear_fwd_kernel, sig, consts, \
            dict(enable_fp_fusion=False, num_warps=cfg.num_warps, num_stages=cfg.num_stages), True
    for act, bits, path in [("fp16", 2, "gemm"), ("bf16", 1, "splitk"), ("fp32", 2, "gemm")]:
        small = path == "splitk"
        sig = {"g_ptr": PTR[act], "w_ptr": "*i32", "ws_ptr": "*fp32", "out_ptr": PTR[act], "part_ptr": "*fp32",
               **ints, "N_PER_SPLIT": "i32", "M_BUCKET": "i32"}
        cfg = default_config("grad", small, act == "fp32")
        consts = dict(BITS=bits, SPLIT_K=small, PER_ROW=bits == 1, DOT_DTYPE=DOT[act][0], DOT_PRECISION=DOT[act][1],
                      **cfg.kwargs)
        yield f"grad_input_{act}_w{bits}_{path}", K.grad_input_kernel, sig, consts, \
            dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages), True


def main(arch: int):
    target = GPUTarget("cuda", arch, 32)
    out = {}
    for name, fn, sig, consts, opts, is_gemm in _variants():
        t = time.time()
        sig = {**sig, **{k: "constexpr" for k in consts}}
        options = {"num_warps": 4, "num_stages": 3, **opts}
        compiled = triton.compile(ASTSource(fn, sig, constexprs=consts), target=target, options=options)
        ptx = compiled.asm["ptx"]
        out[name] = {"gemm": is_gemm, "mma": "mma.sync" in ptx, "wgmma": "wgmma.mma_async" in ptx,
                     "fma": "fma.rn.f32" in ptx,
                     "shared": compiled.metadata.shared, "seconds": round(time.time() - t, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
