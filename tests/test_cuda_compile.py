"""Every CUDA source (csrc/cuda/*.cu) compiles with nvcc for sm_80 and sm_90a, host and device code,
with warnings as errors; the int8 GEMM's device code holds the tensor-core, ldmatrix and cp.async
instructions it is written around. Skips where nvcc is absent."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
ARCHS = ["80", "90a"]

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit) on PATH or in /usr/local/cuda")


def _nvcc(src, archs, out, *extra):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [NVCC, "-std=c++17", "-O3", *gencode, "-Werror=all-warnings",
           "-Xcompiler=-Wall,-Werror", "-I" + os.path.join(ROOT, "csrc"), *extra, src, "-o", out]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"


def test_sources_exist():
    assert {os.path.basename(s) for s in SOURCES} >= {"pack.cu", "linear_int8.cu", "linear_float.cu"}


@pytest.mark.parametrize("src", SOURCES, ids=os.path.basename)
def test_compiles_without_warnings(src, tmp_path):
    _nvcc(src, ARCHS, str(tmp_path / "out.o"), "-c")  # one call, device code for both architectures


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_gemm_uses_tensor_cores(arch, tmp_path):
    ptx = tmp_path / "linear_int8.ptx"
    _nvcc(os.path.join(ROOT, "csrc", "cuda", "linear_int8.cu"), [arch], str(ptx), "-ptx")
    text = ptx.read_text()
    for instr in ("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32", "ldmatrix.sync.aligned.m8n8.x4",
                  "cp.async.cg.shared.global", "cp.async.wait_group", "dp4a.s32.s32"):
        assert instr in text, instr
