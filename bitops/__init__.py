"""bitops: packed 1-bit and 2-bit weights for BERT-class models, with kernels for training and
inference.

* ``bitops.pack`` / ``bitops.unpack``: codes <-> packed int32 words (layouts: ``bitops.formats``).
* ``bitops.BinaryLinear`` / ``bitops.TernaryLinear``: drop-in nn.Linear replacements.
* ``bitops.BinaryEmbedding`` / ``bitops.TernaryEmbedding``: word embeddings with 1/2-bit rows.
* ``bitops.tws_split_(model)``: Ternary Weight Splitting of a ternary model into 1-bit layers
  (``bitops.SplitBinaryLinear``, ``bitops.SplitBinaryEmbedding``; see ``bitops.tws``).
* ``bitops.quantize_(model, BinaryConfig())``: swap a model's Linear layers in place;
  ``bitops.fuse_gelu_(model)`` then folds each FFN's GELU into the next layer's input quantization,
  ``bitops.fuse_qkv_(model)`` runs each attention's query, key and value as one GEMM.
* ``bitops.attention(query, key, value, attn_mask, scale)``: the float attention of an inference
  forward (softmax(q k^T * scale + mask) v) on a CPU kernel; ``bitops.use_attention_kernel_(model)``
  makes a transformers model's attention use it (``kd``'s BERT attention calls it already).
* ``bitops.fuse_encoder_layers_(model)``: each BERT-family encoder layer of a packed model runs as one
  lean sequence of ops in CPU inference (no submodule forwards); with the GELU fused and bitops'
  attention, as one call of ``torch.ops.bitops.encoder_layer_int8``.
* ``torch.ops.bitops.*``: the ops (schemas in csrc/ops.cpp, reference in ``bitops.reference``).
"""
from __future__ import annotations

import torch

from . import _ops, formats, quantizers, reference  # noqa: F401  (_ops registers the ops)
from ._ops import ops
from .api import BinaryConfig, TernaryConfig, fuse_encoder_layers_, fuse_gelu_, fuse_qkv_, quantize_, use_attention_kernel_
from .embedding import BinaryEmbedding, TernaryEmbedding
from .formats import PackFormat
from .nn import BinaryLinear, TernaryLinear
from .tws import SplitBinaryEmbedding, SplitBinaryLinear, tws_split_, tws_weights
from . import triton as _triton  # noqa: F401,E402  (registers the ops' CUDA kernels from Triton: see bitops.triton)

__all__ = [
    "pack", "unpack", "PackFormat", "BinaryLinear", "TernaryLinear", "BinaryEmbedding", "TernaryEmbedding",
    "SplitBinaryLinear", "SplitBinaryEmbedding", "tws_split_", "tws_weights", "BinaryConfig", "TernaryConfig",
    "quantize_", "fuse_gelu_", "fuse_qkv_", "fuse_encoder_layers_", "attention", "use_attention_kernel_", "ops", "formats", "quantizers", "reference", "set_cpu_isa", "cpu_isa",
]
__version__ = "0.1.0"


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack int8 codes (..., K) along the last dimension into int32 words (..., ceil(K*bits/32)).

    bits=1: codes in {-1, +1}; bits=2: codes in [-2, 1] (ternary codes are the subset {-1, 0, 1}).
    Layout (bit order, padding): :mod:`bitops.formats`.
    """
    return ops.pack_bits(codes, bits)


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Exact inverse of :func:`pack`: int32 words (..., W) -> int8 codes (..., k)."""
    return ops.unpack_bits(packed, bits, k)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """``softmax(query @ key.T * scale + attn_mask) @ value``, as
    ``torch.nn.functional.scaled_dot_product_attention`` (no dropout, not causal).

    query (B, H, Lq, D), key (B, H, Lk, D), value (B, H, Lk, Dv), float32/bf16/fp16 (computed in
    float32). ``attn_mask``: bool (True: attend) or query's dtype (added), broadcastable to
    (B, H, Lq, Lk). ``scale`` defaults to D ** -0.5. A row with every key masked gives zeros.
    Returns (B, H, Lq, Dv) in query's dtype, as a view of (B, Lq, H, Dv) memory, so
    ``out.transpose(1, 2).reshape(B, Lq, H * Dv)`` (merging the heads) is free.

    On CPU a kernel computes each tile's scores, softmax and output in cache, without the (Lq, Lk)
    matrix. It has no backward: when a gradient is needed, the pure-torch reference
    (:func:`bitops.reference.attention`) runs instead, so training works (at eager speed)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (query, key, value, attn_mask)):
        return reference.attention(query, key, value, attn_mask, scale)
    return ops.attention(query, key, value, attn_mask, scale)


def set_cpu_isa(isa: str) -> None:
    """Pick the CPU kernels: "auto" (AVX2 when the CPU has it; the default), "avx2" or "portable"."""
    _ops._C.set_cpu_isa(isa)


def cpu_isa() -> str:
    """The CPU kernel path in use: "avx2" or "portable"."""
    return _ops._C.cpu_isa()
