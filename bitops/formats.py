"""Packing formats: the one place where the bit layouts of packed weights are defined.

Every kernel (C++ CPU, Triton, CUDA) and the pure-torch reference read and write these layouts and
nothing else. A packed tensor never says by its shape which format it holds: the format travels
beside it as explicit metadata (a :class:`PackFormat` value, the number of codes ``k`` of the
packed dimension), in the layers' extra state and in exported files.

Canonical layout, shared by all formats
---------------------------------------
* The packed dimension is the **last** one: K, the reduction dimension of ``y = x @ W.T``.
  A weight of shape (N, K) packs to (N, ceil(K * bits / 32)).
* Word type: 32-bit words stored as ``torch.int32`` (the bit pattern is what matters; the sign of
  the int32 carries no meaning). 32 / bits codes per word.
* Bit order: code ``j`` of a row lives in word ``j // cpw`` (``cpw = 32 // bits`` codes per word) at
  bits ``[bits * (j % cpw), bits * (j % cpw) + bits)``, least significant bits first. So code 0 is
  the lowest bit(s) of word 0: the layout of gemlite and of most Triton low-bit kernels, cheap to
  decode with one shift and one mask.
* Padding: K is padded up to a whole word. Pad fields hold the bit pattern 0. For the 2-bit
  formats the pattern 0 decodes to the value 0, so a pad contributes exactly 0 to every dot product.
  The 1-bit sign format has no zero value (pattern 0 decodes to -1): there a kernel contributes 0
  for a pad by treating the activation of every position k >= K as 0, which every kernel in this
  project does by never reading past K (see ``dot = 2 * sum(a[bit=1]) - sum(a)`` in the kernels:
  with ``a = 0`` on pads both terms are 0).

Formats
-------
``SIGN1``     1 bit,  values {-1, +1}; bit 1 means +1, bit 0 means -1. Binary weights (XTC, BWN).
``TERNARY2``  2 bits, values {-1, 0, +1} in two's complement: 00 -> 0, 01 -> +1, 11 -> -1
              (10, i.e. -2, never appears). Ternary weights (TWN, TernaryBERT).
``INT2``      2 bits, values {-2, -1, 0, +1} in two's complement: 00 -> 0, 01 -> 1, 10 -> -2,
              11 -> -1. General 2-bit codes; TERNARY2 is the subset without -2, so one decoder
              (sign-extend 2 bits) serves both and a ternary tensor is also a valid INT2 tensor.

GEMV layout of SIGN1
--------------------
A second arrangement of the same SIGN1 bits, for the CPU GEMV kernel (``packed_gemv_int8``), which
looks rows up in tables 32 at a time and so wants the bits of 32 rows at the same K positions in one
vector. A frozen 1-bit layer with one scale per row builds it from the canonical words when it
freezes or loads (:func:`bitops.reference.to_gemv_layout`); it is never saved, so exported files hold
the canonical layout only. Same size: 1 bit per weight, plus padding of N to 32 and K to 8.

* Groups of 4 K positions: ``nib(n, g) = sum_t bit(n, 4g + t) << t`` (bit 1 = +1, as in SIGN1).
* Tensor ``uint8`` of shape :func:`gemv_shape` = (ceil(N / 32), ceil(K / 8), 32): weight row block
  ``b`` (rows 32b .. 32b+31), group pair ``q`` (groups 2q, 2q+1), then 32 bytes in two 16-byte lanes
  ``L`` = 0, 1 holding group ``2q + L``::

      byte[b, q, 16 * L + i] = nib(32b + i, 2q + L) | nib(32b + 16 + i, 2q + L) << 4,   i = 0 .. 15

* Pads (rows >= N, positions >= K) hold bit 0; the kernel reads zero activations there, so they add 0.

Why two's complement for the 2-bit codes: pad 0 decodes to 0, decoding is one arithmetic shift
(or ``code ^ 2`` gives the unsigned offset-by-2 form that ``vpmaddubsw`` wants), and ternary is a
subset of INT2 so kernels need one 2-bit path only.
"""
from __future__ import annotations

import enum
from typing import Tuple

WORD_BITS = 32


class PackFormat(enum.Enum):
    """A packing format: bits per code and the code -> value map. See the module docstring."""

    SIGN1 = "sign1"
    TERNARY2 = "ternary2"
    INT2 = "int2"

    @property
    def bits(self) -> int:
        """Bits per code: 1 (SIGN1) or 2 (TERNARY2)."""
        return 1 if self is PackFormat.SIGN1 else 2

    @property
    def values(self) -> Tuple[int, ...]:
        """The values a code of this format may take, in increasing order."""
        return {
            PackFormat.SIGN1: (-1, 1),
            PackFormat.TERNARY2: (-1, 0, 1),
            PackFormat.INT2: (-2, -1, 0, 1),
        }[self]

    @property
    def codes_per_word(self) -> int:
        """Codes in one int32 word: 32 (SIGN1) or 16 (TERNARY2)."""
        return WORD_BITS // self.bits

    def words(self, k: int) -> int:
        """Number of 32-bit words that hold ``k`` codes (K padded up to a whole word)."""
        return -(-k // self.codes_per_word)

    @classmethod
    def parse(cls, value: "PackFormat | str") -> "PackFormat":
        """Accept a PackFormat or its name (``"sign1"``, ``"ternary2"``, ``"int2"``)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(repr(f.value) for f in cls)
            raise ValueError(f"format={value!r} is not a packing format; expected one of {names}") from None

    @classmethod
    def default_for_bits(cls, bits: int) -> "PackFormat":
        """The format a plain ``bits`` argument means: 1 -> SIGN1, 2 -> INT2 (which holds ternary)."""
        check_bits(bits)
        return cls.SIGN1 if bits == 1 else cls.INT2


SUPPORTED_BITS = (1, 2)


def check_bits(bits: int, name: str = "bits") -> int:
    """``bits`` if it is a supported code width (1 or 2), else ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{name}={bits!r} is not supported; expected 1 (sign) or 2 (two's-complement 2-bit codes)")
    return bits


def packed_words(k: int, bits: int) -> int:
    """Words per packed row for ``k`` codes of ``bits`` bits."""
    return -(-k // (WORD_BITS // check_bits(bits)))


GEMV_BLOCK_ROWS = 32  # weight rows per block of the GEMV layout
GEMV_PAIR_CODES = 8   # K positions per group pair (two groups of 4)


def gemv_shape(n: int, k: int) -> Tuple[int, int, int]:
    """Shape of the GEMV layout of an (n, k) SIGN1 weight: (ceil(n / 32), ceil(k / 8), 32) bytes."""
    return (-(-n // GEMV_BLOCK_ROWS), -(-k // GEMV_PAIR_CODES), 32)
