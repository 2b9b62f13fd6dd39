"""The Triton kernels on CPU tensors in the Triton interpreter, against bitops.reference.

Integer paths (pack, unpack, int8 GEMM with its float epilogue) must be bit-exact. Float paths must
be within a bound derived from a torch computation at the same precision (operands rounded to the
kernel's multiply dtype, f32 accumulation): 4x that computation's worst error against float64, plus
one rounding of the output dtype. In the interpreter the kernels multiply in f32 (bf16 tl.dot is
broken there, triton-lang/triton#11584), so bf16 inputs are covered here for loads, stores and
rounding; the bf16 tl.dot itself runs in tests/test_triton_gpu.py when a GPU is present.

The interpreter is switched on for this module only (bitops.triton.interpreter restores the mode and
TRITON_INTERPRET afterwards). Shapes: the issue's M x K x N grid with per-row scales, plus group
scales (groups that straddle blocks and split-K slices) on a subset.
"""
import itertools

import pytest
import torch

from bitops import reference as R
from bitops.triton import interpreter
from kernel_cases import check_close as _check_close
from kernel_cases import codes as _codes
from kernel_cases import weights as _weights

MS, KS, NS = (1, 3, 16, 17, 64, 130), (32, 33, 768), (1, 7, 256)


@pytest.fixture(scope="module", autouse=True)
def _interpreted():
    with interpreter(True):
        yield


@pytest.fixture(scope="module")
def T():
    from bitops.triton import ops

    return ops


def _same_precision_linear(x, w, bias, dot_dtype):
    """Torch at the kernel's precision: operands rounded to dot_dtype, f32 products and sums."""
    y = x.to(dot_dtype).float() @ w.to(dot_dtype).float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# Interpreted kernels multiply in f32; on a GPU half types multiply natively (see test_triton_gpu).
DOT_DTYPE = torch.float32

GRID = list(itertools.product(MS, KS, NS))


@pytest.mark.parametrize("bits", [1, 2])
def test_pack_unpack_exact(T, bits):
    gen = torch.Generator().manual_seed(bits)
    for shape in [(1, 1), (3, 33), (5, 768), (2, 3, 70), (130, 32), (4, 31), (2, 65)]:
        codes = _codes(shape, bits, gen)
        packed = T.pack_bits(codes, bits)
        assert torch.equal(packed, R.pack_bits(codes, bits)), shape
        assert torch.equal(T.unpack_bits(packed, bits, shape[-1]), R.unpack_bits(packed, bits, shape[-1])), shape
    # Arbitrary words (every bit pattern, incl. the sign bit and 2-bit code -2) unpack like the reference.
    words = torch.randint(-(2**31), 2**31 - 1, (9, 3), dtype=torch.int32, generator=gen)
    for k in (3 * 32 // bits, 3 * 32 // bits - 5):
        assert torch.equal(T.unpack_bits(words, bits, k), R.unpack_bits(words, bits, k))


@pytest.mark.parametrize("m,k,n", GRID)
def test_linear_grid(T, m, k, n):
    """int8 exact for both bit widths; float and grad_input within the bound, dtypes rotated over the grid."""
    gen = torch.Generator().manual_seed(m * 10007 + k * 101 + n)
    i = GRID.index((m, k, n))
    for bits in (1, 2):
        packed, scale = _weights(n, k, bits, k, gen)
        bias = torch.randn(n, generator=gen)
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        xs = torch.rand(m, generator=gen) * 0.02
        b = bias if (i + bits) % 2 else None
        y = T.packed_linear_int8(x, xs, packed, scale, b, bits, k, k)
        assert torch.equal(y, R.packed_linear_int8(x, xs, packed, scale, b, bits, k, k)), (bits, b is None)

        dtype = (torch.float32, torch.float16, torch.bfloat16)[(i + bits) % 3]
        w = R.dequantize_weight(packed, scale, bits, k, k)
        xf = torch.randn(m, k, generator=gen).to(dtype)
        truth = xf.double() @ w.double().T + (0 if b is None else b.double())
        yf = T.packed_linear_float(xf, packed, scale, b, bits, k, k)
        assert yf.dtype == dtype and yf.shape == (m, n)
        _check_close(yf, _same_precision_linear(xf, w, b, DOT_DTYPE), truth, f"float {dtype} bits={bits}")

        go = torch.randn(m, n, generator=gen).to(dtype)
        gi = T.packed_linear_grad_input(go, packed, scale, bits, k, k)
        assert gi.dtype == dtype and gi.shape == (m, k)
        same = (go.to(DOT_DTYPE).float() @ w.to(DOT_DTYPE).float()).to(dtype)
        _check_close(gi, same, go.double() @ w.double(), f"grad_input {dtype} bits={bits}")


@pytest.mark.parametrize("group_size", [32, 100])
@pytest.mark.parametrize("m,k,n", [(1, 768, 7), (16, 768, 256), (3, 40, 600), (17, 33, 7), (130, 768, 7)])
def test_linear_groups(T, m, k, n, group_size):
    """Per-group scales: group boundaries inside blocks and across split-K slices (M <= 16)."""
    gen = torch.Generator().manual_seed(m + k + n + group_size)
    for bits in (1, 2):
        packed, scale = _weights(n, k, bits, group_size, gen)
        bias = torch.randn(n, generator=gen)
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        xs = torch.rand(m, generator=gen) * 0.02
        y = T.packed_linear_int8(x, xs, packed, scale, bias, bits, k, group_size)
        assert torch.equal(y, R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, group_size)), bits

        w = R.dequantize_weight(packed, scale, bits, k, group_size)
        xf = torch.randn(m, k, generator=gen)
        _check_close(T.packed_linear_float(xf, packed, scale, bias, bits, k, group_size),
                     _same_precision_linear(xf, w, bias, DOT_DTYPE), xf.double() @ w.double().T + bias.double(),
                     f"float bits={bits}")
        go = torch.randn(m, n, generator=gen, dtype=torch.float16)
        same = (go.float() @ w).to(torch.float16)
        _check_close(T.packed_linear_grad_input(go, packed, scale, bits, k, group_size), same,
                     go.double() @ w.double(), f"grad_input bits={bits}")


def test_split_paths_are_exercised(T):
    """The shapes above do take the split-K forward (int8 epilogue kernel, float partial sums) and the
    split-N grad_input, under the interpreter's fixed configs."""
    bn = T._INTERP_SMALL[1]
    fwd = lambda m, k, n: T._split(-(-n // bn), k, T._INTERP_SMS)[0]  # noqa: E731
    assert fwd(1, 768, 7) > 1 and fwd(16, 768, 1) > 1 and fwd(16, 768, 256) == 1
    assert T._split(-(-40 // bn), 600, T._INTERP_SMS)[0] > 1  # grad_input of (3, 40, 600)


def test_int8_extremes_exact(T):
    """Largest |accumulator| (all -128 times -2 / -1) and the 1-bit pad: still bit-exact."""
    k, n = 769, 5
    for bits, code in ((1, -1), (2, -2)):
        packed = R.pack_bits(torch.full((n, k), code, dtype=torch.int8), bits)
        scale = torch.full((n, 1), 0.37)
        x = torch.full((17, k), -128, dtype=torch.int8)
        xs = torch.full((17,), 0.011)
        for m in (1, 17):
            y = T.packed_linear_int8(x[:m], xs[:m], packed, scale, None, bits, k, k)
            assert torch.equal(y, R.packed_linear_int8(x[:m], xs[:m], packed, scale, None, bits, k, k))


def test_empty_and_errors(T):
    packed, scale = _weights(4, 40, 2, 40, torch.Generator().manual_seed(0))
    y = T.packed_linear_float(torch.empty(0, 40), packed, scale, None, 2, 40, 40)
    assert y.shape == (0, 4)
    assert T.packed_linear_grad_input(torch.empty(0, 4), packed, scale, 2, 40, 40).shape == (0, 40)
    assert T.pack_bits(torch.empty(0, 40, dtype=torch.int8), 1).shape == (0, 2)
    assert T.unpack_bits(torch.empty(3, 0, 2, dtype=torch.int32), 2, 20).shape == (3, 0, 20)
    # Same checks and messages as the reference (bitops._checks).
    with pytest.raises(ValueError, match="x has 39 columns"):
        T.packed_linear_float(torch.zeros(2, 39), packed, scale, None, 2, 40, 40)
    with pytest.raises(ValueError, match="weight_scale has shape"):
        T.packed_linear_int8(torch.zeros(2, 40, dtype=torch.int8), torch.ones(2), packed, scale[:, :0], None, 2, 40, 40)
    with pytest.raises(ValueError, match="codes holds the value 0"):
        T.pack_bits(torch.zeros(2, 3, dtype=torch.int8), 1)
