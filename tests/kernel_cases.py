"""Inputs and the float-path bound shared by the kernel tests (CPU, Triton, CUDA harness, GPU)."""
import os
from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bitops import reference as R


def codes(shape, bits, gen):
    """Random valid codes of a format: {-1, +1} for bits=1, [-2, 1] for bits=2 (int8)."""
    lo = -1 if bits == 1 else -2
    c = torch.randint(lo, 2, shape, dtype=torch.int8, generator=gen)
    if bits == 1:
        c[c == 0] = 1
    return c


def weights(n, k, bits, group_size, gen):
    """(packed int32 (N, words), scale float32 (N, ceil(K / group_size))) with scales in [0.01, 0.11)."""
    packed = R.pack_bits(codes((n, k), bits, gen), bits)
    scale = torch.rand(n, -(-k // group_size), generator=gen) * 0.1 + 0.01
    return packed, scale


def check_close(out, ref_same, truth, name):
    """|out - truth| <= 4 * max|ref_same - truth| + ulp(out dtype) * max|truth|, element-wise: ref_same is
    a torch computation at the kernel's precision (operands in its dtype, fp32 accumulation)."""
    eps = torch.finfo(out.dtype).eps
    bound = 4 * (ref_same.double() - truth).abs().max() + eps * truth.abs().max() + 1e-30
    err = (out.double() - truth).abs().max()
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"


# Property tests (tests/test_fuzz_ops.py): bounded for CI, BITOPS_FUZZ_EXAMPLES=N runs N cases per
# property (the emulated GPU paths run a quarter of that, at least 4: they are ~100x slower per case).
FUZZ_EXAMPLES = int(os.environ.get("BITOPS_FUZZ_EXAMPLES", "40"))


def fuzz_settings(examples: int = FUZZ_EXAMPLES):
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@dataclass
class Int8Case:
    """One packed_linear_int8 call: x int8 (M, K), x_scale (M,), packed int32 (N, words),
    w_scale float32 (N, groups), bias float32 (N,) or None."""
    x: torch.Tensor
    x_scale: torch.Tensor
    packed: torch.Tensor
    w_scale: torch.Tensor
    bias: Optional[torch.Tensor]
    bits: int
    k: int
    group_size: int

    def args(self):
        return (self.x, self.x_scale, self.packed, self.w_scale, self.bias, self.bits, self.k, self.group_size)

    def __str__(self):
        m, n = self.x.shape[0], self.packed.shape[0]
        return f"M={m} N={n} K={self.k} bits={self.bits} group_size={self.group_size}"


def draw_int8_case(data, max_m: int = 300, max_n: int = 300, max_k: int = 300, bits=(1, 2),
                   groupings=("row", "32", "64", "odd")) -> Int8Case:
    """Random shapes (M, N from 0, K from 1, rarely a multiple of the word), scale groups per row /
    aligned / odd, activations random or all -128 / all 127 / zero rows, scales ~1, 1e-30 or 1e30
    (products overflow to inf there and inf - inf gives nan: compare with assert_bitwise_equal).
    ``bits`` and ``groupings`` narrow the draw for kernels that take fewer kinds of weights."""
    bits = data.draw(st.sampled_from(bits), label="bits")
    m = data.draw(st.integers(0, max_m), label="M")
    n = data.draw(st.integers(0, max_n), label="N")
    k = data.draw(st.integers(1, max_k), label="K")
    grouping = data.draw(st.sampled_from(groupings), label="grouping")
    x_kind = data.draw(st.sampled_from(["random", "min", "max", "zero-rows"]), label="x")
    mag = data.draw(st.sampled_from([1.0, 1e-30, 1e30]), label="scale magnitude")
    with_bias = data.draw(st.booleans(), label="bias")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    gs = {"row": k, "32": 32, "64": 64, "odd": max(1, k // 3 + 1)}[grouping]
    packed = R.pack_bits(codes((n, k), bits, g), bits)
    w_scale = torch.rand(n, -(-k // gs), generator=g) * mag
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    if x_kind == "min":
        x.fill_(-128)
    elif x_kind == "max":
        x.fill_(127)
    elif x_kind == "zero-rows" and m:
        x[::2] = 0
    x_scale = torch.rand(m, generator=g) * mag
    bias = torch.randn(n, generator=g) if with_bias else None
    return Int8Case(x, x_scale, packed, w_scale, bias, bits, k, gs)


def assert_bitwise_equal(got, want, msg):
    """Equal bit for bit, nan positions included (huge scales give inf - inf = nan in both)."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), msg
    assert torch.equal(got[~nan], want[~nan]), msg
