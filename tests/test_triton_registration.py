"""The backend rule of bitops.triton (BITOPS_CUDA_BACKEND): registration at import, its default, bad
values, and that a Python registration does replace a C++ kernel (shown on the CPU key, the only
one this machine can call)."""
import os
import subprocess
import sys

import pytest
import torch

import bitops
import bitops.triton as BT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_op_has_a_cuda_kernel_after_import():
    assert set(BT.backends()) == set(BT.OP_NAMES)
    for op in BT.OP_NAMES:
        assert BT.has_cuda_kernel(op), op
    # Importing bitops must not import Triton (kernels are built on the first CUDA call).
    out = subprocess.run([sys.executable, "-c", "import sys, bitops; print('triton' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_choice(monkeypatch):
    monkeypatch.setenv(BT.ENV, "Triton")
    assert BT.backend_choice() == "triton"
    monkeypatch.setenv(BT.ENV, "cuda")
    assert BT.backend_choice() == "cuda"
    monkeypatch.setenv(BT.ENV, "")
    monkeypatch.setattr(BT, "has_cuda_kernel", lambda op: op == "packed_linear_int8")
    assert BT.backend_choice() == "cuda"  # default with C++ CUDA kernels
    monkeypatch.setattr(BT, "has_cuda_kernel", lambda op: False)
    assert BT.backend_choice() == "triton"
    monkeypatch.setenv(BT.ENV, "cublas")
    with pytest.raises(ValueError, match="BITOPS_CUDA_BACKEND='cublas' is not a backend; expected one of 'cuda', 'triton'"):
        BT.backend_choice()


def test_bad_env_value_fails_import_clearly():
    env = dict(os.environ, BITOPS_CUDA_BACKEND="fast")
    out = subprocess.run([sys.executable, "-c", "import bitops"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "BITOPS_CUDA_BACKEND='fast' is not a backend" in out.stderr


def test_python_registration_replaces_a_cpp_kernel():
    code = (
        "import torch, bitops\n"
        "lib = torch.library.Library('bitops', 'IMPL')\n"
        "lib.impl('pack_bits', lambda c, b: torch.full((1,), 7, dtype=torch.int32), 'CPU')\n"
        "print(int(bitops.ops.pack_bits(torch.ones(2, 3, dtype=torch.int8), 1)[0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7"


def test_cpu_tensors_without_interpreter_are_refused():
    from bitops.triton import kernels, ops

    if kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 in this process: CPU tensors are accepted by design")
    with pytest.raises(ValueError, match="x is on cpu; expected a CUDA tensor for the Triton kernels"):
        ops.packed_linear_float(torch.zeros(2, 32), torch.zeros(3, 1, dtype=torch.int32), torch.ones(3, 1), None, 1, 32, 32)
    assert bitops.ops.pack_bits(torch.ones(1, 3, dtype=torch.int8), 1).device.type == "cpu"  # CPU op untouched
