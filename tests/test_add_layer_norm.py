"""bitops.ops.add_layer_norm_int8: a BERT layer's add & norm and the quantization after it. The CPU
kernel (both ISA paths) against float64 and its torch reference; its codes are exactly
quantize_rows_int8 of its own output; threads, dtypes, errors."""
import pytest
import torch

import bitops
from bitops import reference as R

from conftest import torch_threads

ops = bitops.ops
SHAPES = [(1, 1), (3, 7), (7, 37), (128, 384), (33, 768), (5, 1536)]


def layer_norm_f64(x, residual, weight, bias, eps):
    h = x.double() if residual is None else x.double() + residual.double()
    out = torch.nn.functional.layer_norm(h, (h.shape[1],), None if weight is None else weight.double(),
                                         None if bias is None else bias.double(), eps)
    return out


def operands(m, k, residual=True, affine=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 3 + 1).to(dtype)
    r = torch.randn(m, k, generator=g).to(dtype) if residual else None
    w = (torch.randn(k, generator=g) * 0.5 + 1).to(dtype) if affine else None
    b = (torch.randn(k, generator=g) * 0.1).to(dtype) if affine else None
    return x, r, w, b


@pytest.mark.parametrize("isa", ["avx2", "portable"], indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("form", ["residual + affine", "no residual", "no affine"])
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_against_float64_and_the_reference(isa, shape, form, bits):
    x, r, w, b = operands(*shape, residual=form != "no residual", affine=form != "no affine")
    out, q, scale = ops.add_layer_norm_int8(x, r, w, b, 1e-12, bits)
    assert out.dtype == torch.float32 and q.dtype == torch.int8 and q.shape == shape and scale.shape == shape[:1]
    want = layer_norm_f64(x, r, w, b, 1e-12)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=2e-6 * max(1.0, float(want.abs().max())))
    # The codes are the row quantizer's, exactly, of the kernel's own output.
    q2, scale2 = ops.quantize_rows_int8(out, bits)
    assert torch.equal(q, q2) and torch.equal(scale, scale2)
    # Against the reference (torch's LayerNorm): a code moves only where a value sits on a rounding boundary.
    ref_out, ref_q, ref_scale = R.add_layer_norm_int8(x, r, w, b, 1e-12, bits)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
    assert (q.int() - ref_q.int()).abs().max() <= 1 and (q != ref_q).float().mean() < 0.01


def test_constant_rows_and_eps():
    x = torch.full((2, 16), 3.0)
    out, q, scale = ops.add_layer_norm_int8(x, None, None, None, 1e-5, 8)
    assert torch.equal(out, torch.zeros(2, 16)) and torch.equal(q, torch.zeros(2, 16, dtype=torch.int8))
    assert torch.equal(scale, torch.ones(2))  # an all-zero row's scale, as quantize_rows_int8 gives it
    x, r, w, b = operands(4, 24)
    for eps in (0.0, 1e-5, 10.0):
        torch.testing.assert_close(ops.add_layer_norm_int8(x, r, w, b, eps, 8)[0].double(), layer_norm_f64(x, r, w, b, eps),
                                   rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_float32(dtype):
    x, r, w, b = operands(9, 40, dtype=dtype)
    out, q, scale = ops.add_layer_norm_int8(x, r, w, b, 1e-12, 8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, R.add_layer_norm_int8(x, r, w, b, 1e-12, 8)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(q, ops.quantize_rows_int8(out, 8)[0])


def test_strided_inputs_and_threads():
    x, r, w, b = operands(64, 96)
    want = ops.add_layer_norm_int8(x, r, w, b, 1e-12, 8)
    xt = x.t().contiguous().t()  # column-major
    for got in (ops.add_layer_norm_int8(xt, r, w, b, 1e-12, 8), ops.add_layer_norm_int8(x, r[:, :], w, b, 1e-12, 8)):
        assert all(torch.equal(a, c) for a, c in zip(got, want))
    with torch_threads(2):
        got = ops.add_layer_norm_int8(x, r, w, b, 1e-12, 8)
    assert all(torch.equal(a, c) for a, c in zip(got, want))  # rows are independent: any split, one result


def test_empty_batch_and_meta():
    x, r, w, b = operands(0, 8)
    out, q, scale = ops.add_layer_norm_int8(x, r, w, b, 1e-12, 8)
    assert out.shape == (0, 8) and q.shape == (0, 8) and scale.shape == (0,)
    x, r, w, b = (t.to("meta") for t in operands(5, 8))
    out, q, scale = ops.add_layer_norm_int8(x, r, w, b, 1e-12, 8)
    assert (out.shape, q.dtype, scale.shape) == ((5, 8), torch.int8, (5,))


def test_opcheck():
    x, r, w, b = operands(6, 40)
    torch.library.opcheck(ops.add_layer_norm_int8.default, (x, r, w, b, 1e-12, 8))
    torch.library.opcheck(ops.add_layer_norm_int8.default, (x, None, None, None, 1e-5, 4))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_bad_input(impl):
    f = ops.add_layer_norm_int8 if impl == "kernel" else R.add_layer_norm_int8
    x, r, w, b = operands(4, 8)
    cases = [
        ((x, r, w, b, 1e-12, 6), r"bits=6 is not supported for activations; expected 8 or 4"),
        ((x.long(), None, w, b, 1e-12, 8), r"x has dtype torch.int64; expected torch.float32 or torch.bfloat16 or torch.float16"),
        ((x[0], None, w, b, 1e-12, 8), r"x has 1 dimensions \(shape \(8,\)\); expected 2: \(M, K\) float activations"),
        ((x[:, :0], None, None, None, 1e-12, 8), r"x has shape \(4, 0\); expected K >= 1 columns to normalize"),
        ((x, r[:3], w, b, 1e-12, 8), r"residual has shape \(3, 8\); expected \(4, 8\) \(x's shape\)"),
        ((x, r.double(), w, b, 1e-12, 8), r"residual has dtype torch.float64; expected torch.float32 \(x's dtype\)"),
        ((x, r, w[:5], b, 1e-12, 8), r"weight has shape \(5,\); expected \(8,\) for x's K columns"),
        ((x, r, w, b.long(), 1e-12, 8), r"bias has dtype torch.int64; expected torch.float32 or torch.bfloat16 or torch.float16"),
        ((x, r, w, b, -1.0, 8), r"eps=-1(\.0)?; expected a finite float >= 0"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            f(*args)
    bad = x.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"layer_norm\(x \+ residual\) holds non-finite values \(nan or inf\) in row 2; "
                                         r"expected finite x, residual, weight and bias"):
        f(bad, r, w, b, 1e-12, 8)
