"""Argument checks shared by the pure-torch reference, the fake (meta) implementations and the Triton
wrappers. The C++ kernels state the same rules in ``csrc/checks.h`` with the same messages, so a
user sees one wording whichever backend runs. Every message names the argument, the value it got
and what was expected."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .formats import check_bits, gemv_shape, packed_words

FLOAT_ACTIVATION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fail(msg: str):
    raise ValueError(msg)


def check_dtype(name: str, t: torch.Tensor, *dtypes: torch.dtype) -> None:
    if t.dtype not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        _fail(f"{name} has dtype {t.dtype}; expected {want}")


def check_dim(name: str, t: torch.Tensor, dim: int, what: str) -> None:
    if t.dim() != dim:
        _fail(f"{name} has {t.dim()} dimensions (shape {tuple(t.shape)}); expected {dim}: {what}")


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.device != first.device:
            _fail(f"{n} is on {t.device} but {first_name} is on {first.device}; expected all tensors on one device")


def check_in_features(in_features: int) -> None:
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        _fail(f"in_features={in_features!r}; expected a positive int (the unpacked K)")


def check_packed_weight(packed_weight: torch.Tensor, bits: int, in_features: int) -> int:
    """Validate a packed (N, W) weight against bits and K; returns N."""
    check_bits(bits)
    check_in_features(in_features)
    check_dtype("packed_weight", packed_weight, torch.int32)
    check_dim("packed_weight", packed_weight, 2, "(out_features, words) packed along K")
    want = packed_words(in_features, bits)
    if packed_weight.shape[1] != want:
        _fail(
            f"packed_weight has {packed_weight.shape[1]} words per row (shape {tuple(packed_weight.shape)}); "
            f"expected {want} for in_features={in_features} at bits={bits}"
        )
    return packed_weight.shape[0]


def check_weight_scale(weight_scale: torch.Tensor, n: int, in_features: int, group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        _fail(f"group_size={group_size!r}; expected a positive int (in_features for one scale per row)")
    check_dtype("weight_scale", weight_scale, torch.float32)
    groups = -(-in_features // group_size)
    if tuple(weight_scale.shape) != (n, groups):
        _fail(
            f"weight_scale has shape {tuple(weight_scale.shape)}; expected ({n}, {groups}) for "
            f"out_features={n}, in_features={in_features}, group_size={group_size}"
        )


def check_finite(name: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        _fail(f"{name} holds non-finite values (nan or inf); expected finite scales")


def check_bias(bias: Optional[torch.Tensor], n: int) -> None:
    if bias is None:
        return
    if not bias.dtype.is_floating_point:
        _fail(f"bias has dtype {bias.dtype}; expected a floating dtype")
    if tuple(bias.shape) != (n,):
        _fail(f"bias has shape {tuple(bias.shape)}; expected ({n},) for out_features={n}")


def check_int8_activations(x, x_scale, in_features) -> None:
    """x int8 (M, in_features) with x_scale float32 (M,): the activations of the int8 GEMMs."""
    check_dtype("x", x, torch.int8)
    check_dim("x", x, 2, "(M, in_features) int8 activations")
    if x.shape[1] != in_features:
        _fail(f"x has {x.shape[1]} columns (shape {tuple(x.shape)}); expected in_features={in_features}")
    check_dtype("x_scale", x_scale, torch.float32)
    if tuple(x_scale.shape) != (x.shape[0],):
        _fail(f"x_scale has shape {tuple(x_scale.shape)}; expected ({x.shape[0]},), one scale per row of x")


def check_linear_int8(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size, data=True) -> int:
    """Checks of packed_linear_int8; ``data=False`` skips the checks that read values (fake tensors)."""
    n = check_packed_weight(packed_weight, bits, in_features)
    check_int8_activations(x, x_scale, in_features)
    check_weight_scale(weight_scale, n, in_features, group_size)
    check_bias(bias, n)
    check_same_device(x=x, x_scale=x_scale, packed_weight=packed_weight, weight_scale=weight_scale, bias=bias)
    if data:
        check_finite("x_scale", x_scale)
        check_finite("weight_scale", weight_scale)
    return n


def check_gemv_int8(x, x_scale, gemv_weight, weight_scale, bias, in_features, data=True) -> int:
    """Checks of packed_gemv_int8 (weights in the GEMV layout, one scale per row); returns N."""
    check_in_features(in_features)
    check_dtype("weight_scale", weight_scale, torch.float32)
    if weight_scale.dim() != 2 or weight_scale.shape[1] != 1:
        _fail(f"weight_scale has shape {tuple(weight_scale.shape)}; expected (out_features, 1): "
              f"the GEMV layout takes one scale per row")
    n = weight_scale.shape[0]
    check_dtype("gemv_weight", gemv_weight, torch.uint8)
    want = gemv_shape(n, in_features)
    if tuple(gemv_weight.shape) != want:
        _fail(f"gemv_weight has shape {tuple(gemv_weight.shape)}; expected {want} for out_features={n}, "
              f"in_features={in_features} (bitops.formats.gemv_shape)")
    check_int8_activations(x, x_scale, in_features)
    check_bias(bias, n)
    check_same_device(x=x, x_scale=x_scale, gemv_weight=gemv_weight, weight_scale=weight_scale, bias=bias)
    if data:
        check_finite("x_scale", x_scale)
        check_finite("weight_scale", weight_scale)
    return n


def check_linear_float(x, packed_weight, weight_scale, bias, bits, in_features, group_size, data=True) -> int:
    n = check_packed_weight(packed_weight, bits, in_features)
    check_dtype("x", x, *FLOAT_ACTIVATION_DTYPES)
    check_dim("x", x, 2, "(M, in_features) float activations")
    if x.shape[1] != in_features:
        _fail(f"x has {x.shape[1]} columns (shape {tuple(x.shape)}); expected in_features={in_features}")
    check_weight_scale(weight_scale, n, in_features, group_size)
    check_bias(bias, n)
    check_same_device(x=x, packed_weight=packed_weight, weight_scale=weight_scale, bias=bias)
    if data:
        check_finite("weight_scale", weight_scale)
    return n


def check_grad_input(grad_output, packed_weight, weight_scale, bits, in_features, group_size, data=True) -> int:
    n = check_packed_weight(packed_weight, bits, in_features)
    check_dtype("grad_output", grad_output, *FLOAT_ACTIVATION_DTYPES)
    check_dim("grad_output", grad_output, 2, "(M, out_features)")
    if grad_output.shape[1] != n:
        _fail(f"grad_output has {grad_output.shape[1]} columns (shape {tuple(grad_output.shape)}); expected out_features={n}")
    check_weight_scale(weight_scale, n, in_features, group_size)
    check_same_device(grad_output=grad_output, packed_weight=packed_weight, weight_scale=weight_scale)
    if data:
        check_finite("weight_scale", weight_scale)
    return n


ROW_ACTIVATIONS = ("none", "gelu")  # what quantize_rows_int8 may apply to x before quantizing it


def check_quantize_rows(x: torch.Tensor, bits: int, activation: str = "none") -> None:
    if isinstance(bits, bool) or bits not in (4, 8):
        _fail(f"bits={bits!r} is not supported for activations; expected 8 or 4")
    if activation not in ROW_ACTIVATIONS:
        _fail(f"activation={activation!r} is not supported; expected 'none' or 'gelu'")
    check_dtype("x", x, *FLOAT_ACTIVATION_DTYPES)
    check_dim("x", x, 2, "(M, K) float activations")


def check_add_layer_norm(x, residual, weight, bias, eps, bits) -> None:
    if isinstance(bits, bool) or bits not in (4, 8):
        _fail(f"bits={bits!r} is not supported for activations; expected 8 or 4")
    check_dtype("x", x, *FLOAT_ACTIVATION_DTYPES)
    check_dim("x", x, 2, "(M, K) float activations")
    if x.shape[1] < 1:
        _fail(f"x has shape {tuple(x.shape)}; expected K >= 1 columns to normalize")
    if residual is not None:
        if residual.shape != x.shape:
            _fail(f"residual has shape {tuple(residual.shape)}; expected {tuple(x.shape)} (x's shape)")
        if residual.dtype != x.dtype:
            _fail(f"residual has dtype {residual.dtype}; expected {x.dtype} (x's dtype)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        check_dtype(name, t, *FLOAT_ACTIVATION_DTYPES)
        if t.dim() != 1 or t.shape[0] != x.shape[1]:
            _fail(f"{name} has shape {tuple(t.shape)}; expected ({x.shape[1]},) for x's K columns")
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        _fail(f"eps={eps!r}; expected a finite float >= 0")


def check_encoder_layer(x, x_codes, x_scales, num_heads, scale, packed_weights, weight_scales, biases, gemv_weights,
                        bits, in_features, group_sizes, act_bits, out_bits) -> None:
    """encoder_layer_int8's own arguments (the ops it calls check the rest, each packed layer's tensors
    and the mask, with their own messages)."""
    check_dim("x", x, 3, "(batch, tokens, hidden) float32 activations")
    check_dtype("x", x, torch.float32)
    if isinstance(num_heads, bool) or num_heads < 1 or x.shape[2] % num_heads:
        _fail(f"num_heads={num_heads!r}; expected a positive divisor of x's hidden size {x.shape[2]}")
    if not math.isfinite(scale) or scale <= 0:
        _fail(f"scale={scale!r}; expected a finite float > 0")
    if (x_codes is None) != (x_scales is None):
        _fail("x_codes and x_scales: got one without the other; expected both or neither")
    if x_codes is not None:
        m = x.shape[0] * x.shape[1]
        if x_codes.dim() != 2 or tuple(x_codes.shape) != (m, x.shape[2]):
            _fail(f"x_codes has shape {tuple(x_codes.shape)}; expected ({m}, {x.shape[2]}): x's rows, each of its hidden size")
        if x_scales.dim() != 1 or x_scales.shape[0] != m:
            _fail(f"x_scales has shape {tuple(x_scales.shape)}; expected ({m},): one per row of x_codes")
    lists = {"packed_weights": packed_weights, "weight_scales": weight_scales, "biases": biases,
             "gemv_weights": gemv_weights, "bits": bits, "in_features": in_features, "group_sizes": group_sizes,
             "act_bits": act_bits}
    for name, values in lists.items():
        if len(values) != 4:
            _fail(f"{name} has {len(values)} entries; expected 4: the query/key/value, attention output, "
                  "intermediate and output layers")
    if isinstance(out_bits, bool) or out_bits not in (0, 4, 8):
        _fail(f"out_bits={out_bits!r}; expected 8 or 4 (codes for a next packed layer) or 0 (none)")


def check_attention(query, key, value, attn_mask=None, scale=None) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_dim(name, t, 4, "(batch, heads, length, head_dim)")
    check_dtype("query", query, *FLOAT_ACTIVATION_DTYPES)
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            _fail(f"{name} has dtype {t.dtype}; expected {query.dtype} (query's dtype)")
    check_same_device(query=query, key=key, value=value)
    b, h, _, d = query.shape
    if (key.shape[0], key.shape[1], key.shape[3]) != (b, h, d):
        _fail(f"key has shape {tuple(key.shape)}; expected ({b}, {h}, Lk, {d}): query's batch, heads and head_dim")
    if tuple(value.shape[:3]) != tuple(key.shape[:3]):
        kb, kh, kl = key.shape[:3]
        _fail(f"value has shape {tuple(value.shape)}; expected ({kb}, {kh}, {kl}, Dv): key's batch, heads and length")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        _fail(f"scale={scale!r}; expected a float or None (head_dim ** -0.5)")
    if attn_mask is None:
        return
    if attn_mask.dtype not in (torch.bool, query.dtype):
        _fail(f"attn_mask has dtype {attn_mask.dtype}; expected torch.bool or {query.dtype} (query's dtype)")
    check_same_device(query=query, attn_mask=attn_mask)
    want = (b, h, query.shape[2], key.shape[2])
    if attn_mask.dim() > 4 or any(m not in (1, w) for m, w in zip(reversed(attn_mask.shape), reversed(want))):
        _fail(f"attn_mask has shape {tuple(attn_mask.shape)}; expected a shape broadcastable to {want}: (batch, heads, Lq, Lk)")


def check_codes(codes: torch.Tensor, bits: int, data: bool = True) -> None:
    check_bits(bits)
    check_dtype("codes", codes, torch.int8)
    if codes.dim() < 1 or codes.shape[-1] < 1:
        _fail(f"codes has shape {tuple(codes.shape)}; expected at least one dimension with K >= 1 codes in the last")
    if not data or codes.numel() == 0:
        return
    lo, hi = (-1, 1) if bits == 1 else (-2, 1)
    bad = (codes < lo) | (codes > hi)
    if bits == 1:
        bad |= codes == 0
    if bool(bad.any()):
        v = int(codes[bad].flatten()[0])
        allowed = "{-1, +1}" if bits == 1 else "[-2, 1]"
        _fail(f"codes holds the value {v}; expected codes in {allowed} for bits={bits}")


def check_packed(packed: torch.Tensor, bits: int, k: int) -> None:
    check_bits(bits)
    check_dtype("packed", packed, torch.int32)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        _fail(f"k={k!r}; expected a positive int (the number of codes per row)")
    if packed.dim() < 1:
        _fail("packed is a 0-dimensional tensor; expected (..., words)")
    want = packed_words(k, bits)
    if packed.shape[-1] != want:
        _fail(f"packed has {packed.shape[-1]} words in its last dimension; expected {want} for k={k} at bits={bits}")
