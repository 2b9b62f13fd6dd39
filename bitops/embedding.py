"""Word-embedding tables with packed rows and one scale per row: ``BinaryEmbedding`` (1-bit rows,
XTC's and BinaryBERT's quantizer ``sign(w_row) * mean|w_row|``) and ``TernaryEmbedding`` (2-bit TWN
rows, TernaryBERT's and BinaryBERT's ternary stage). The TWS split of a ternary table into two
1-bit halves, :class:`bitops.tws.SplitBinaryEmbedding`, builds on the same body (``halves=2``).

Two states, one arithmetic, as the packed Linear layers (:mod:`bitops.nn`):

* training (default): the layer keeps latent float rows. A lookup gathers the selected rows and
  binarizes only those (the scale is per row, so binarizing a row needs nothing but the row);
  backward is the identity straight-through estimate into the gathered latent rows.
* frozen (:meth:`freeze`): the latent table is dropped; the buffers are the rows packed in the
  ``SIGN1`` / ``TERNARY2`` format (int32 words along the embedding dimension, :mod:`bitops.formats`)
  and a float32 scale per row. A lookup unpacks only the selected rows. It returns bit-for-bit what the
  training layer returned: both compute ``float32(code) * scale`` for the same codes and scales.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import quantizers as Q
from ._ops import ops
from ._frozen import STATE_VERSION, FrozenPackedState
from .formats import PackFormat


class _PackedEmbedding(FrozenPackedState, nn.Module):
    """Embedding (num_embeddings, embedding_dim) with packed rows and per-row float32 scales.

    Input: integer ids of any shape; output: float32 (or the latent dtype while training) of shape
    ``ids.shape + (embedding_dim,)``. ``padding_idx`` is kept for compatibility with nn.Embedding:
    its row receives no gradient while training.

    ``halves`` > 1 (the TWS split, :mod:`bitops.tws`): each row is the sum of ``halves`` quantized
    sub-rows of ``embedding_dim`` values, each with its own scale. The latent table is
    (num_embeddings, halves * embedding_dim); the frozen buffers are ``packed_weight``
    (num_embeddings, halves * words) int32 (the sub-rows packed one after the other) and
    ``weight_scale`` (num_embeddings, halves) float32.
    """

    _state_kind = "packed embedding"
    _checked_state_keys = ("format", "num_embeddings", "embedding_dim", "halves")

    weight_format: PackFormat
    halves = 1

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}; expected a positive int")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx={padding_idx!r}; expected None or an index in [-{num_embeddings}, {num_embeddings})")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.frozen = False
        self.weight = nn.Parameter(torch.empty(num_embeddings, self.halves * embedding_dim, device=device, dtype=dtype))
        nn.init.normal_(self.weight)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()

    @property
    def bits(self) -> int:
        return self.weight_format.bits

    @classmethod
    def from_embedding(cls, emb: nn.Embedding):
        """A layer with ``emb``'s table (copied) as latent rows, on its device and dtype."""
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"emb is a {type(emb).__name__}; expected torch.nn.Embedding")
        if cls.halves != 1:
            raise TypeError(f"{cls.__name__} is built from a ternary table (from_ternary), not from an nn.Embedding")
        layer = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, device=emb.weight.device, dtype=emb.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(emb.weight)
        return layer

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids has dtype {ids.dtype}; expected torch.int64 or torch.int32")
        if torch.compiler.is_compiling():
            # The range check reads the ids on the host, a graph break; compiled gathers check
            # their indices themselves (inductor's indirect-indexing bounds assert).
            return
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(
                f"ids hold values in [{int(ids.min())}, {int(ids.max())}]; expected ids in [0, {self.num_embeddings})"
            )

    def _sum_halves(self, sub_rows: torch.Tensor, n: int) -> torch.Tensor:
        """(n * halves, D) dequantized sub-rows -> (n, D) rows."""
        return sub_rows if self.halves == 1 else sub_rows.reshape(n, self.halves, self.embedding_dim).sum(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids)
        flat = ids.reshape(-1)
        n, d = flat.numel(), self.embedding_dim
        if self.frozen:
            words = self.packed_weight.shape[1] // self.halves
            codes = ops.unpack_bits(self.packed_weight.index_select(0, flat).reshape(n * self.halves, words), self.bits, d)
            rows = codes.to(torch.float32) * self.weight_scale.index_select(0, flat).reshape(n * self.halves, 1)
            out = self._sum_halves(rows, n)
            if self.output_dtype != torch.float32:  # rows exact in float32, then cast as the model was
                out = out.to(self.output_dtype)
            return out.reshape(*ids.shape, d)
        latent = nn.functional.embedding(flat, self.weight, self.padding_idx).reshape(n * self.halves, d)
        rows = Q.WeightSTE.apply(latent, self.bits, "row", None) if n else latent
        return self._sum_halves(rows, n).reshape(*ids.shape, d)

    @torch.no_grad()
    def packed_weight_and_scale(self):
        """(packed int32 (V, halves * ceil(D * bits / 32)), scale float32 (V, halves)) of the current table."""
        if self.frozen:
            return self.packed_weight, self.weight_scale
        v, d = self.num_embeddings, self.embedding_dim
        codes, scale, _ = Q.quantize_weight(self.weight.reshape(v * self.halves, d), self.bits, "row")
        return ops.pack_bits(codes, self.bits).reshape(v, -1), scale.reshape(v, self.halves)

    def get_extra_state(self):
        state = {
            "version": STATE_VERSION,
            "format": self.weight_format.value,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "frozen": self.frozen,
        }
        if self.halves != 1:
            state["halves"] = self.halves
        return state

    def extra_repr(self) -> str:
        split = f", split into {self.halves} halves (TWS)" if self.halves != 1 else ""
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
            f"weight={self.weight_format.value} ({self.bits}-bit, per row{split}), frozen={self.frozen}"
        )


class BinaryEmbedding(_PackedEmbedding):
    """Word embeddings with 1-bit rows ``sign(w_row) * mean|w_row|`` (format SIGN1); see _PackedEmbedding."""

    _state_kind = "binary embedding"
    weight_format = PackFormat.SIGN1


class TernaryEmbedding(_PackedEmbedding):
    """Word embeddings with 2-bit TWN rows, one scale per row (format TERNARY2); see _PackedEmbedding."""

    _state_kind = "ternary embedding"
    weight_format = PackFormat.TERNARY2
