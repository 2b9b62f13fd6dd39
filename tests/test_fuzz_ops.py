"""Property tests: random shapes (M, N from 0, K from 1 to 300, K rarely a multiple of the word),
random codes and extreme values; every CPU kernel path equals the reference, exactly on integer
paths. The default profile is bounded for CI; BITOPS_FUZZ_EXAMPLES=N runs N cases per property."""
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitops
from bitops import reference as R
from conftest import cpu_isa, cpu_isas

EXAMPLES = int(os.environ.get("BITOPS_FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_bitwise_equal(got, want, msg):
    # Huge scales overflow to inf, and inf - inf across groups gives nan in both: nan counts as equal.
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), msg
    assert torch.equal(got[~nan], want[~nan]), msg


def draw_codes(data, shape, bits):
    lo = -1 if bits == 1 else -2
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(lo, 2, shape, dtype=torch.int8, generator=g)
    if bits == 1:
        c[c == 0] = 1
    return c, g


@fuzz
@given(data=st.data(), bits=st.sampled_from([1, 2]), rows=st.integers(0, 9), k=st.integers(1, 300))
def test_pack_unpack_round_trip(data, bits, rows, k):
    codes, _ = draw_codes(data, (rows, k), bits)
    for isa in cpu_isas():
        with cpu_isa(isa):
            packed = bitops.pack(codes, bits)
            assert torch.equal(packed, R.pack_bits(codes, bits))
            assert torch.equal(bitops.unpack(packed, bits, k), codes)


@fuzz
@given(
    data=st.data(),
    bits=st.sampled_from([1, 2]),
    m=st.integers(0, 300),
    n=st.integers(0, 300),
    k=st.integers(1, 300),
    grouping=st.sampled_from(["row", "32", "64", "odd"]),
    x_kind=st.sampled_from(["random", "min", "max", "zero-rows"]),
    scale_kind=st.sampled_from(["normal", "tiny", "huge"]),
    with_bias=st.booleans(),
)
def test_linear_int8_equals_reference(data, bits, m, n, k, grouping, x_kind, scale_kind, with_bias):
    codes, g = draw_codes(data, (n, k), bits)
    gs = {"row": k, "32": 32, "64": 64, "odd": max(1, k // 3 + 1)}[grouping]
    groups = -(-k // gs)
    packed = bitops.pack(codes, bits)
    mag = {"normal": 1.0, "tiny": 1e-30, "huge": 1e30}[scale_kind]
    w_scale = torch.rand(n, groups, generator=g) * mag
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    if x_kind == "min":
        x.fill_(-128)
    elif x_kind == "max":
        x.fill_(127)
    elif x_kind == "zero-rows" and m:
        x[::2] = 0
    x_scale = torch.rand(m, generator=g) * mag
    bias = torch.randn(n, generator=g) if with_bias else None
    want = R.packed_linear_int8(x, x_scale, packed, w_scale, bias, bits, k, gs)
    for isa in cpu_isas():
        with cpu_isa(isa):
            got = torch.ops.bitops.packed_linear_int8(x, x_scale, packed, w_scale, bias, bits, k, gs)
            assert_bitwise_equal(got, want, f"{isa}: M={m} N={n} K={k} group_size={gs}")
