"""Every Triton kernel compiles for sm_80 and sm_90 without a GPU, and the GEMM paths use tensor cores.

Compilation runs in subprocesses with TRITON_INTERPRET=0 (python -m bitops.triton.compile_check),
one per target, in parallel. Asserted on the generated PTX:
* GEMM paths (forward int8/float, grad_input; split-K and tiled): ``mma.sync`` on sm_80;
  ``wgmma.mma_async`` or ``mma.sync`` on sm_90.
* The int8 forward and its split-K epilogue contain no ``fma.rn.f32``: they are launched with
  enable_fp_fusion=False so the float epilogue rounds step by step like bitops.reference (with fusion
  on, the same kernel compiles to FMAs: checked once by hand, 128 fma.rn.f32 on sm_80).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = {"pack_kernel": "pack_bits", "unpack_kernel": "unpack_bits", "int8_epilogue_kernel": "int8_epilogue",
           "linear_fwd_kernel": "linear_fwd_", "grad_input_kernel": "grad_input_"}


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, TRITON_INTERPRET="0")
    procs = {arch: subprocess.Popen([sys.executable, "-m", "bitops.triton.compile_check", str(arch)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for arch in (80, 90)}
    out = {}
    for arch, p in procs.items():
        stdout, stderr = p.communicate(timeout=540)
        assert p.returncode == 0, f"compile for sm_{arch} failed:\n{stderr[-4000:]}"
        out[arch] = json.loads(stdout.strip().splitlines()[-1])
    return out


def test_every_kernel_compiles(compiled):
    import bitops.triton.kernels as K

    jitted = {n for n in dir(K) if n.endswith("_kernel")}
    assert jitted == set(KERNELS), "a new kernel must be added to bitops/triton/compile_check.py and here"
    for arch, variants in compiled.items():
        for kernel, prefix in KERNELS.items():
            assert any(v.startswith(prefix) for v in variants), (arch, kernel)
        # Both bit widths, every activation dtype and both GEMM paths are among the variants.
        for part in ("int8", "fp16", "bf16", "fp32", "_w1_", "_w2_", "gemm", "splitk"):
            assert any(part in v for v in variants if v.startswith("linear_fwd_")), (arch, part)
        for part in ("fp16", "bf16", "fp32", "gemm", "splitk"):
            assert any(part in v for v in variants if v.startswith("grad_input_")), (arch, part)


@pytest.mark.parametrize("arch", [80, 90])
def test_gemm_paths_use_tensor_cores(compiled, arch):
    gemm = {n: v for n, v in compiled[arch].items() if v["gemm"]}
    assert len(gemm) >= 8
    for name, v in gemm.items():
        if arch == 80:
            assert v["mma"], f"sm_80 {name}: no mma.sync in the PTX"
        else:
            assert v["wgmma"] or v["mma"], f"sm_90 {name}: neither wgmma nor mma.sync in the PTX"
    if arch == 90:  # the large tiles get Hopper's warpgroup MMA
        assert any(v["wgmma"] for v in gemm.values())


# Largest dynamic shared memory per block: A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@pytest.mark.parametrize("arch", [80, 90])
def test_default_configs_fit_shared_memory(compiled, arch):
    """The configs launched without autotuning (and the autotuner's fallback) fit on the GPU."""
    for name, v in compiled[arch].items():
        assert v["shared"] <= SHARED_LIMIT[arch], f"sm_{arch} {name}: {v['shared']} bytes of shared memory"


@pytest.mark.parametrize("arch", [80, 90])
def test_int8_epilogue_has_no_fma(compiled, arch):
    for name, v in compiled[arch].items():
        if name.startswith("linear_fwd_int8") or name == "int8_epilogue":
            assert not v["fma"], f"sm_{arch} {name}: fma.rn.f32 would change the epilogue's rounding"
