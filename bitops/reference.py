"""Pure-torch reference of every ``bitops`` op: the definition that every kernel is tested against.

The functions here are slow on purpose: they decode the packed weights to a dense tensor and use
the simplest torch arithmetic. They run on any device. Integer parts are computed in float64, where
sums of int8 x {-2..1} products stay exact (|sum| < 2**53), so "equal to the reference" means
bit-for-bit equal wherever the arithmetic is integer.

The float epilogue of the int8 GEMM is part of the definition and kernels follow it operation by
operation, in float32, without fused multiply-add::

    acc[m, n, g] = sum over k in group g of x[m, k] * code[n, k]        (exact, int32)
    y[m, n]      = float(acc[m,n,0]) * weight_scale[n,0]
                   + float(acc[m,n,1]) * weight_scale[n,1] + ...        (left to right)
    y[m, n]      = y[m, n] * x_scale[m]
    y[m, n]      = y[m, n] + bias[n]                                    (if bias)
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks
from .formats import GEMV_BLOCK_ROWS, GEMV_PAIR_CODES, WORD_BITS, gemv_shape, packed_words
from .quantizers import PerTokenSymmetricSTE, WeightSTE


def _field_shifts(bits: int, device) -> torch.Tensor:
    return torch.arange(0, WORD_BITS, bits, device=device, dtype=torch.int64)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack int8 codes (..., K) along K into int32 words (..., ceil(K*bits/32)); see bitops.formats."""
    _checks.check_codes(codes, bits)
    k = codes.shape[-1]
    cpw = WORD_BITS // bits
    words = packed_words(k, bits)
    fields = (codes > 0).to(torch.int64) if bits == 1 else codes.to(torch.int64) & 3
    fields = torch.nn.functional.pad(fields, (0, words * cpw - k))  # pad fields hold pattern 0
    fields = fields.reshape(*codes.shape[:-1], words, cpw)
    packed = (fields << _field_shifts(bits, codes.device)).sum(-1)  # in [0, 2**32)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_bits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Exact inverse of :func:`pack_bits`: int32 words (..., W) -> int8 codes (..., k)."""
    _checks.check_packed(packed, bits, k)
    mask = (1 << bits) - 1
    words = packed.to(torch.int64) & 0xFFFFFFFF
    fields = (words.unsqueeze(-1) >> _field_shifts(bits, packed.device)) & mask
    fields = fields.reshape(*packed.shape[:-1], packed.shape[-1] * (WORD_BITS // bits))[..., :k]
    values = fields * 2 - 1 if bits == 1 else fields - 4 * (fields >= 2).to(torch.int64)
    return values.to(torch.int8)


def quantize_rows_int8(x: torch.Tensor, bits: int, activation: str = "none"):
    """Dynamic symmetric per-row quantization of float x (M, K): ``(q int8 (M, K), scale float32 (M,))``.

    ``scale = max|x_row| / (2**(bits-1) - 1)`` (1 for an all-zero row, so nothing divides by zero),
    ``q = clamp(round_half_even(x / scale), -2**(bits-1), 2**(bits-1) - 1)``; all in float32.
    ``activation="gelu"``: the same of ``torch.nn.functional.gelu(x.float())`` (erf form).
    """
    _checks.check_quantize_rows(x, bits, activation)
    hi = 2 ** (bits - 1) - 1
    xf = x.to(torch.float32)
    bad = ~torch.isfinite(xf).all(dim=-1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"x holds non-finite values (nan or inf) in row {row}; expected finite activations")
    if activation == "gelu":
        xf = torch.nn.functional.gelu(xf)
    amax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[:-1])
    scale = torch.where(amax > 0, amax / torch.tensor(float(hi)), torch.ones_like(amax))
    q = torch.clamp(torch.round(xf / scale.unsqueeze(-1)), -hi - 1, hi).to(torch.int8)
    return q, scale


def add_layer_norm_int8(x, residual, weight, bias, eps: float, bits: int):
    """``out = layer_norm(x + residual)`` over each row of (M, K) x, in float32 (``weight``, ``bias``
    (K,) or None; ``eps``), and ``quantize_rows_int8(out, bits)``: ``(out, q, scale)``. A BERT
    layer's add & norm and the quantization of its output for the next packed layer."""
    _checks.check_add_layer_norm(x, residual, weight, bias, eps, bits)
    h = x.to(torch.float32) if residual is None else x.to(torch.float32) + residual.to(torch.float32)
    affine = [None if t is None else t.to(torch.float32) for t in (weight, bias)]
    out = torch.nn.functional.layer_norm(h, (h.shape[1],), *affine, eps)
    bad = ~torch.isfinite(out).all(dim=-1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"layer_norm(x + residual) holds non-finite values (nan or inf) in row {row}; "
                         "expected finite x, residual, weight and bias")
    return (out, *quantize_rows_int8(out, bits))


def dequantize_weight(packed_weight, weight_scale, bits: int, in_features: int, group_size: int) -> torch.Tensor:
    """Dense float32 (N, K) weight ``code * weight_scale[n, k // group_size]`` (exact in float32)."""
    codes = unpack_bits(packed_weight, bits, in_features).to(torch.float32)
    scale = weight_scale.repeat_interleave(group_size, dim=1)[:, :in_features]
    return codes * scale


def packed_linear_int8(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    packed_weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
    in_features: int,
    group_size: int,
) -> torch.Tensor:
    """y (M, N) float32 = dequant(x_q) @ dequant(W).T + bias, with the epilogue in the module docstring.

    x: int8 (M, K); x_scale: float32 (M,); packed_weight: int32 (N, W); weight_scale: float32 (N, G)
    with G = ceil(K / group_size); bias: float (N,) or None.
    """
    n = _checks.check_linear_int8(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size)
    m, k, g = x.shape[0], in_features, weight_scale.shape[1]
    codes = unpack_bits(packed_weight, bits, k).to(torch.float64)
    padded_k = g * group_size
    xg = torch.nn.functional.pad(x.to(torch.float64), (0, padded_k - k)).reshape(m, g, group_size)
    wg = torch.nn.functional.pad(codes, (0, padded_k - k)).reshape(n, g, group_size)
    acc = torch.einsum("mgk,ngk->mng", xg, wg).to(torch.float32)  # exact integers, then int->float rounding
    y = acc[:, :, 0] * weight_scale[:, 0]
    for j in range(1, g):
        y = y + acc[:, :, j] * weight_scale[:, j]
    y = y * x_scale[:, None]
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y


def to_gemv_layout(packed_weight: torch.Tensor, in_features: int) -> torch.Tensor:
    """Canonical SIGN1 words (N, W) -> the GEMV layout, uint8 :func:`~bitops.formats.gemv_shape`
    (see bitops.formats, "GEMV layout of SIGN1")."""
    n = _checks.check_packed_weight(packed_weight, 1, in_features)
    blocks, pairs, _ = gemv_shape(n, in_features)
    bits = (unpack_bits(packed_weight, 1, in_features) > 0).to(torch.int32)
    bits = torch.nn.functional.pad(bits, (0, pairs * GEMV_PAIR_CODES - in_features, 0, blocks * GEMV_BLOCK_ROWS - n))
    # rows (block, nibble half, lane row i); K (pair, lane L, position t in the group)
    bits = bits.reshape(blocks, 2, 16, pairs, 2, 4)
    nib = (bits << torch.arange(4, device=bits.device)).sum(-1)  # (blocks, half, i, pairs, L)
    byte = nib[:, 0] | (nib[:, 1] << 4)  # (blocks, i, pairs, L)
    return byte.permute(0, 2, 3, 1).reshape(blocks, pairs, 32).to(torch.uint8).contiguous()


def from_gemv_layout(gemv_weight: torch.Tensor, n: int, in_features: int) -> torch.Tensor:
    """Exact inverse of :func:`to_gemv_layout`, to int8 codes (n, in_features) in {-1, +1}."""
    blocks, pairs, _ = gemv_shape(n, in_features)
    byte = gemv_weight.to(torch.int32).reshape(blocks, pairs, 2, 16).permute(0, 3, 1, 2)  # (blocks, i, pairs, L)
    nib = torch.stack([byte & 15, byte >> 4], dim=1)  # (blocks, half, i, pairs, L)
    bits = (nib.unsqueeze(-1) >> torch.arange(4, device=nib.device)) & 1
    bits = bits.reshape(blocks * GEMV_BLOCK_ROWS, pairs * GEMV_PAIR_CODES)[:n, :in_features]
    return (bits * 2 - 1).to(torch.int8)


def packed_gemv_int8(x, x_scale, gemv_weight, weight_scale, bias, in_features: int) -> torch.Tensor:
    """:func:`packed_linear_int8` of 1-bit weights held in the GEMV layout, one scale per row."""
    n = _checks.check_gemv_int8(x, x_scale, gemv_weight, weight_scale, bias, in_features)
    packed = pack_bits(from_gemv_layout(gemv_weight, n, in_features), 1)
    return packed_linear_int8(x, x_scale, packed, weight_scale, bias, 1, in_features, in_features)


def packed_linear_float(x, packed_weight, weight_scale, bias, bits: int, in_features: int, group_size: int):
    """y (M, N) = x @ dequant(W).T + bias, float32 accumulation, returned in x's dtype."""
    _checks.check_linear_float(x, packed_weight, weight_scale, bias, bits, in_features, group_size)
    w = dequantize_weight(packed_weight, weight_scale, bits, in_features, group_size)
    b = None if bias is None else bias.to(torch.float32)
    return torch.nn.functional.linear(x.to(torch.float32), w, b).to(x.dtype)


def packed_linear_grad_input(grad_output, packed_weight, weight_scale, bits: int, in_features: int, group_size: int):
    """grad_input (M, K) = grad_output (M, N) @ dequant(W) (N, K), float32 accumulation, in grad_output's dtype."""
    _checks.check_grad_input(grad_output, packed_weight, weight_scale, bits, in_features, group_size)
    w = dequantize_weight(packed_weight, weight_scale, bits, in_features, group_size)
    return (grad_output.to(torch.float32) @ w).to(grad_output.dtype)


def attention(query, key, value, attn_mask=None, scale=None) -> torch.Tensor:
    """``softmax(query @ key.T * scale + attn_mask) @ value`` in float32, returned in query's dtype.

    query (B, H, Lq, D), key (B, H, Lk, D), value (B, H, Lk, Dv). ``attn_mask``: bool (True: attend)
    or query's dtype (added to the scores), broadcastable to (B, H, Lq, Lk). ``scale`` defaults to
    D ** -0.5. A row with every key masked gives zeros (torch's SDPA on CPU does the same). The
    result (B, H, Lq, Dv) is a view of (B, Lq, H, Dv) memory: ``out.transpose(1, 2)`` is contiguous,
    so merging the heads afterwards costs no copy."""
    _checks.check_attention(query, key, value, attn_mask, scale)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query.float() @ key.float().transpose(-1, -2)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    all_masked = (scores == float("-inf")).all(dim=-1, keepdim=True)
    probs = torch.where(all_masked, 0.0, scores.softmax(dim=-1))
    out = probs @ value.float()
    return out.transpose(1, 2).contiguous().transpose(1, 2).to(query.dtype)


def encoder_layer_int8(x, x_codes, x_scales, attn_mask, num_heads: int, scale: float, packed_weights, weight_scales,
                       biases, gemv_weights, bits, in_features, group_sizes, act_bits, norm1_weight, norm1_bias,
                       norm1_eps: float, norm2_weight, norm2_bias, norm2_eps: float, out_bits: int):
    """One BERT encoder layer of four frozen packed layers (query/key/value as one, attention output,
    intermediate, output) in inference, as the references of the ops it is made of, in the order
    ``bitops.fuse_encoder_layers_`` calls them: quantize x (or take x_codes, x_scales), QKV GEMM,
    attention of num_heads heads, quantize, GEMM, add & norm with codes, GEMM, GELU + quantize, GEMM,
    add & norm. Returns ``(out (B, T, H), codes (B*T, H), scales (B*T,))`` with codes at out_bits for
    a next packed layer; out_bits 0: torch's LayerNorm and empty codes."""
    _checks.check_encoder_layer(x, x_codes, x_scales, num_heads, scale, packed_weights, weight_scales, biases,
                                gemv_weights, bits, in_features, group_sizes, act_bits, out_bits)
    b, t, hidden = x.shape
    x2 = x.reshape(b * t, hidden)

    def matmul(i, q, s):
        if gemv_weights[i] is not None:
            return packed_gemv_int8(q, s, gemv_weights[i], weight_scales[i], biases[i], in_features[i])
        return packed_linear_int8(q, s, packed_weights[i], weight_scales[i], biases[i], bits[i], in_features[i], group_sizes[i])

    qkv = matmul(0, x_codes, x_scales) if x_codes is not None else matmul(0, *quantize_rows_int8(x2, act_bits[0]))
    if qkv.shape[1] != 3 * hidden:
        _checks._fail(f"packed_weights[0] has {qkv.shape[1]} output rows; expected {3 * hidden}: query, key and value "
                      f"of x's hidden size {hidden}")
    query, key, value = qkv.view(b, t, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    attended = attention(query, key, value, attn_mask, scale).transpose(1, 2).reshape(b * t, hidden)
    h = matmul(1, *quantize_rows_int8(attended, act_bits[1]))
    x1, q1, s1 = add_layer_norm_int8(h, x2, norm1_weight, norm1_bias, norm1_eps, act_bits[2])
    h2 = matmul(3, *quantize_rows_int8(matmul(2, q1, s1), act_bits[3], "gelu"))
    if out_bits == 0:
        out = torch.nn.functional.layer_norm(h2 + x1, (hidden,), norm2_weight, norm2_bias, norm2_eps)
        return out.view(b, t, hidden), x.new_empty((0,), dtype=torch.int8), x.new_empty((0,))
    out, codes, scales = add_layer_norm_int8(h2, x1, norm2_weight, norm2_bias, norm2_eps, out_bits)
    return out.view(b, t, hidden), codes, scales


class FakeQuantLinear(torch.nn.Module):
    """Pure-torch reference of a packed layer: the same quantizers, dense float arithmetic.

    Holds a plain float weight; the forward fake-quantizes weights (``WeightSTE``) and activations
    (per-token symmetric STE, or none) and calls ``F.linear``. This is what DeepSpeed's XTC runs;
    the packed layers must agree with it (within float rounding) and have the same STE gradients.
    """

    def __init__(self, layer):
        super().__init__()
        self.bits, self.granularity, self.group_size = layer.bits, layer.granularity, layer.group_size
        self.act_bits = layer.act_bits
        self.weight = torch.nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().clone())

    def forward(self, x):
        w = WeightSTE.apply(self.weight, self.bits, self.granularity, self.group_size)
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).to(torch.float32)
        if self.act_bits is not None:
            x2 = PerTokenSymmetricSTE.apply(x2, self.act_bits)[0]
        y = torch.nn.functional.linear(x2, w.to(torch.float32), None if self.bias is None else self.bias.float())
        return y.to(x.dtype).reshape(*lead, -1)
