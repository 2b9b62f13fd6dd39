"""Packing formats: pack/unpack against the reference, layout facts, round trips."""
import pytest
import torch

import bitops
from bitops import reference as R
from bitops.formats import PackFormat, packed_words

SHAPES = [(1,), (31,), (32,), (33,), (5, 1), (3, 7, 16), (4, 17), (2, 768), (0, 40)]


def random_codes(shape, bits, g=None):
    lo, hi = (-1, 1) if bits == 1 else (-2, 1)
    c = torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=g)
    if bits == 1:
        c[c == 0] = 1
    return c


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pack_matches_reference_and_round_trips(isa, bits, shape):
    codes = random_codes(shape, bits)
    packed = bitops.pack(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (*shape[:-1], packed_words(shape[-1], bits))
    assert torch.equal(packed, R.pack_bits(codes, bits))
    assert torch.equal(bitops.unpack(packed, bits, shape[-1]), codes)
    assert torch.equal(R.unpack_bits(packed, bits, shape[-1]), codes)


@pytest.mark.parametrize("bits", [1, 2])
def test_unpack_of_arbitrary_words_matches_reference(bits):
    # Every bit pattern is a valid packed word (2-bit: all four codes): unpack must agree on all.
    words = torch.randint(-(2**31), 2**31 - 1, (9, 5), dtype=torch.int32)
    for k in (1, 40, 5 * 32 // bits):
        if packed_words(k, bits) == 5:
            assert torch.equal(bitops.unpack(words, bits, k), R.unpack_bits(words, bits, k))


def test_layout_is_lsb_first_with_zero_pads():
    # 1-bit: code j is bit j; bit 1 = +1. Pads are 0.
    codes = torch.tensor([[1, -1, -1, 1, 1]], dtype=torch.int8)
    assert bitops.pack(codes, 1).tolist() == [[0b11001]]
    # 2-bit two's complement, code j at bits [2j, 2j+2): 1 -> 01, -1 -> 11, 0 -> 00, -2 -> 10.
    codes = torch.tensor([[1, -1, 0, -2]], dtype=torch.int8)
    assert bitops.pack(codes, 2).tolist() == [[0b10_00_11_01]]
    # A full word with the top bit set is a negative int32: the bit pattern is what counts.
    assert bitops.pack(torch.ones(1, 32, dtype=torch.int8), 1).tolist() == [[-1]]


def test_noncontiguous_codes():
    base = random_codes((6, 70), 2)
    view = base[::2, 3:68]
    assert not view.is_contiguous()
    assert torch.equal(bitops.pack(view, 2), R.pack_bits(view.contiguous(), 2))


def test_format_metadata():
    assert PackFormat.SIGN1.bits == 1 and PackFormat.SIGN1.values == (-1, 1)
    assert PackFormat.TERNARY2.bits == 2 and PackFormat.INT2.values == (-2, -1, 0, 1)
    assert PackFormat.SIGN1.words(33) == 2 and PackFormat.INT2.words(33) == 3
    assert PackFormat.parse("Ternary2") is PackFormat.TERNARY2
    assert PackFormat.default_for_bits(2) is PackFormat.INT2
    with pytest.raises(ValueError, match="format='int3' is not a packing format"):
        PackFormat.parse("int3")
