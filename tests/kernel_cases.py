"""Inputs and the float-path bound shared by the kernel tests (Triton, CUDA harness, GPU)."""
import torch

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
