"""Ternary Weight Splitting (TWS, BinaryBERT: Bai et al., ACL 2021): a ternary (TWN) weight matrix
becomes two 1-bit matrices whose binarized sum equals it, so the split 1-bit model computes what the
ternary model computed, and then trains further as a 1-bit model.

The formulas (``../shared/reference/algorithms.md``), per matrix or per row, in float64. With TWN
codes ``t`` and scale ``alpha`` (mean |w| over the kept weights) of the latent weights ``w``:
``I = {t != 0}``, ``J = {t == 0, w > 0}``, ``K = {t == 0, w <= 0}``, ``n`` weights in all::

    a = (sum_I |w| + sum_K |w| - sum_J |w|) / (2 * sum_I |w|)
    b = (n * alpha - sum |w|) / (2 * (|J| + |K|))
    I: w1 = a * w,  w2 = (1 - a) * w      J: w1 = w + b,  w2 = -b      K: w1 = b,  w2 = w - b

Then ``mean|w1| = mean|w2| = alpha / 2``, and ``sign(w1) = sign(w2) = t`` on I while the signs are
opposite on J and K, so ``sign(w1) * mean|w1| + sign(w2) * mean|w2| = t * alpha``.

The split layers are honest 1-bit layers on the packed SIGN1 kernels, never float copies:

* :class:`SplitBinaryLinear`: ONE :class:`bitops.BinaryLinear` of doubled input width. Its latent
  weight is ``[w1 | w2]`` (N, 2K); each half is binarized with its own scale (per matrix or per row,
  as the ternary layer was), stored as two scale groups of ``group_size = K``; the input is
  quantized once and repeated, ``[x | x]``, so one packed GEMM accumulates ``x . sign(w1)`` and
  ``x . sign(w2)`` and the epilogue applies the two scales. Chosen over two layers whose outputs
  are added: one kernel call, one activation quantizer (one PACT clip / LSQ step, as the ternary
  layer had), one bias. The two halves' biases (b/2 each in the reference) are stored as their sum.
* :class:`SplitBinaryEmbedding`: each word row is ``binarize(w1_row) + binarize(w2_row)``, one
  scale per half-row (the reference splits word embeddings per row).

Training (straight-through, as every packed layer): both halves' latent weights receive the
gradient of the binarized weight they feed. Freezing packs both halves; the export format records
``halves: 2`` for each split module (:mod:`kd.export`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from . import quantizers as Q
from .embedding import BinaryEmbedding, TernaryEmbedding
from .nn import BinaryLinear, TernaryLinear

SPLIT_GRANULARITIES = ("tensor", "row")


def tws_weights(w: torch.Tensor, granularity: str = "tensor") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split latent weights ``w`` (N, K) into ``(w1, w2, codes, alpha)``, all float64 but ``codes``.

    ``granularity`` "tensor": one split for the whole matrix (the reference's per-matrix rule for
    Linear layers); "row": each row split on its own (the reference's rule for word embeddings, and
    the matching rule for ternary layers with per-row scales). ``codes`` (N, K) int8 are the TWN
    codes of :func:`bitops.quantizers.quantize_weight`, the very codes the ternary layer uses;
    ``alpha`` (N, 1) is their scale recomputed in float64 (equal to the layer's float32 scale to
    float32 rounding). Index sets, a and b: module docstring.
    """
    if granularity not in SPLIT_GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}; expected one of {SPLIT_GRANULARITIES} (TWS is per matrix or per row)")
    codes, _, _ = Q.quantize_weight(w, 2, granularity)
    w64 = w.detach().to(torch.float64)
    if granularity == "tensor":  # one "row" holding the whole matrix: the same formulas
        w64, c = w64.reshape(1, -1), codes.reshape(1, -1)
    else:
        c = codes
    absw = w64.abs()
    in_i = c != 0
    in_j = (c == 0) & (w64 > 0)
    in_k = (c == 0) & (w64 <= 0)
    n = w64.shape[1]
    s_i = (absw * in_i).sum(-1, keepdim=True)
    s_j = (absw * in_j).sum(-1, keepdim=True)
    s_k = (absw * in_k).sum(-1, keepdim=True)
    n_i = in_i.sum(-1, keepdim=True).to(torch.float64)
    n_jk = (in_j | in_k).sum(-1, keepdim=True).to(torch.float64)
    alpha = torch.where(n_i > 0, s_i / n_i.clamp(min=1), torch.zeros_like(s_i))
    # An all-zero row has no kept weight (s_i = 0: any a works, take 1/2); a row without zero codes
    # has no J or K (b unused, take 0).
    a = torch.where(s_i > 0, (s_i + s_k - s_j) / (2 * s_i).clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(s_i, 0.5))
    b = torch.where(n_jk > 0, (n * alpha - absw.sum(-1, keepdim=True)) / (2 * n_jk).clamp(min=1), torch.zeros_like(s_i))
    w1 = torch.where(in_i, a * w64, torch.where(in_j, w64 + b, b))
    w2 = torch.where(in_i, (1 - a) * w64, torch.where(in_j, -b, w64 - b))
    shape = (w.shape[0], -1)
    if granularity == "tensor":
        alpha = alpha.expand(w.shape[0], 1)
    return w1.reshape(shape), w2.reshape(shape), codes, alpha.contiguous()


def _latent_weight(module: nn.Module, expected: type, arg: str) -> torch.Tensor:
    """The latent weight of a training-state ternary module, or a clear error."""
    if not isinstance(module, expected):
        raise TypeError(f"{arg} is a {type(module).__name__}; expected bitops.{expected.__name__}")
    if module.frozen:
        raise ValueError(f"{arg} is frozen (its latent weights are gone); expected a training-state {expected.__name__}")
    return module.weight


class SplitBinaryLinear(BinaryLinear):
    """A TWS-split ternary Linear: one 1-bit layer of input width 2 * in_features (module docstring).

    Input (..., in_features), output (..., out_features) as the ternary layer it replaces.
    ``weight``: latent (out_features, 2 * in_features) = ``[w1 | w2]``; ``granularity`` "tensor"
    (one scale per half-matrix) or "row" (one per half-row). Frozen buffers: ``packed_weight``
    (out_features, ceil(2 * in_features / 32)) SIGN1 words, ``weight_scale`` (out_features, 2).
    """

    _state_kind = "split binary layer"
    halves = 2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act_bits: Optional[int] = 8,
                 act_quant: str = "dynamic", granularity: str = "row", device=None, dtype=None):
        if granularity not in SPLIT_GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}; expected one of {SPLIT_GRANULARITIES} for a split layer")
        super().__init__(in_features, out_features, bias, act_bits, act_quant, granularity, None, device, dtype)
        self.weight = nn.Parameter(torch.empty(out_features, self.halves * in_features, device=device, dtype=dtype))
        self.reset_parameters()

    @classmethod
    def from_ternary(cls, layer: TernaryLinear) -> "SplitBinaryLinear":
        """The split of a training-state ternary layer (same activation quantizer and its parameters)."""
        w = _latent_weight(layer, TernaryLinear, "layer")
        split = cls(layer.in_features, layer.out_features, layer.bias is not None, layer.act_bits, layer.act_quant,
                    layer.granularity, device=w.device, dtype=w.dtype)
        w1, w2, _, _ = tws_weights(w, layer.granularity)
        with torch.no_grad():
            split.weight.copy_(torch.cat([w1, w2], dim=1))
            if layer.bias is not None:
                split.bias.copy_(layer.bias)  # = b/2 + b/2
            for name in ("act_clip", "act_step"):
                if hasattr(layer, name):
                    getattr(split, name).copy_(getattr(layer, name))
        return split

    @property
    def kernel_in_features(self) -> int:
        return self.halves * self.in_features

    def quantize_latent(self, weight: torch.Tensor):
        """Binarize each half on its own: codes (N, 2K), scales (N, 2), group size K."""
        k = self.in_features
        parts = [Q.quantize_weight(weight[:, h * k:(h + 1) * k], 1, self.granularity) for h in range(self.halves)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), k

    def kernel_inputs(self, x_hat, q, x_scale):
        rep = lambda t: None if t is None else torch.cat([t] * self.halves, dim=1)  # noqa: E731
        return rep(x_hat), rep(q), x_scale

    def get_extra_state(self):
        return {**super().get_extra_state(), "halves": self.halves}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split into {self.halves} halves (TWS)"


class SplitBinaryEmbedding(BinaryEmbedding):
    """A TWS-split ternary word-embedding table: row = binarize(w1_row) + binarize(w2_row)."""

    _state_kind = "split binary embedding"
    halves = 2

    @classmethod
    def from_ternary(cls, emb: TernaryEmbedding) -> "SplitBinaryEmbedding":
        """The per-row split of a training-state ternary table."""
        w = _latent_weight(emb, TernaryEmbedding, "emb")
        split = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, device=w.device, dtype=w.dtype)
        w1, w2, _, _ = tws_weights(w, "row")
        with torch.no_grad():
            split.weight.copy_(torch.cat([w1, w2], dim=1))  # row v: [w1_v | w2_v]
        return split


def tws_split_(model: nn.Module) -> nn.Module:
    """Replace, in place, every training-state TernaryLinear and TernaryEmbedding of ``model`` by its
    TWS split (:class:`SplitBinaryLinear`, :class:`SplitBinaryEmbedding`). Returns ``model``."""
    targets = [(fqn, m) for fqn, m in model.named_modules() if fqn and isinstance(m, (TernaryLinear, TernaryEmbedding))]
    if not targets:
        raise ValueError("model has no TernaryLinear or TernaryEmbedding; expected a ternary (TWN) model to split")
    for fqn, m in targets:
        parent, _, child = fqn.rpartition(".")
        new = SplitBinaryLinear.from_ternary(m) if isinstance(m, TernaryLinear) else SplitBinaryEmbedding.from_ternary(m)
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
