"""Python wrappers that launch the Triton kernels, with the signatures of the ``torch.ops.bitops`` ops.

Each wrapper validates its arguments with :mod:`bitops._checks` (the messages of every backend),
allocates the output and picks a kernel path from the shapes:

* M <= 16 (decode, small batches): a GEMV-like path with 16-row tiles and split-K (split-N for
  grad_input) so that enough programs cover the GPU when N alone gives too few tiles. Integer partial
  sums of the int8 path are combined with int32 atomics (exact in any order) and finished by the
  reference epilogue; float partial sums go to a (SPLIT, M, N) buffer summed afterwards.
* M > 16: a tiled GEMM path, one program per output tile, grouped tile order for L2 reuse.

On a GPU both paths are ``triton.autotune``-d over a small config set pruned by shape and keyed by
(M bucket, N, K, group size, bits, int8/float, split, dtypes); the tuning cache only picks launch
parameters and never changes results. ``BITOPS_TRITON_AUTOTUNE=0`` (read at import) skips the tuning
and launches one default config per path: for tests and for short jobs that would spend longer tuning
than running. Under ``TRITON_INTERPRET=1`` (CPU tensors) the kernels run with fixed small-shape
configs instead (the autotuner times with CUDA events).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _checks
from ..formats import WORD_BITS, packed_words
from . import kernels as K

SMALL_M = 16  # M <= SMALL_M takes the GEMV / split-K path
SPLIT_ALIGN = 256  # split slices are multiples of this (a multiple of every BLOCK_K / reduction block)

# (BLOCK_N, BLOCK_K, num_warps, num_stages) for the M <= 16 path (BLOCK_M = 16).
_SMALL_CONFIGS = [(32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 3), (128, 256, 8, 3), (32, 256, 4, 4)]
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the tiled path.
_LARGE_CONFIGS = [
    (64, 64, 128, 4, 4), (64, 128, 128, 4, 3), (128, 64, 128, 4, 3),
    (128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3),
]
# 4-byte activations (fp32 through 3xTF32) stage about twice the shared memory: smaller tiles, 2 stages.
_SMALL_CONFIGS_WIDE = [(32, 128, 4, 2), (64, 64, 4, 2), (64, 128, 4, 2), (128, 64, 4, 2)]
_LARGE_CONFIGS_WIDE = [(64, 64, 64, 4, 2), (64, 128, 64, 4, 2), (128, 64, 64, 8, 2), (128, 128, 32, 8, 2)]
# Without autotuning, config 0 of each set runs: tests/test_triton_compile.py checks that it fits the
# shared memory of an A100 and an H100 for every activation dtype.
# Fixed configs in the interpreter: (BLOCK_M, BLOCK_N, BLOCK_K) per path.
_INTERP_SMALL = (16, 64, 128)
_INTERP_LARGE = (64, 64, 128)
_INTERP_SMS = 4  # pretend SM count: makes the interpreter exercise split-K on small shapes
AUTOTUNE = os.environ.get("BITOPS_TRITON_AUTOTUNE", "1") != "0"


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _fwd_configs(small: bool, wide: bool = False):
    """Forward configs; ``wide``: 4-byte (fp32) activations."""
    if small:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 1}, num_warps=w, num_stages=s)
                for bn, bk, w, s in (_SMALL_CONFIGS_WIDE if wide else _SMALL_CONFIGS)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in (_LARGE_CONFIGS_WIDE if wide else _LARGE_CONFIGS)]


def _grad_configs(small: bool, wide: bool = False):
    # grad_input reduces over N and writes (M, K): its BLOCK_N is the reduction block, BLOCK_K the output one.
    out = []
    for c in _fwd_configs(small, wide):
        kw = dict(c.kwargs)
        kw["BLOCK_N"], kw["BLOCK_K"] = kw["BLOCK_K"], kw["BLOCK_N"]
        out.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    return out


def default_config(kind: str, small: bool, wide: bool):
    """The config launched without autotuning (kind "fwd" or "grad")."""
    return (_fwd_configs if kind == "fwd" else _grad_configs)(small, wide)[0]


def _prune(out_dim: str, red_dim: str, out_block: str, red_block: str):
    """Drop configs whose blocks are far larger than the problem; always keep at least one."""

    def prune(configs, named_args, **kwargs):
        m_cap = max(16, named_args["M_BUCKET"])
        o_cap = max(32, _next_pow2(named_args[out_dim]))
        r_cap = max(64, _next_pow2(named_args[red_dim]))
        kept = [c for c in configs
                if c.kwargs["BLOCK_M"] <= max(64, m_cap) and c.kwargs[out_block] <= o_cap and c.kwargs[red_block] <= r_cap]
        return kept or configs[:1]

    return prune


@functools.lru_cache(maxsize=None)
def _tuned(kind: str, small: bool, autotune: bool = True, wide: bool = False):
    """The autotuned launcher of a GEMM kernel (GPU only; built on first use). ``autotune=False``: one
    config (:func:`default_config`), so nothing is timed."""
    configs = (_fwd_configs if kind == "fwd" else _grad_configs)(small, wide)
    configs = configs if autotune else configs[:1]
    if kind == "fwd":
        return triton.autotune(
            configs=configs, key=["M_BUCKET", "N", "K", "GROUP_SIZE", "BITS", "IS_INT8", "K_PER_SPLIT"],
            prune_configs_by={"early_config_prune": _prune("N", "K", "BLOCK_N", "BLOCK_K")},
            reset_to_zero=["part_ptr"],  # the int8 split path accumulates into it with atomics
        )(K.linear_fwd_kernel)
    return triton.autotune(
        configs=configs, key=["M_BUCKET", "N", "K", "GROUP_SIZE", "BITS", "N_PER_SPLIT"],
        prune_configs_by={"early_config_prune": _prune("K", "N", "BLOCK_K", "BLOCK_N")},
    )(K.grad_input_kernel)


def _check_runnable(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and K.INTERPRETED:
        return
    raise ValueError(
        f"{name} is on {t.device}; expected a CUDA tensor for the Triton kernels (CPU tensors run only in "
        "the Triton interpreter: TRITON_INTERPRET=1 set before bitops.triton.kernels is first imported)"
    )


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _sm_count(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return _INTERP_SMS
    return torch.cuda.get_device_properties(t.device).multi_processor_count


def _split(out_tiles: int, red: int, sms: int) -> tuple:
    """(split, per_split): slices of the reduction so that out_tiles * split covers about 2 waves."""
    want = 1 if out_tiles >= sms else -(-2 * sms // out_tiles)
    split = max(1, min(want, -(-red // SPLIT_ALIGN)))
    per = -(-(-(-red // split)) // SPLIT_ALIGN) * SPLIT_ALIGN
    return -(-red // per), per


_DOT = {torch.float16: (tl.float16, "tf32"), torch.bfloat16: (tl.bfloat16, "tf32"), torch.float32: (tl.float32, "tf32x3")}


def _dot_args(dtype: torch.dtype):
    """(DOT_DTYPE, DOT_PRECISION): half types multiply natively; fp32 uses 3xTF32 (about fp32 accuracy)
    on tensor cores. The interpreter multiplies in f32 (its bf16 is broken: triton-lang/triton#11584)."""
    if K.INTERPRETED:
        return tl.float32, "ieee"
    return _DOT[dtype]


# --------------------------------------------------------------------------------------------- pack


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes (..., K) -> int32 words (..., ceil(K*bits/32)); layout in bitops.formats."""
    _checks.check_codes(codes, bits)
    _check_runnable("codes", codes)
    k = codes.shape[-1]
    w = packed_words(k, bits)
    out = torch.empty((*codes.shape[:-1], w), dtype=torch.int32, device=codes.device)
    rows = out.numel() // w
    if rows == 0:
        return out
    c = codes.contiguous()
    block_r, block_w = 16, 16
    with _device_ctx(c):
        K.pack_kernel[(triton.cdiv(rows, block_r), triton.cdiv(w, block_w))](
            c, out, rows, k, w, BITS=bits, BLOCK_R=block_r, BLOCK_W=block_w)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """int32 words (..., W) -> int8 codes (..., k); exact inverse of pack_bits."""
    _checks.check_packed(packed, bits, k)
    _check_runnable("packed", packed)
    w = packed.shape[-1]
    out = torch.empty((*packed.shape[:-1], k), dtype=torch.int8, device=packed.device)
    rows = out.numel() // k
    if rows == 0:
        return out
    p = packed.contiguous()
    block_r, block_k = 16, 256
    with _device_ctx(p):
        K.unpack_kernel[(triton.cdiv(rows, block_r), triton.cdiv(k, block_k))](
            p, out, rows, k, w, BITS=bits, BLOCK_R=block_r, BLOCK_K=block_k)
    return out


# ------------------------------------------------------------------------------------------ forward


def _forward(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size, out_dtype):
    m, n, k = x.shape[0], packed_weight.shape[0], in_features
    is_int8 = x.dtype == torch.int8
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    x = x.contiguous()
    pw, ws = packed_weight.contiguous(), weight_scale.contiguous()
    xs = x_scale.contiguous() if is_int8 else ws  # xs_ptr is unused on the float path
    b = bias.contiguous() if bias is not None else ws  # unused when HAS_BIAS is False
    g = ws.shape[1]
    small = m <= SMALL_M
    dot_dtype, dot_prec = (tl.int8, "tf32") if is_int8 else _dot_args(x.dtype)
    if small:
        split, per = _split(triton.cdiv(n, _INTERP_SMALL[1] if K.INTERPRETED else 64), k, _sm_count(x))
    else:
        split, per = 1, k
    if split == 1:
        part = y  # unused
    elif is_int8:
        part = torch.zeros((m, n, g), dtype=torch.int32, device=x.device)
    else:
        part = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    args = (x, xs, pw, ws, b, y, part, m, n, k, pw.shape[1], g, group_size, per, _next_pow2(m))
    consts = dict(BITS=bits, IS_INT8=is_int8, HAS_BIAS=bias is not None, SPLIT_K=split > 1,
                  DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_prec)
    with _device_ctx(x):
        if K.INTERPRETED:
            bm, bn, bk = _INTERP_SMALL if small else _INTERP_LARGE
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), split)
            K.linear_fwd_kernel[grid](*args, **consts, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8)
        else:
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split)  # noqa: E731
            # No FMA contraction: the int8 epilogue must round like the reference, step by step.
            _tuned("fwd", small, AUTOTUNE, x.dtype == torch.float32)[grid](*args, **consts, enable_fp_fusion=False)
        if split > 1 and is_int8:
            bm, bn = 16, 64
            K.int8_epilogue_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
                part, xs, ws, b, y, m, n, g, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn,
                **({} if K.INTERPRETED else {"enable_fp_fusion": False}))
    if split > 1 and not is_int8:
        out = part.sum(0)
        if bias is not None:
            out = out + bias.to(torch.float32)
        y.copy_(out)
    return y


def packed_linear_int8(x, x_scale, packed_weight, weight_scale, bias: Optional[torch.Tensor], bits: int,
                       in_features: int, group_size: int) -> torch.Tensor:
    """y f32 (M, N) from int8 x (M, K), x_scale f32 (M,), packed int32 (N, W), weight_scale f32 (N, G),
    bias (N,) or None; bit-exact with bitops.reference.packed_linear_int8."""
    _checks.check_linear_int8(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size)
    _check_runnable("x", x)
    return _forward(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size, torch.float32)


def packed_linear_float(x, packed_weight, weight_scale, bias: Optional[torch.Tensor], bits: int,
                        in_features: int, group_size: int) -> torch.Tensor:
    """y (M, N) in x's dtype from float x (M, K) (f16/bf16/f32) and packed int32 (N, W); f32 accumulation."""
    _checks.check_linear_float(x, packed_weight, weight_scale, bias, bits, in_features, group_size)
    _check_runnable("x", x)
    return _forward(x, None, packed_weight, weight_scale, bias, bits, in_features, group_size, x.dtype)


def packed_linear_grad_input(grad_output, packed_weight, weight_scale, bits: int, in_features: int,
                             group_size: int) -> torch.Tensor:
    """grad_input (M, K) in grad_output's dtype = grad_output (M, N) times dequantized packed (N, K)."""
    _checks.check_grad_input(grad_output, packed_weight, weight_scale, bits, in_features, group_size)
    _check_runnable("grad_output", grad_output)
    m, n, k = grad_output.shape[0], packed_weight.shape[0], in_features
    out = torch.empty((m, k), dtype=grad_output.dtype, device=grad_output.device)
    if m == 0:
        return out
    if n == 0:
        return out.zero_()
    go = grad_output.contiguous()
    pw, ws = packed_weight.contiguous(), weight_scale.contiguous()
    small = m <= SMALL_M
    if small:
        split, per = _split(triton.cdiv(k, _INTERP_SMALL[1] if K.INTERPRETED else 64), n, _sm_count(go))
    else:
        split, per = 1, n
    part = out if split == 1 else torch.empty((split, m, k), dtype=torch.float32, device=go.device)
    dot_dtype, dot_prec = _dot_args(go.dtype)
    args = (go, pw, ws, out, part, m, n, k, pw.shape[1], ws.shape[1], group_size, per, _next_pow2(m))
    consts = dict(BITS=bits, SPLIT_K=split > 1, PER_ROW=ws.shape[1] == 1, DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_prec)
    with _device_ctx(go):
        if K.INTERPRETED:
            bm, bo, br = _INTERP_SMALL if small else _INTERP_LARGE  # (rows, output block, reduction block)
            grid = (triton.cdiv(m, bm) * triton.cdiv(k, bo), split)
            K.grad_input_kernel[grid](*args, **consts, BLOCK_M=bm, BLOCK_N=br, BLOCK_K=bo, GROUP_M=8)
        else:
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]), split)  # noqa: E731
            _tuned("grad", small, AUTOTUNE, go.dtype == torch.float32)[grid](*args, **consts)
    if split > 1:
        out.copy_(part.sum(0))
    return out


OPS = {
    "pack_bits": pack_bits,
    "unpack_bits": unpack_bits,
    "packed_linear_int8": packed_linear_int8,
    "packed_linear_float": packed_linear_float,
    "packed_linear_grad_input": packed_linear_grad_input,
}
assert WORD_BITS == 32  # the kernels hard-code 32-bit words
