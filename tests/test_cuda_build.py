"""The whole extension built against the CUDA build of torch (``make cuda-build``: torch==2.14.1 in
.venv-cuda, CUDA_HOME=/usr/local/cuda, TORCH_CUDA_ARCH_LIST="8.0;9.0", output in build/cuda-lib)
imports on this CPU-only machine: the C++ CUDA kernels are registered for every op, under bitops::
and bitops_cuda::, the backend rule's default applies, and the CPU kernels still run.

Skips when that build is absent (no nvcc: ``make test`` builds it only where nvcc exists)."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv-cuda", "bin", "python")
SO = sorted(glob.glob(os.path.join(ROOT, "build", "cuda-lib", "bitops", "_C*.so")))

pytestmark = pytest.mark.skipif(not (os.path.exists(PY) and SO),
                                reason="no CUDA build of the extension (run `make cuda-build`; needs nvcc)")

SCRIPT = r"""
import torch, bitops
import bitops.triton as BT
assert torch.version.cuda, torch.__version__
assert bitops._C.__file__.startswith(PKG), bitops._C.__file__
for op in BT.OP_NAMES:
    for ns in ("bitops", "bitops_cuda"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{op}", "CUDA"), (ns, op)
assert BT.cpp_cuda_built()
assert BT.backends() == BT.requested_backends(), BT.backends()
assert BT.backends()["packed_linear_int8"] == "cuda" and BT.backends()["packed_linear_float"] == "triton"
c = torch.tensor([[1, -1, 1]], dtype=torch.int8)
assert torch.equal(bitops.ops.unpack_bits(bitops.ops.pack_bits(c, 1), 1, 3), c)
print("ok", torch.__version__)
"""


def test_cuda_build_imports_on_cpu(tmp_path):
    # A copy of the Python package with the CUDA-built _C: the worktree's bitops/ holds the CPU build.
    pkg = tmp_path / "bitops"
    shutil.copytree(os.path.join(ROOT, "bitops"), pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(SO[-1], pkg)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PKG=str(pkg))
    env.pop("BITOPS_CUDA_BACKEND", None)
    out = subprocess.run([PY, "-c", "import os; PKG = os.environ['PKG']\n" + SCRIPT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok 2.14.1"), out.stdout
