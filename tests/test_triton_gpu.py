"""The Triton kernels compiled and run on a CUDA GPU (skipped without one): the autotuned paths, bf16
tensor-core products (broken in the interpreter, so only tested here), dispatch of torch.ops.bitops
on CUDA tensors and the layers end to end (forward and grad_input) against the reference.

Bounds for float paths as in test_triton_interp.py, with operands rounded to the dtype the kernel
multiplies in (f16/bf16 natively; f32 via 3xTF32, bounded by the f32 computation).
"""
import pytest
import torch

import bitops
from bitops import reference as R
from bitops.triton import interpreter
from kernel_cases import check_close as _check_close
from kernel_cases import weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

DEV = "cuda"


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    with interpreter(False):
        yield


@pytest.fixture(scope="module")
def T():
    from bitops.triton import ops

    return ops


def _weights(n, k, bits, group_size, gen):
    packed, scale = weights(n, k, bits, group_size, gen)
    return packed.to(DEV), scale.to(DEV)


SHAPES = [(m, k, n) for m in (1, 3, 16, 17, 64, 130, 512) for k in (32, 33, 768) for n in (1, 7, 256, 3072)]


@pytest.fixture
def no_autotune(T, monkeypatch):
    """One config per path: the shape grid would otherwise spend minutes timing configs."""
    monkeypatch.setattr(T, "AUTOTUNE", False)


@pytest.mark.parametrize("group_size", [None, 128, 100])
@pytest.mark.parametrize("bits", [1, 2])
def test_ops_on_gpu(T, no_autotune, bits, group_size):
    _check_shapes(T, bits, group_size, SHAPES)


@pytest.mark.parametrize("bits", [1, 2])
def test_autotuned_paths(T, bits):
    """The autotuned launchers (split-K GEMV and tiled GEMM) at BERT-base shapes."""
    _check_shapes(T, bits, None, [(m, k, n) for m in (1, 16, 17, 512) for k, n in ((768, 3072), (3072, 768))])


def _check_shapes(T, bits, group_size, shapes):
    gen = torch.Generator().manual_seed(bits)
    for m, k, n in shapes:
        gs = k if group_size is None else group_size
        packed, scale = _weights(n, k, bits, gs, gen)
        codes = R.unpack_bits(packed, bits, k)
        assert torch.equal(T.pack_bits(codes, bits), packed) and torch.equal(T.unpack_bits(packed, bits, k), codes)
        bias = torch.randn(n, generator=gen).to(DEV)
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen).to(DEV)
        xs = (torch.rand(m, generator=gen) * 0.02).to(DEV)
        y = T.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
        assert torch.equal(y, R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)), (m, k, n)
        w = R.dequantize_weight(packed, scale, bits, k, gs)
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            xf = torch.randn(m, k, generator=gen).to(DEV, dtype)
            same = ((xf.float() @ w.to(dtype).float().T) + bias).to(dtype)  # codes are exact in every dtype
            truth = xf.double() @ w.double().T + bias.double()
            _check_close(T.packed_linear_float(xf, packed, scale, bias, bits, k, gs), same, truth, f"fwd {dtype} {m, k, n}")
            go = torch.randn(m, n, generator=gen).to(DEV, dtype)
            same = (go.float() @ w.to(dtype).float()).to(dtype)
            _check_close(T.packed_linear_grad_input(go, packed, scale, bits, k, gs), same, go.double() @ w.double(),
                         f"grad {dtype} {m, k, n}")


def test_dispatch_and_layers(T):
    """torch.ops.bitops on CUDA tensors runs a registered CUDA kernel (Triton or C++ per the rule) that
    agrees with the Triton wrapper; a layer trains and runs frozen on the GPU like on the CPU."""
    choice = bitops.triton.backends()
    assert set(choice) == set(bitops.triton.OP_NAMES)
    gen = torch.Generator().manual_seed(0)
    packed, scale = _weights(256, 768, 1, 768, gen)
    x = torch.randint(-128, 128, (5, 768), dtype=torch.int8, generator=gen).to(DEV)
    xs = torch.rand(5, generator=gen).to(DEV)
    assert torch.equal(bitops.ops.packed_linear_int8(x, xs, packed, scale, None, 1, 768, 768),
                       T.packed_linear_int8(x, xs, packed, scale, None, 1, 768, 768))
    torch.manual_seed(0)
    for cls in (bitops.BinaryLinear, bitops.TernaryLinear):
        cpu = cls(768, 64)
        gpu = cls(768, 64).to(DEV)
        gpu.load_state_dict(cpu.state_dict())
        inp = torch.randn(4, 9, 768)
        a, b = inp.clone().requires_grad_(), inp.to(DEV).requires_grad_()
        ya, yb = cpu(a), gpu(b)
        torch.testing.assert_close(yb.cpu(), ya, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-4)
        gpu.freeze()
        torch.testing.assert_close(gpu(b).detach(), yb.detach(), rtol=0, atol=0)
