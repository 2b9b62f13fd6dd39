"""The backend rule of bitops.triton (BITOPS_CUDA_BACKEND): registration at import, its default and
per-op choices, bad values, and that a Python registration does replace a C++ kernel (shown on the
CPU key, the only one this machine can call). With the C++ CUDA kernels built, the rule's outcome is
checked by tests/test_cuda_build.py."""
import os
import re
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


def test_backend_rule(monkeypatch):
    auto = {"pack_bits": "cuda", "unpack_bits": "cuda", "packed_linear_int8": "cuda",
            "packed_linear_float": "triton", "packed_linear_grad_input": "triton"}
    every = lambda b: dict.fromkeys(BT.OP_NAMES, b)  # noqa: E731
    for value, want in [
        ("", auto),
        ("auto", auto),
        ("Triton", every("triton")),
        ("cuda", every("cuda")),
        ("cuda,packed_linear_float=triton", {**every("cuda"), "packed_linear_float": "triton"}),
        ("packed_linear_int8=triton", {**auto, "packed_linear_int8": "triton"}),
        (" triton , packed_linear_grad_input = cuda ,", {**every("triton"), "packed_linear_grad_input": "cuda"}),
    ]:
        monkeypatch.setenv(BT.ENV, value)
        assert BT.requested_backends() == want, value
    for value, why in [
        ("cublas", "'cublas' is not a backend"),
        ("packed_linear_int8=triton,cuda", "the default 'cuda' must come first"),
        ("matmul=cuda", "'matmul' is not an op with CUDA kernels"),
    ]:
        monkeypatch.setenv(BT.ENV, value)
        with pytest.raises(ValueError, match=re.escape(f"BITOPS_CUDA_BACKEND='{value}' is not a backend rule: {why}")):
            BT.requested_backends()


def test_no_cpp_cuda_kernels_in_a_cpu_build():
    if torch.version.cuda is not None:
        pytest.skip("torch is a CUDA build here; tests/test_cuda_build.py covers that case")
    assert not BT.cpp_cuda_built()
    assert BT.backends() == dict.fromkeys(BT.OP_NAMES, "triton")  # Triton fills in every op


def test_bad_env_value_fails_import_clearly():
    env = dict(os.environ, BITOPS_CUDA_BACKEND="fast")
    out = subprocess.run([sys.executable, "-c", "import bitops"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "BITOPS_CUDA_BACKEND='fast' is not a backend rule" in out.stderr


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


def test_split_and_prune_heuristics():
    """Host-side dispatch logic (the GPU picks among these): split-K slices cover K exactly once and
    are whole multiples of every BLOCK_K; pruning keeps at least one config and no oversized blocks."""
    from bitops.triton import ops

    for tiles, red, sms in [(1, 768, 132), (12, 3072, 132), (48, 768, 132), (200, 4096, 132), (1, 33, 132), (3, 100000, 8)]:
        split, per = ops._split(tiles, red, sms)
        assert per % ops.SPLIT_ALIGN == 0 and split >= 1
        assert (split - 1) * per < red <= split * per, (tiles, red, sms, split, per)
        if tiles >= sms:
            assert split == 1
    assert ops._split(12, 3072, 132)[0] > 1  # BERT-base M=1, N=768: too few output tiles without split-K
    for small in (True, False):
        prune = ops._prune("N", "K", "BLOCK_N", "BLOCK_K")
        configs = ops._fwd_configs(small)
        for m, n, k in [(1, 1, 32), (16, 7, 33), (17, 3072, 768), (4096, 1024, 4096)]:
            kept = prune(configs, {"M_BUCKET": ops._next_pow2(m), "N": n, "K": k})
            assert kept and all(c.kwargs["BLOCK_N"] <= max(32, ops._next_pow2(n)) or len(kept) == 1 for c in kept)
        grad = ops._grad_configs(small)
        assert [c.kwargs["BLOCK_N"] for c in grad] == [c.kwargs["BLOCK_K"] for c in configs]


def test_interpreter_switch_restores_mode_and_env(monkeypatch):
    from bitops.triton import interpreter, kernels

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    before = kernels.INTERPRETED
    with interpreter(True) as K:
        assert K.INTERPRETED and os.environ["TRITON_INTERPRET"] == "0"
        with interpreter(False):
            assert not kernels.INTERPRETED
        assert kernels.INTERPRETED
    assert kernels.INTERPRETED == before and os.environ["TRITON_INTERPRET"] == "0"
