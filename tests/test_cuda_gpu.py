"""The C++ CUDA kernels (torch.ops.bitops_cuda) on a GPU, beside the Triton kernels and the reference on
the same inputs (skipped without a GPU or without the C++ CUDA build): pack / unpack and the int8 GEMM
bit-exact with the reference and with Triton, float forward and grad_input within the bound of
tests/kernel_cases.check_close; both int8 paths (GEMV for M <= 8, mma.sync tiles above); inputs that
need the wrapper's padding (K not a multiple of 16, a column-sliced x); the bad-code error."""
import pytest
import torch

import bitops
from bitops import reference as R
from kernel_cases import check_close, codes, weights

DEV = "cuda"
HAS_CPP = bitops.triton.cpp_cuda_built()
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
    pytest.mark.skipif(not HAS_CPP, reason="the extension was built without the C++ CUDA kernels (CPU torch or no nvcc)"),
]

SHAPES = [(m, k, n) for m in (1, 3, 8, 9, 17, 64, 130, 512) for k in (32, 33, 100, 768) for n in (1, 7, 256, 3072)]


@pytest.fixture(scope="module")
def C():
    return torch.ops.bitops_cuda


@pytest.fixture(scope="module")
def T():
    from bitops.triton import interpreter, ops

    with interpreter(False):
        yield ops


@pytest.mark.parametrize("bits", [1, 2])
def test_pack_unpack(C, T, bits):
    gen = torch.Generator().manual_seed(bits)
    for shape in [(1, 1), (3, 33), (2, 5, 100), (1000, 768)]:
        c = codes(shape, bits, gen)
        packed = R.pack_bits(c, bits)
        assert torch.equal(C.pack_bits(c.to(DEV), bits).cpu(), packed)
        assert torch.equal(C.unpack_bits(packed.to(DEV), bits, shape[-1]).cpu(), c)
        assert torch.equal(T.pack_bits(c.to(DEV), bits).cpu(), packed)
    bad = codes((4, 40), bits, gen)
    bad[3, 39] = 0 if bits == 1 else 2
    with pytest.raises(ValueError, match=f"codes holds the value {int(bad[3, 39])}; expected codes in"):
        C.pack_bits(bad.to(DEV), bits)


@pytest.mark.parametrize("group_size", [None, 128, 100, 17])
@pytest.mark.parametrize("bits", [1, 2])
def test_linear_int8_exact(C, T, bits, group_size):
    gen = torch.Generator().manual_seed(10 + bits)
    for m, k, n in SHAPES:
        gs = k if group_size is None else group_size
        packed, scale = weights(n, k, bits, gs, gen)
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        xs, bias = torch.rand(m, generator=gen) * 0.02, torch.randn(n, generator=gen)
        ref = R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
        args = (x.to(DEV), xs.to(DEV), packed.to(DEV), scale.to(DEV), bias.to(DEV), bits, k, gs)
        assert torch.equal(C.packed_linear_int8(*args).cpu(), ref), (m, k, n, gs)
        assert torch.equal(T.packed_linear_int8(*args).cpu(), ref), (m, k, n, gs)


def test_linear_int8_padded_inputs(C):
    """A column slice of a wider x (unaligned, not contiguous) and an fp16 bias take the wrapper's copies."""
    gen = torch.Generator().manual_seed(3)
    packed, scale = weights(70, 100, 2, 100, gen)
    wide = torch.randint(-128, 128, (20, 103), dtype=torch.int8, generator=gen)
    x, xs, bias = wide[:, 3:], torch.rand(20, generator=gen), torch.randn(70, generator=gen).half()
    ref = R.packed_linear_int8(x, xs, packed, scale, bias, 2, 100, 100)
    got = C.packed_linear_int8(x.to(DEV), xs.to(DEV), packed.to(DEV), scale.to(DEV), bias.to(DEV), 2, 100, 100)
    assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("bits", [1, 2])
def test_float_and_grad_input(C, T, bits):
    gen = torch.Generator().manual_seed(20 + bits)
    for m, k, n in SHAPES[::3]:
        for gs in (k, 100):
            packed, scale = weights(n, k, bits, gs, gen)
            w = R.dequantize_weight(packed, scale, bits, k, gs)
            bias = torch.randn(n, generator=gen)
            wd, sd = packed.to(DEV), scale.to(DEV)
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                x = torch.randn(m, k, generator=gen).to(dtype)
                same = (x.float() @ w.T + bias).to(dtype)
                truth = x.double() @ w.double().T + bias.double()
                for name, impl in (("cuda", C), ("triton", T)):
                    y = impl.packed_linear_float(x.to(DEV), wd, sd, bias.to(DEV), bits, k, gs).cpu()
                    check_close(y, same, truth, f"{name} fwd {dtype} {m, k, n, gs}")
                go = torch.randn(m, n, generator=gen).to(dtype)
                same, truth = (go.float() @ w).to(dtype), go.double() @ w.double()
                for name, impl in (("cuda", C), ("triton", T)):
                    gi = impl.packed_linear_grad_input(go.to(DEV), wd, sd, bits, k, gs).cpu()
                    check_close(gi, same, truth, f"{name} grad {dtype} {m, k, n, gs}")


def test_dispatch_follows_the_rule():
    """bitops::<op> on CUDA tensors runs what bitops.triton.backends() reports."""
    chosen = bitops.triton.backends()
    want = bitops.triton.requested_backends()
    assert chosen == want  # every op has a C++ kernel here, so the request is the outcome
