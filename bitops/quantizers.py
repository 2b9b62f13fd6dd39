"""Weight and activation quantizers, each with a straight-through-estimator (STE) backward.

Weights (one place for both formats):
  * binary (BWN, XTC, BinaryBERT): codes ``sign(w)`` with sign(0) = +1, scale ``mean|w|``.
  * ternary (TWN, TernaryBERT): threshold ``D = 0.7 * mean|w|``, codes ``sign(w)`` where ``|w| > D``
    else 0, scale ``mean(|w| where |w| > D)`` (0 when nothing passes the threshold).
  Granularity: ``"tensor"`` (one scale: XTC's and BinaryBERT's choice), ``"row"`` (one per output
  row: the layers' default, free at run time and closest to FP32) or ``"group"`` (one per group of
  ``group_size`` consecutive inputs of a row). Scales are always returned as (N, G) float32, the
  shape the packed kernels take; a per-tensor scale is broadcast to every row.

Activations, on the inputs of quantized Linear layers:
  * dynamic symmetric per token (XTC): one scale per row, ``s = max|x| / (2**(k-1) - 1)``;
  * dynamic asymmetric per token: min-max with a zero point;
  * static symmetric with a learnable clip: PACT (Choi et al. 2018, used by BinaryBERT's A8) and
    LSQ (Esser et al. 2020, BinaryBERT's A4).

All-zero rows get scale 1 (their codes are 0), so no scale is ever 0 or non-finite.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

GRANULARITIES = ("tensor", "row", "group")
TWN_THRESHOLD = 0.7


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"weight has {w.dim()} dimensions (shape {tuple(w.shape)}); expected 2: (out_features, in_features)")
    if not w.dtype.is_floating_point:
        raise ValueError(f"weight has dtype {w.dtype}; expected a floating dtype")


def _grouped(w: torch.Tensor, granularity: str, group_size: Optional[int]) -> Tuple[torch.Tensor, int]:
    """View |w| as (N, G, group) with zero padding; returns it and the group size used."""
    n, k = w.shape
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}; expected one of {GRANULARITIES}")
    if granularity == "group":
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size={group_size!r}; expected a positive int with granularity='group'")
        gs = group_size
    else:
        gs = k
    g = -(-k // gs)
    a = torch.nn.functional.pad(w.detach().abs().to(torch.float32), (0, g * gs - k))
    return a.reshape(n, g, gs), gs


def _group_counts(k: int, gs: int, g: int, device) -> torch.Tensor:
    """Number of real (unpadded) elements in each group."""
    return torch.clamp(k - torch.arange(g, device=device) * gs, max=gs).to(torch.float32)


def quantize_weight(
    w: torch.Tensor, bits: int, granularity: str = "row", group_size: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Quantize a (N, K) weight. Returns ``(codes int8 (N, K), scale float32 (N, G), group_size)``.

    ``bits=1``: binary, codes in {-1, +1}; ``bits=2``: ternary (TWN), codes in {-1, 0, +1}.
    ``dequantized = codes * scale[:, k // group_size]``. No gradient: see :class:`WeightSTE`.
    """
    _check_weight(w)
    if bits not in (1, 2):
        raise ValueError(f"bits={bits!r} is not supported; expected 1 (binary) or 2 (ternary)")
    n, k = w.shape
    a, gs = _grouped(w, granularity, group_size)
    g = a.shape[1]
    counts = _group_counts(k, gs, g, w.device)
    if granularity == "tensor":
        a_all = a.reshape(1, 1, -1)
        counts_all = torch.tensor([float(n * k)], device=w.device)
    else:
        a_all, counts_all = a, counts
    mean_abs = a_all.sum(-1) / counts_all  # (1,1) or (N, G)
    wf = w.detach().to(torch.float32)
    if bits == 1:
        codes = torch.where(wf >= 0, 1, -1).to(torch.int8)
        scale = mean_abs
    else:
        thr = TWN_THRESHOLD * mean_abs
        above = a_all > thr.unsqueeze(-1)
        kept = above.sum(-1).to(torch.float32)
        scale = torch.where(kept > 0, (a_all * above).sum(-1) / kept.clamp(min=1), torch.zeros_like(kept))
        thr_full = thr.expand(n, g) if granularity == "tensor" else thr
        thr_k = thr_full.repeat_interleave(gs, dim=1)[:, :k]
        codes = (torch.sign(wf) * (wf.abs() > thr_k)).to(torch.int8)
    scale = scale.expand(n, g).contiguous() if granularity == "tensor" else scale.contiguous()
    return codes, scale.to(torch.float32), gs


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """``codes * scale[:, k // group_size]`` as float32 (N, K)."""
    k = codes.shape[-1]
    return codes.to(torch.float32) * scale.repeat_interleave(group_size, dim=1)[:, :k]


class WeightSTE(torch.autograd.Function):
    """Fake-quantized weight ``codes * scale`` with the identity straight-through gradient.

    Backward passes the gradient through unchanged and unclipped, as DeepSpeed Compression's XTC
    quantizers and BinaryBERT's BWN/TWN quantizers do (the scale is treated as a constant).
    """

    @staticmethod
    def forward(ctx, w, bits: int, granularity: str, group_size: Optional[int]):
        codes, scale, gs = quantize_weight(w, bits, granularity, group_size)
        return dequantize_codes(codes, scale, gs).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


# ---------------------------------------------------------------------------------------------
# Activations


def _qrange(bits: int) -> Tuple[int, int]:
    if bits not in (4, 8):
        raise ValueError(f"act_bits={bits!r} is not supported; expected 8 or 4")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantize_per_token_symmetric(x: torch.Tensor, bits: int = 8, activation: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-row quantization of a (M, K) tensor (``torch.ops.bitops.quantize_rows_int8``).

    Returns ``(q int8 (M, K), scale float32 (M,))`` with ``scale = max|x_row| / (2**(bits-1) - 1)``
    (1 for an all-zero row) and ``q = clamp(round(x / scale), -2**(bits-1), 2**(bits-1) - 1)``.
    ``activation="gelu"`` quantizes ``gelu(x)`` in the same pass, without writing it out.
    """
    _qrange(bits)
    return _quantize_rows_op()(x.detach() if x.requires_grad else x, bits, activation)


def _quantize_rows_op():
    """torch.ops.bitops.quantize_rows_int8.default, resolved on first use (quantizers stays importable
    without the extension) and kept: every layer call quantizes its input, and an import statement or
    an overload lookup in that path costs microseconds."""
    global _QUANTIZE_ROWS
    if _QUANTIZE_ROWS is None:
        from ._ops import ops

        _QUANTIZE_ROWS = ops.quantize_rows_int8.default
    return _QUANTIZE_ROWS


_QUANTIZE_ROWS = None


class PerTokenSymmetricSTE(torch.autograd.Function):
    """Dynamic symmetric per-token activation quantization (XTC's A8), identity STE.

    Forward returns ``(x_hat, q, scale)``: the fake-quantized float tensor ``q * scale`` and, as
    non-differentiable outputs, the int8 codes and per-row scales that the packed kernels consume.
    Backward: the gradient of ``x_hat`` passes to ``x`` unchanged. Nothing is clipped: the
    per-row range covers every element.
    """

    @staticmethod
    def forward(ctx, x, bits: int):
        q, s = quantize_per_token_symmetric(x, bits)
        ctx.mark_non_differentiable(q, s)
        return (q.to(torch.float32) * s.unsqueeze(-1)).to(x.dtype), q, s

    @staticmethod
    def backward(ctx, grad, _gq, _gs):
        return grad, None


class PerTokenAsymmetricSTE(torch.autograd.Function):
    """Dynamic asymmetric (min-max, zero point) per-token fake quantization, identity STE.

    ``scale = (max - min) / (2**bits - 1)``, ``zero = round(-min / scale)``,
    ``x_hat = (clamp(round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale``. Used where inputs
    are one-sided (attention probabilities, BinaryBERT); returns x_hat only.
    """

    @staticmethod
    def forward(ctx, x, bits: int):
        _qrange(bits)
        xf = x.detach().to(torch.float32)
        mn, mx = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)
        scale = (mx - mn) / (2**bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-mn / scale)
        q = torch.clamp(torch.round(xf / scale) + zero, 0, 2**bits - 1)
        return ((q - zero) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class PactSTE(torch.autograd.Function):
    """Static symmetric quantization with a learnable clip ``alpha`` (PACT, Choi et al. 2018).

    ``x_c = clamp(x, -alpha, alpha)``, ``scale = alpha / (2**(bits-1) - 1)`` for every row,
    ``q = round(x_c / scale)``. Backward (STE): ``dx = grad`` where ``|x| < alpha`` else 0 (the
    clipped region); ``dalpha = sum(grad * sign(x))`` over the clipped elements. BinaryBERT's A8
    initialises alpha to 2.5.
    Returns ``(x_hat, q, scale)`` like :class:`PerTokenSymmetricSTE`.
    """

    @staticmethod
    def forward(ctx, x, alpha, bits: int):
        lo, hi = _qrange(bits)
        a = alpha.detach().to(torch.float32).abs().clamp(min=1e-8)
        xf = x.detach().to(torch.float32)
        s = (a / hi).expand(xf.shape[0]).contiguous()
        q = torch.clamp(torch.round(torch.clamp(xf, -a, a) / s.unsqueeze(-1)), lo, hi).to(torch.int8)
        ctx.save_for_backward(x, a)
        ctx.mark_non_differentiable(q, s)
        return (q.to(torch.float32) * s.unsqueeze(-1)).to(x.dtype), q, s

    @staticmethod
    def backward(ctx, grad, _gq, _gs):
        x, a = ctx.saved_tensors
        inside = x.abs() < a
        gx = grad * inside
        galpha = (grad * torch.sign(x) * (~inside)).sum().reshape(1).to(torch.float32)
        return gx, galpha, None


class LsqSTE(torch.autograd.Function):
    """Static symmetric quantization with a learned step size (LSQ, Esser et al. 2020).

    ``q = clamp(round(x / s), -Qn, Qp)``, ``x_hat = q * s``. Backward: ``dx = grad`` inside the range,
    0 outside; ``ds = sum(grad * (q - x/s) inside, -Qn or Qp outside) * g`` with the LSQ gradient
    scale ``g = 1 / sqrt(numel * Qp)``. BinaryBERT uses it for A4.
    Returns ``(x_hat, q, scale)`` like :class:`PerTokenSymmetricSTE`.
    """

    @staticmethod
    def forward(ctx, x, step, bits: int):
        lo, hi = _qrange(bits)
        s = step.detach().to(torch.float32).abs().clamp(min=1e-8)
        xf = x.detach().to(torch.float32)
        v = xf / s
        q = torch.clamp(torch.round(v), lo, hi)
        ctx.save_for_backward(v, q, s)
        ctx.bits = bits
        srow = s.expand(xf.shape[0]).contiguous()
        qi = q.to(torch.int8)
        ctx.mark_non_differentiable(qi, srow)
        return (q * s).to(x.dtype), qi, srow

    @staticmethod
    def backward(ctx, grad, _gq, _gs):
        v, q, s = ctx.saved_tensors
        lo, hi = _qrange(ctx.bits)
        inside = (v >= lo) & (v <= hi)
        gx = grad * inside
        g = 1.0 / (v.numel() * hi) ** 0.5
        ds = torch.where(inside, q - v, q) * grad.to(torch.float32)
        return gx, (ds.sum() * g).reshape(1), None
