"""The torch.ops.bitops kernels against the pure-torch reference: exact on integer paths, within a
bound derived from a same-precision torch computation on float paths; opcheck for every op."""
import math

import pytest
import torch

import bitops
from bitops import reference as R
from bitops.quantizers import quantize_weight
from conftest import cpu_isa, torch_threads

ops = torch.ops.bitops
MS = [0, 1, 3, 117, 128]
KS = [1, 31, 32, 33, 768, 3072]
NS = [1, 7, 768]


def make_weight(n, k, bits, group_size=None, gen=None):
    w = torch.randn(n, k, generator=gen)
    gran = "row" if group_size is None else "group"
    codes, scale, gs = quantize_weight(w, bits, gran, group_size)
    if bits == 2:  # exercise all four 2-bit codes, not only the ternary subset
        codes = torch.where(torch.rand(n, k, generator=gen) < 0.15, torch.full_like(codes, -2), codes)
    return bitops.pack(codes, bits), scale, gs


def make_int8_input(m, k, gen=None, extremes=False):
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    if extremes and m and k:
        x[0] = -128
        x[-1, ::2] = 127
    s = torch.rand(m, generator=gen) * 0.05 + 1e-3
    return x, s


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("n", NS, ids=lambda v: f"N{v}")
@pytest.mark.parametrize("k", KS, ids=lambda v: f"K{v}")
@pytest.mark.parametrize("m", MS, ids=lambda v: f"M{v}")
def test_linear_int8_exact(isa, m, k, n, bits):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    packed, scale, gs = make_weight(n, k, bits, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    bias = torch.randn(n, generator=g) if (m + k + n) % 2 else None
    got = ops.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
    want = R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("k,group_size", [(768, 32), (768, 128), (100, 64), (768, 48), (33, 5), (3072, 3000)])
def test_linear_int8_group_scales_exact(isa, k, group_size, bits):
    # 32-aligned groups take the AVX2 path; others (48, 5, 3000) the portable one: both exact.
    packed, scale, gs = make_weight(37, k, bits, group_size)
    x, xs = make_int8_input(19, k, extremes=True)
    bias = torch.randn(37)
    got = ops.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs))


def int8_path(m, bits, groups, group_size):
    return bitops._ops._C.int8_kernel_path(m, bits, groups, group_size)


@pytest.mark.skipif(not bitops._ops._C.cpu_has_avx2(), reason="the kernel path rule picks AVX2 kernels; this CPU has none")
def test_int8_kernel_path_rule():
    with cpu_isa("avx2"):
        assert int8_path(1, 1, 1, 768) == "gemv" and int8_path(4, 2, 1, 768) == "gemv"
        assert int8_path(5, 1, 1, 768) == "lut" and int8_path(128, 1, 1, 768) == "lut"
        assert int8_path(128, 2, 1, 768) == "bytes"  # 2-bit: two lookups per triple would not pay
        assert int8_path(128, 1, 6, 128) == "bytes"  # groups: boundaries need not fall on a triple
        assert int8_path(128, 1, 2, 48) == "portable"  # groups not on 32-code chunks
    with cpu_isa("portable"):
        assert int8_path(128, 1, 1, 768) == "portable"


# The lookup-table kernel's edges: K around a 96-code span (32 triples) and a 192-code chunk (one int16
# flush), and K = 1 (tables built by the scalar tail only past the first pairs of triples); rows around
# its 16-row shuffles, its 8-row vector epilogue and its 128-row blocks; odd M (the 1-row tail of its
# 2-row passes); with and without bias; activations at -128 everywhere (the largest table entries,
# |3 * -128| per triple). The index build reads each whole 16-row group's 3-word span with one 16-byte
# load per row where the word after the span is readable, word by word elsewhere: partial groups (N % 16),
# a last span of fewer words (K = 97: 4 words), and whole spans ending the matrix's last group (N = 16,
# 128 with K = 95, 96, 192, 3072: a multiple of 3 words).
@pytest.mark.skipif(not bitops._ops._C.cpu_has_avx2(), reason="the lookup-table kernel is AVX2 code; this CPU has none")
@pytest.mark.parametrize("k", [1, 95, 96, 97, 191, 192, 193, 385, 3072])
@pytest.mark.parametrize("m,n", [(5, 1), (6, 15), (7, 16), (8, 17), (33, 127), (64, 128), (9, 129), (17, 300)])
def test_linear_int8_lut_exact(m, n, k):
    g = torch.Generator().manual_seed(m * 1009 + n * 13 + k)
    packed, scale, gs = make_weight(n, k, 1, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    if m > 2:
        x[1] = -128  # a whole row at the extreme: every table entry is at its largest magnitude
    bias = torch.randn(n, generator=g) if m % 2 else None
    with cpu_isa("avx2"):
        assert int8_path(m, 1, scale.shape[1], gs) == "lut"
        got = ops.packed_linear_int8(x, xs, packed, scale, bias, 1, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, 1, k, gs))


# Several 64-row activation blocks: three or more per thread read the indices built once per call, two
# do when those fit L2 (100 x 200 x 385 on one thread) and build their own otherwise (100 x 1030 x 3072,
# or one block per thread: 100 x 200 x 385 on two). Outputs past 4 MiB go out with non-temporal stores
# (N a multiple of 8: the 1030-row cases), and then, in block order, the last chunk of each whole weight
# block goes through the epilogue from registers: with one chunk (K = 96), the last of three partly
# filled (K = 385), a last activation block of 6 rows (one four, then a pair through the totals) and a
# partial last weight block (N = 1032). One thread (blocks in turn), two (the blocks shared out) and
# four (more threads than blocks: the weight blocks shared out), at K in block order (tables fit L2) and
# in chunk order (K = 3072).
@pytest.mark.skipif(not bitops._ops._C.cpu_has_avx2(), reason="the lookup-table kernel is AVX2 code; this CPU has none")
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("m,n,k", [(200, 1032, 96), (131, 1030, 97), (130, 1032, 3072), (100, 200, 385), (100, 1030, 3072),
                                   (1030, 1032, 96), (1030, 1032, 385), (1030, 1032, 3072)])
def test_linear_int8_lut_activation_blocks(m, n, k, threads):
    g = torch.Generator().manual_seed(m + n + k)
    packed, scale, gs = make_weight(n, k, 1, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    bias = torch.randn(n, generator=g)
    with torch_threads(threads), cpu_isa("avx2"):
        got = ops.packed_linear_int8(x, xs, packed, scale, bias, 1, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, 1, k, gs))


# The byte kernel (2-bit codes, one scale group) writes whole 16-row weight blocks of four activation rows
# at a time, outputs past 512 KiB too (N a multiple of 8 or odd: once streamed or not, now the same path).
# A partial last weight block (N % 16), 1-3 leftover activation rows (M % 4), K across an int16 flush
# (> 1024), one thread and two (the weight blocks shared out).
@pytest.mark.skipif(not bitops._ops._C.cpu_has_avx2(), reason="the byte kernel's tiles are AVX2 code; this CPU has none")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k", [(131, 1032, 97), (131, 1030, 97), (130, 1040, 1160), (6, 40, 768)])
def test_linear_int8_bytes_blocks(m, n, k, threads):
    g = torch.Generator().manual_seed(m + n + k)
    packed, scale, gs = make_weight(n, k, 2, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    bias = torch.randn(n, generator=g)
    with torch_threads(threads), cpu_isa("avx2"):
        assert int8_path(m, 2, 1, k) == "bytes"
        got = ops.packed_linear_int8(x, xs, packed, scale, bias, 2, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, 2, k, gs))


# The byte kernel takes the activations in passes of max(128, 192 KiB / kp) rows (a multiple of 4), each
# meeting every weight block: K = 3072 gives 128-row passes, K = 97 (kp = 128) 1536-row ones; M leaves a
# short last pass with 1-3 leftover rows. On both paths, with one scale group and with four (1-bit codes
# with groups take this kernel too), on one thread and two (the (pass, block) items shared out).
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bits,group_size", [(2, None), (1, 64), (2, 768)])
@pytest.mark.parametrize("m,n,k", [(390, 40, 3072), (1541, 24, 97)])
def test_linear_int8_bytes_passes(isa, m, n, k, bits, group_size, threads):
    if group_size is not None and group_size >= k:
        group_size = 32
    g = torch.Generator().manual_seed(m + k + bits)
    packed, scale, gs = make_weight(n, k, bits, group_size, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    bias = torch.randn(n, generator=g)
    assert int8_path(m, bits, scale.shape[1], gs) == ("bytes" if isa == "avx2" else "portable")
    with torch_threads(threads):
        got = ops.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs))


# 2-bit codes in field-plane order (the GEMV, M = 1..4, and the byte kernel's decode, M = 5, 9): K around
# the 128-code blocks (a partial last block; K = 97..112 fill kp = 128 with 7 words only, so no block is
# whole; an odd word count: K = 8, 24, 136 leave half a chunk), across an int16 flush (8 blocks = 1024
# codes); and the largest partial sums, u = 3 (code 1) against x = -128 in every position.
@pytest.mark.skipif(not bitops._ops._C.cpu_has_avx2(), reason="the plane paths are AVX2 code; this CPU has none")
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("k", [8, 24, 32, 100, 112, 127, 128, 129, 136, 255, 256, 1024, 1025, 1160, 3072])
def test_linear_int8_2bit_planes(m, k):
    g = torch.Generator().manual_seed(m * 7919 + k)
    n = 37
    packed, scale, gs = make_weight(n, k, 2, gen=g)
    x, xs = make_int8_input(m, k, g, extremes=True)
    bias = torch.randn(n, generator=g)
    with cpu_isa("avx2"):
        assert int8_path(m, 2, 1, k) == ("gemv" if m <= 4 else "bytes")
        got = ops.packed_linear_int8(x, xs, packed, scale, bias, 2, k, gs)
        assert torch.equal(got, R.packed_linear_int8(x, xs, packed, scale, bias, 2, k, gs))
        worst = R.pack_bits(torch.ones(n, k, dtype=torch.int8), 2)
        x_min = torch.full((m, k), -128, dtype=torch.int8)
        got = ops.packed_linear_int8(x_min, xs, worst, scale, None, 2, k, gs)
    assert torch.equal(got, R.packed_linear_int8(x_min, xs, worst, scale, None, 2, k, gs))


def test_linear_int8_noncontiguous_and_sliced(isa):
    k, n = 100, 40
    packed, scale, gs = make_weight(2 * n, k, 1)
    x, xs = make_int8_input(30, 2 * k)
    xv, pv, sv = x[:, ::2], packed[::2], scale[::2]
    assert not xv.is_contiguous() and not pv.is_contiguous()
    got = ops.packed_linear_int8(xv, xs, pv, sv, None, 1, k, gs)
    want = R.packed_linear_int8(xv.contiguous(), xs, pv.contiguous(), sv.contiguous(), None, 1, k, gs)
    assert torch.equal(got, want)


def assert_within_float_bound(got: torch.Tensor, ref: torch.Tensor, ref64: torch.Tensor) -> None:
    """got may differ from the exact (float64) result by a few times the error of the same computation
    done by torch at the same precision (``ref``), plus one output rounding step for bf16."""
    if not got.numel():
        return
    scale = ref64.abs().max().item()
    bound = 4 * (ref.double() - ref64).abs().max().item() + 1e-6 * scale + 1e-30
    if got.dtype == torch.bfloat16:
        bound += 2 * scale * 2**-8
    assert (got.double() - ref64).abs().max().item() <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("m,k,n,group_size", [(0, 33, 7, None), (1, 768, 768, None), (3, 31, 7, None),
                                              (117, 768, 300, 64), (128, 3072, 40, None), (5, 1, 1, None)])
def test_linear_float(m, k, n, group_size, bits, dtype):
    packed, scale, gs = make_weight(n, k, bits, group_size)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    got = ops.packed_linear_float(x, packed, scale, bias, bits, k, gs)
    ref = R.packed_linear_float(x, packed, scale, bias, bits, k, gs)
    w64 = R.dequantize_weight(packed, scale, bits, k, gs).double()
    ref64 = torch.nn.functional.linear(x.double(), w64, bias.double())
    assert got.dtype == dtype and got.shape == (m, n)
    assert_within_float_bound(got, ref, ref64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("m,k,n,group_size", [(0, 33, 7, None), (1, 768, 768, None), (3, 31, 7, None),
                                              (117, 768, 300, 64), (128, 40, 3072, None), (5, 1, 1, None)])
def test_linear_grad_input(m, k, n, group_size, bits, dtype):
    packed, scale, gs = make_weight(n, k, bits, group_size)
    g = torch.randn(m, n).to(dtype)
    got = ops.packed_linear_grad_input(g, packed, scale, bits, k, gs)
    ref = R.packed_linear_grad_input(g, packed, scale, bits, k, gs)
    ref64 = g.double() @ R.dequantize_weight(packed, scale, bits, k, gs).double()
    assert got.dtype == dtype and got.shape == (m, k)
    assert_within_float_bound(got, ref, ref64)


def opcheck_cases():
    packed, scale, gs = make_weight(7, 33, 2)
    packed1, scale1, gs1 = make_weight(5, 70, 1, group_size=32)
    x, xs = make_int8_input(3, 33)
    codes = torch.randint(-2, 2, (4, 37), dtype=torch.int8)
    return [
        ("pack_bits", (codes, 2)),
        ("unpack_bits", (bitops.pack(codes, 2), 2, 37)),
        ("packed_linear_int8", (x, xs, packed, scale, torch.randn(7), 2, 33, gs)),
        ("packed_linear_int8", (make_int8_input(4, 70)[0], torch.rand(4), packed1, scale1, None, 1, 70, gs1)),
        ("packed_linear_float", (torch.randn(3, 33), packed, scale, None, 2, 33, gs)),
        ("packed_linear_float", (torch.randn(3, 33).bfloat16(), packed, scale, torch.randn(7), 2, 33, gs)),
        ("packed_linear_grad_input", (torch.randn(3, 7), packed, scale, 2, 33, gs)),
        ("packed_gemv_int8", (make_int8_input(2, 70)[0], torch.rand(2), R.to_gemv_layout(packed1, 70),
                              torch.rand(5, 1), torch.randn(5), 70)),
        ("quantize_rows_int8", (torch.randn(5, 33), 8)),
        ("quantize_rows_int8", (torch.randn(2, 9).bfloat16(), 4)),
        ("quantize_rows_int8", (torch.randn(3, 41), 8, "gelu")),
    ]


def test_gemv_layout_by_hand():
    # Row r of a 33 x 9 SIGN1 weight has +1 exactly at K position r % 9: row 0's nibble of group 0
    # is 0b0001, row 5's nibble of group 1 (positions 4-7) is 0b0010, and rows 16-31 go to high
    # nibbles. Positions 9-15 and rows 33-63 are pads (bit 0).
    n, k = 33, 9
    codes = -torch.ones(n, k, dtype=torch.int8)
    codes[torch.arange(n), torch.arange(n) % k] = 1
    g = R.to_gemv_layout(bitops.pack(codes, 1), k)
    assert g.dtype == torch.uint8 and tuple(g.shape) == bitops.formats.gemv_shape(n, k) == (2, 2, 32)
    want = torch.zeros(2, 2, 32, dtype=torch.uint8)
    for r in range(n):
        b, i, half = r // 32, r % 16, (r % 32) // 16
        pos = r % k
        q, lane, t = pos // 8, (pos % 8) // 4, pos % 4
        want[b, q, 16 * lane + i] |= (1 << t) << (4 * half)
    assert torch.equal(g, want)
    assert g[0, 0, 0] == 0x01 and g[0, 0, 16 + 5] == 0x02 and g[1, 0, 16] == 0x02  # rows 0, 5, 32
    assert g[0, 0, 16] == 0x80 and g[1, 1].sum() == 0  # row 16: position 7, high nibble; block 1 has no position 8+
    assert torch.equal(R.from_gemv_layout(g, n, k), codes)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 768], ids=lambda v: f"N{v}")
@pytest.mark.parametrize("k", [1, 7, 8, 9, 33, 768, 3072], ids=lambda v: f"K{v}")
@pytest.mark.parametrize("m", [0, 1, 2, 4, 9], ids=lambda v: f"M{v}")
def test_gemv_int8_exact(isa, m, k, n):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    packed, scale, gs = make_weight(n, k, 1, gen=g)
    x, xs = make_int8_input(m, k, gen=g, extremes=True)
    bias = torch.randn(n, generator=g)
    want = R.packed_linear_int8(x, xs, packed, scale, bias, 1, k, gs)
    got = ops.packed_gemv_int8(x, xs, R.to_gemv_layout(packed, k), scale, bias, k)
    assert torch.equal(got, want)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_gemv_int8_bad_input(impl):
    f = ops.packed_gemv_int8 if impl == "kernel" else R.packed_gemv_int8
    packed, scale, _ = make_weight(40, 20, 1)
    gemv = R.to_gemv_layout(packed, 20)
    x, xs = make_int8_input(2, 20)
    with pytest.raises(ValueError, match=r"gemv_weight has shape \(2, 2, 32\); expected \(2, 3, 32\) for out_features=40, in_features=20"):
        f(x, xs, gemv[:, :2].contiguous(), scale, None, 20)
    with pytest.raises(ValueError, match=r"gemv_weight has dtype torch.int8; expected torch.uint8"):
        f(x, xs, gemv.view(torch.int8), scale, None, 20)
    with pytest.raises(ValueError, match=r"weight_scale has shape \(40, 2\); expected \(out_features, 1\)"):
        f(x, xs, gemv, scale.repeat(1, 2), None, 20)
    with pytest.raises(ValueError, match=r"x has 19 columns"):
        f(x[:, :19].contiguous(), xs, gemv, scale, None, 20)
    with pytest.raises(ValueError, match=r"weight_scale holds non-finite values"):
        f(x, xs, gemv, torch.full_like(scale, float("nan")), None, 20)


@pytest.mark.parametrize("case", range(len(opcheck_cases())), ids=[c[0] for c in opcheck_cases()])
def test_opcheck(case):
    name, args = opcheck_cases()[case]
    torch.library.opcheck(getattr(ops, name).default, args)


def test_results_independent_of_thread_count():
    packed, scale, gs = make_weight(300, 768, 1)
    x, xs = make_int8_input(64, 768)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.packed_linear_int8(x, xs, packed, scale, None, 1, 768, gs)
        torch.set_num_threads(2)
        two = ops.packed_linear_int8(x, xs, packed, scale, None, 1, 768, gs)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m,k", [(0, 5), (1, 1), (3, 31), (117, 768), (64, 3072)])
def test_quantize_rows_int8_exact(isa, m, k, bits, dtype):
    x = (torch.randn(m, k) * torch.rand(m, 1) * 10).to(dtype)
    if m > 2:
        x[1] = 0  # all-zero row: scale 1, codes 0
        x[2, 0] = 0.5 * x[2].abs().max()  # exact half steps exercise round-half-even
    q, s = ops.quantize_rows_int8(x, bits)
    rq, rs = R.quantize_rows_int8(x, bits)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.equal(q, rq) and torch.equal(s, rs)
    if m > 2:
        assert s[1] == 1 and q[1].abs().sum() == 0
    hi = 2 ** (bits - 1) - 1
    assert q.numel() == 0 or int(q.abs().max()) <= hi + 1


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_quantize_rows_int8_rejects_non_finite(isa, impl):
    fn = ops.quantize_rows_int8 if impl == "kernel" else R.quantize_rows_int8
    for col, bad in ((3, float("nan")), (8, float("inf")), (0, -float("inf"))):  # col 8: past the 8-wide steps
        x = torch.randn(4, 9)
        x[2, col] = bad
        with pytest.raises(ValueError, match=r"x holds non-finite values \(nan or inf\) in row 2"):
            fn(x, 8)
    with pytest.raises(ValueError, match=r"bits=3 is not supported for activations; expected 8 or 4"):
        fn(torch.randn(4, 8), 3)


def _exact_gelu_rows(m, k, gen):
    """Rows whose GELU every implementation computes exactly: 0 (-> 0), x in [8, 64] (erf rounds to 1:
    -> x) and x in [-64, -20] (erf rounds to -1: -> -0), with half steps after quantization."""
    pick = torch.randint(0, 3, (m, k), generator=gen)
    pos = 8 + torch.randint(0, 113, (m, k), generator=gen).float() * 0.5  # 8.0, 8.5, ..., 64.0
    neg = -20 - torch.rand(m, k, generator=gen) * 44
    return torch.where(pick == 0, torch.zeros(m, k), torch.where(pick == 1, pos, neg))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m,k", [(1, 1), (3, 7), (5, 31), (17, 33), (40, 100), (9, 1536)])
def test_quantize_rows_int8_gelu_exact_where_gelu_is(isa, m, k, bits):
    # Where the GELU value itself is exact, the fused GELU + quantization equals the reference bit
    # for bit: this pins the row buffer, the 32-, 8- and k % 8-wide steps, and the parallel rows.
    x = _exact_gelu_rows(m, k, torch.Generator().manual_seed(m * 1000 + k))
    q, s = ops.quantize_rows_int8(x, bits, "gelu")
    rq, rs = R.quantize_rows_int8(x, bits, "gelu")
    assert torch.equal(q, rq) and torch.equal(s, rs)
    assert torch.equal(q, R.quantize_rows_int8(torch.nn.functional.gelu(x), bits)[0])


def test_quantize_rows_int8_gelu_accuracy(isa):
    # A row of 40 copies of v has scale |gelu(v)| / 127: this reads the kernel's GELU of v to an ulp
    # and compares it with GELU in float64. Bound: 2.5e-7 of max(1, |v|) (measured 2.0e-7 on the AVX2
    # path, a rational erf good to 1.6e-8 in float64, and 1.5e-7 on the portable one, std::erf).
    v = torch.cat([torch.linspace(-10, 10, 40001), torch.tensor([1e-30, -1e-30, 50.0, 1e5, -1e5, 3e38])])
    x = v.unsqueeze(1).expand(-1, 40).contiguous()
    q, s = ops.quantize_rows_int8(x, 8, "gelu")
    vd = v.double()
    exact = vd * 0.5 * (1 + torch.erf(vd / math.sqrt(2)))
    zero = q[:, 0] == 0  # the kernel's GELU of v is 0: an all-zero row, scale 1
    got = torch.where(zero, 0.0, s.double() * 127)
    err = (got - exact.abs()).abs() / vd.abs().clamp(min=1)
    assert float(err.max()) <= 2.5e-7, f"GELU error {float(err.max()):.3g} at v={float(v[err.argmax()])}"
    assert torch.equal(q[~zero, 0], torch.where(exact[~zero] > 0, 127, -127).to(torch.int8))
    assert torch.equal(q[zero], torch.zeros_like(q[zero]))
    assert int(zero.sum()) < 20000  # zeros only left of about -5.5, where GELU is below 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_quantize_rows_int8_gelu_against_torch(isa, dtype):
    # Real-valued GELU differs from torch's (oneDNN's) by ~1e-7 of max(1, |x|) on either path, so a
    # code may move by one step where a value sits that close to a rounding boundary (6e-7 of the codes
    # of MiniLM's FFNs). The scale follows the row max's GELU to a few ulp.
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(512, 1536, generator=gen) * 2 - 0.5).to(dtype)
    x[0, :40] = torch.linspace(-6, 6, 40)
    q, s = ops.quantize_rows_int8(x, 8, "gelu")
    rq, rs = R.quantize_rows_int8(x, 8, "gelu")
    diff = (q.int() - rq.int()).abs()
    assert int(diff.max()) <= 1
    assert int((diff > 0).sum()) <= q.numel() * 1e-5  # 0 of 786k here
    assert torch.allclose(s, rs, rtol=5e-7, atol=0)  # 9.5e-8 here
    assert (q != 0).float().mean() > 0.5  # the rows are not trivially quantized to zeros


def test_quantize_rows_int8_gelu_rejects(isa):
    for fn in (ops.quantize_rows_int8, R.quantize_rows_int8):
        x = torch.randn(4, 9)
        x[1, 8] = -float("inf")  # GELU(-inf) is nan: still reported as the input's non-finite row
        with pytest.raises(ValueError, match=r"x holds non-finite values \(nan or inf\) in row 1"):
            fn(x, 8, "gelu")
        with pytest.raises(ValueError, match=r"activation='relu' is not supported; expected 'none' or 'gelu'"):
            fn(torch.randn(4, 8), 8, "relu")


def test_quantize_rows_int8_round_half_even(isa):
    # Rows whose scale is exactly 1 (max 127) and whose other entries sit on exact half steps.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5]])
    q, s = ops.quantize_rows_int8(x, 8)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, -126, 4, 4]]
    assert torch.equal(q, R.quantize_rows_int8(x, 8)[0])
