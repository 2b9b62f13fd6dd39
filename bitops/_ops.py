"""The ``torch.ops.bitops`` ops: loads the compiled schemas and kernels, and registers the fake
(meta) implementation of each op so ``torch.compile`` and ``opcheck`` can trace them.

Schemas are stated once, in ``csrc/ops.cpp``; the pure-torch reference of each op is in
``bitops/reference.py``; layouts in ``bitops/formats.py``. Fakes validate their arguments with the
same checks as the reference, so a bad call fails at trace time with the same message.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the bitops schemas and the CPU kernels)
from . import _checks, reference
from .formats import packed_words

ops = torch.ops.bitops


@torch.library.register_fake("bitops::pack_bits")
def _pack_bits_fake(codes, bits):
    _checks.check_codes(codes, bits, data=False)
    return codes.new_empty((*codes.shape[:-1], packed_words(codes.shape[-1], bits)), dtype=torch.int32)


@torch.library.register_fake("bitops::unpack_bits")
def _unpack_bits_fake(packed, bits, k):
    _checks.check_packed(packed, bits, k)
    return packed.new_empty((*packed.shape[:-1], k), dtype=torch.int8)


@torch.library.register_fake("bitops::packed_linear_int8")
def _packed_linear_int8_fake(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size):
    n = _checks.check_linear_int8(x, x_scale, packed_weight, weight_scale, bias, bits, in_features, group_size, data=False)
    return x.new_empty((x.shape[0], n), dtype=torch.float32)


@torch.library.register_fake("bitops::packed_gemv_int8")
def _packed_gemv_int8_fake(x, x_scale, gemv_weight, weight_scale, bias, in_features):
    n = _checks.check_gemv_int8(x, x_scale, gemv_weight, weight_scale, bias, in_features, data=False)
    return x.new_empty((x.shape[0], n), dtype=torch.float32)


@torch.library.register_fake("bitops::packed_linear_float")
def _packed_linear_float_fake(x, packed_weight, weight_scale, bias, bits, in_features, group_size):
    n = _checks.check_linear_float(x, packed_weight, weight_scale, bias, bits, in_features, group_size, data=False)
    return x.new_empty((x.shape[0], n))


@torch.library.register_fake("bitops::quantize_rows_int8")
def _quantize_rows_int8_fake(x, bits, activation="none"):
    _checks.check_quantize_rows(x, bits, activation)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1], dtype=torch.float32)


# Devices without a kernel of their own (CUDA until a GPU kernel exists) run the reference: it is
# a few elementwise torch ops, fast enough on a GPU. CPU has its C++ kernel, which takes precedence.
torch.library.impl("bitops::quantize_rows_int8", "CompositeExplicitAutograd")(reference.quantize_rows_int8)
# The GEMV layout exists for the CPU kernel; elsewhere the op is defined by its reference.
torch.library.impl("bitops::packed_gemv_int8", "CompositeExplicitAutograd")(reference.packed_gemv_int8)


@torch.library.register_fake("bitops::add_layer_norm_int8")
def _add_layer_norm_int8_fake(x, residual, weight, bias, eps, bits):
    _checks.check_add_layer_norm(x, residual, weight, bias, eps, bits)
    return (x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty(x.shape[:1], dtype=torch.float32))


# A CPU kernel only: elsewhere the op is its reference.
torch.library.impl("bitops::add_layer_norm_int8", "CompositeExplicitAutograd")(reference.add_layer_norm_int8)


@torch.library.register_fake("bitops::packed_linear_grad_input")
def _packed_linear_grad_input_fake(grad_output, packed_weight, weight_scale, bits, in_features, group_size):
    _checks.check_grad_input(grad_output, packed_weight, weight_scale, bits, in_features, group_size, data=False)
    return grad_output.new_empty((grad_output.shape[0], in_features))


@torch.library.register_fake("bitops::attention")
def _attention_fake(query, key, value, attn_mask=None, scale=None):
    _checks.check_attention(query, key, value, attn_mask, scale)
    b, h, lq, _ = query.shape
    return query.new_empty((b, lq, h, value.shape[-1])).transpose(1, 2)


# A CPU kernel only: on other devices the op is its reference (there, torch's own SDPA is the fast path).
torch.library.impl("bitops::attention", "CompositeExplicitAutograd")(reference.attention)
