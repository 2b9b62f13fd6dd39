"""Drop-in packed Linear layers: :class:`BinaryLinear` (1-bit weights) and :class:`TernaryLinear`
(2-bit ternary weights), with int8/int4 or float activations.

Two states, one arithmetic:

* training (default): the layer keeps latent float weights. Every forward quantizes and packs them
  and runs the packed kernel (``torch.ops.bitops.packed_linear_int8`` or ``packed_linear_float``),
  so the student is trained on the very kernels it will be served with. Backward: grad_input goes
  through ``packed_linear_grad_input`` (the packed weights again, no dense copy kept), grad_weight
  is the straight-through estimate ``grad_out.T @ x_hat`` computed by an fp32 GEMM.
* frozen (:meth:`freeze`): the latent weights are dropped; the packed words and scales are buffers.
  A frozen layer computes bit-for-bit what the training layer computed on integer paths, its
  state_dict holds only packed tensors, and it can still pass gradients to its input.
  On CPU, a frozen 1-bit layer with one scale per row serves calls of up to ``GEMV_MAX_ROWS`` rows
  with ``packed_gemv_int8`` on the GEMV layout of its weights (bitops.formats), built on first use
  from the packed words and rebuilt whenever they change; it is never saved.

The packing format and every other fact needed to read the buffers travel in the state_dict as
the module's extra state (``<prefix>_extra_state``), never inferred from shapes.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Sequence

import torch
from torch import nn

from . import quantizers as Q
from ._ops import ops
from ._frozen import STATE_VERSION, FrozenPackedState
from .formats import PackFormat

ACT_QUANTS = ("dynamic", "pact", "lsq")
# Rows up to which a frozen CPU 1-bit layer runs the lookup GEMV (packed_gemv_int8) instead of
# packed_linear_int8: its cost grows with each row, the M=128 lookup kernel's does not
# (benchmarks/bench_gemm.py, "gemv-lut" against "gemv" / "lut").
GEMV_MAX_ROWS = 8
PACT_INIT_CLIP = 2.5  # BinaryBERT's initial clip for A8 activations


def _compiling() -> bool:
    # Under torch.compile the canonical op is traced (the GEMV layout's cache is Python state).
    return torch.compiler.is_compiling()


# The overloads themselves: calling the packet (ops.packed_linear_int8) resolves one on every call.
_LINEAR_INT8, _LINEAR_FLOAT = ops.packed_linear_int8.default, ops.packed_linear_float.default
_GEMV_INT8 = ops.packed_gemv_int8.default


def _packed_forward(x, q, x_scale, packed, w_scale, bias, bits, in_features, group_size):
    if q is not None:
        return _LINEAR_INT8(q, x_scale, packed, w_scale, bias, bits, in_features, group_size)
    return _LINEAR_FLOAT(x, packed, w_scale, bias, bits, in_features, group_size)


def _backward(ctx, grad_y, packed, w_scale):
    grad_x = ops.packed_linear_grad_input(
        grad_y.contiguous(), packed, w_scale, ctx.bits, ctx.in_features, ctx.group_size
    )
    grad_b = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[ctx.bias_index] else None
    return grad_x, grad_b


class _TrainingLinearFn(torch.autograd.Function):
    """Quantize + pack the latent weight, packed GEMM; STE backward (see module docstring).

    x_hat: float (M, K), the (fake-quantized) activations; q, x_scale: their int8 codes and per-row
    scales, or None for float activations.
    """

    @staticmethod
    def forward(ctx, x_hat, q, x_scale, weight, bias, bits, quantize):
        codes, w_scale, gs = quantize(weight)
        packed = ops.pack_bits(codes, bits)
        k = weight.shape[1]
        y = _packed_forward(x_hat, q, x_scale, packed, w_scale, bias, bits, k, gs)
        ctx.save_for_backward(x_hat, packed, w_scale)
        ctx.bits, ctx.in_features, ctx.group_size = bits, k, gs
        ctx.has_bias, ctx.bias_index, ctx.weight_dtype = bias is not None, 4, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, packed, w_scale = ctx.saved_tensors
        grad_x, grad_b = _backward(ctx, grad_y, packed, w_scale)
        grad_w = None
        if ctx.needs_input_grad[3]:
            grad_w = (grad_y.to(torch.float32).t() @ x_hat.to(torch.float32)).to(ctx.weight_dtype)
        return grad_x.to(x_hat.dtype), None, None, grad_w, grad_b, None, None


class _FrozenLinearFn(torch.autograd.Function):
    """Packed GEMM with stored packed weights; backward gives grad_input (and grad_bias) only."""

    @staticmethod
    def forward(ctx, x_hat, q, x_scale, packed, w_scale, bias, bits, in_features, group_size):
        ctx.save_for_backward(packed, w_scale)
        ctx.bits, ctx.in_features, ctx.group_size = bits, in_features, group_size
        ctx.has_bias, ctx.bias_index, ctx.x_dtype = bias is not None, 5, x_hat.dtype
        return _packed_forward(x_hat, q, x_scale, packed, w_scale, bias, bits, in_features, group_size)

    @staticmethod
    def backward(ctx, grad_y):
        packed, w_scale = ctx.saved_tensors
        grad_x, grad_b = _backward(ctx, grad_y, packed, w_scale)
        return grad_x.to(ctx.x_dtype), None, None, None, None, grad_b, None, None, None


def check_layer_options(act_bits, act_quant: str, granularity: str, group_size) -> None:
    """The options shared by the packed layers and bitops.BinaryConfig / TernaryConfig."""
    if act_bits not in (None, 8, 4):
        raise ValueError(f"act_bits={act_bits!r}; expected 8, 4 or None (float activations)")
    if act_quant not in ACT_QUANTS:
        raise ValueError(f"act_quant={act_quant!r}; expected one of {ACT_QUANTS}")
    if granularity not in Q.GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}; expected one of {Q.GRANULARITIES}")
    if granularity == "group" and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size={group_size!r}; expected a positive int with granularity='group'")


class _PackedLinear(FrozenPackedState, nn.Module):
    """Shared body of BinaryLinear and TernaryLinear; subclasses fix ``weight_format``."""

    _state_kind = "packed layer"
    _checked_state_keys = ("format", "bits", "in_features", "out_features", "group_size", "act_bits", "act_quant", "halves")

    weight_format: PackFormat
    # "gelu" once bitops.fuse_gelu_ moved the GELU in front of this layer into it: the layer then
    # computes W gelu(x) + b and quantizes gelu(x) in one pass. Model structure, like the module swap
    # itself, so not in the state_dict, whose tensors are the same either way.
    input_activation: Optional[str] = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        act_bits: Optional[int] = 8,
        act_quant: str = "dynamic",
        granularity: str = "row",
        group_size: Optional[int] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}; expected a positive int")
        check_layer_options(act_bits, act_quant, granularity, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.act_bits, self.act_quant = act_bits, act_quant
        self.granularity = granularity
        self.group_size = group_size if granularity == "group" else in_features
        self.frozen = False
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        if act_bits is not None and act_quant == "pact":
            self.act_clip = nn.Parameter(torch.full((1,), PACT_INIT_CLIP, device=device))
        if act_bits is not None and act_quant == "lsq":
            self.act_step = nn.Parameter(torch.full((1,), PACT_INIT_CLIP / (2 ** (act_bits - 1) - 1), device=device))
        self.reset_parameters()

    @property
    def bits(self) -> int:
        return self.weight_format.bits

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (Kaiming uniform weights, uniform bias)."""
        if self.frozen:
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "_PackedLinear":
        """A layer with ``linear``'s weights (copied) as latent weights, on its device and dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear is a {type(linear).__name__}; expected torch.nn.Linear")
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    # -- quantization ------------------------------------------------------------------------
    @property
    def kernel_in_features(self) -> int:
        """K of the packed matrix the kernels see (in_features here; a split layer doubles it)."""
        return self.in_features

    def quantize_latent(self, weight: torch.Tensor):
        """(codes int8, scale float32 (N, G), group_size) of latent ``weight`` (N, kernel_in_features)."""
        return Q.quantize_weight(weight, self.bits, self.granularity, self.group_size)

    def kernel_inputs(self, x_hat, q, x_scale):
        """The (x_hat, q, x_scale) the kernel multiplies with the packed matrix; a split layer
        repeats the input once per half."""
        return x_hat, q, x_scale

    def quantize_input(self, x2d: torch.Tensor):
        """(x_hat, q, x_scale) for a (M, K) input; q and x_scale are None for float activations."""
        needs_x_hat = torch.is_grad_enabled() and (x2d.requires_grad or not self.frozen)
        if self.act_bits is not None and self.act_quant == "dynamic" and not needs_x_hat:
            # No backward will read x_hat (the fake-quantized input that grad_weight and the STE
            # use): the kernels need only the codes, so skip building that float copy. A fused GELU
            # is applied inside the quantization (x_hat is then unused, and left as the raw input).
            q, s = Q.quantize_per_token_symmetric(x2d, self.act_bits, self.input_activation or "none")
            return x2d, q, s
        if self.input_activation == "gelu":
            x2d = torch.nn.functional.gelu(x2d)
        if self.act_bits is None:
            return x2d, None, None
        if self.act_quant == "dynamic":
            return Q.PerTokenSymmetricSTE.apply(x2d, self.act_bits)
        if self.act_quant == "pact":
            return Q.PactSTE.apply(x2d, self.act_clip, self.act_bits)
        return Q.LsqSTE.apply(x2d, self.act_step, self.act_bits)

    def gemv_layout(self) -> Optional[torch.Tensor]:
        """The GEMV layout of the frozen packed weights (bitops.formats), or None where the lookup
        GEMV does not apply (2-bit codes, scale groups, float activations, not frozen). Cached and
        keyed to the packed tensor itself (identity, device, in-place version; load_state_dict drops
        it), so weights that are loaded, assigned or moved are never served from a stale copy. An
        inference tensor (made under torch.inference_mode) has no version counter: after writing
        into one in place by hand, ``del layer._gemv_cache``."""
        if not self.frozen or self.weight_format is not PackFormat.SIGN1 or self.act_bits is None:
            return None
        # Every call of a few-row layer comes here: the buffers straight from _buffers (see forward),
        # and the key built from the cheapest tensor queries (~1.5 us in all).
        packed, scale = self._buffers["packed_weight"], self._buffers["weight_scale"]
        if scale.shape[1] != 1:
            return None
        key = (id(packed), packed.data_ptr(), packed.device, None if packed.is_inference() else packed._version)
        cached = self.__dict__.get("_gemv_cache")
        if cached is None or cached[0] != key:
            if packed.device.type == "meta":
                return None
            from .reference import to_gemv_layout  # pure torch; runs once per weight change

            cached = (key, to_gemv_layout(packed, self.kernel_in_features))
            self.__dict__["_gemv_cache"] = cached
        return cached[1]

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_gemv_cache", None)  # loading writes in place, maybe into inference tensors
        group = self.__dict__.get("_input_group")
        if group is not None:
            group[0].drop_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def _frozen_twin(self, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]) -> "_PackedLinear":
        """A frozen layer like this one (class, activation quantizer, scale granularity) over other
        packed weights of the same input width; registered nowhere, so no state_dict sees it."""
        twin = self.__class__.__new__(self.__class__)
        nn.Module.__init__(twin)
        skip = {"_input_group", "_gemv_cache"}
        for name, value in self.__dict__.items():  # plain attributes: in/out features, act_bits, ...
            if not name.startswith("_") and name not in skip:
                twin.__dict__[name] = value
        twin.out_features = packed.shape[0]
        twin._buffers.update(packed_weight=packed, weight_scale=scale)
        twin._parameters["bias"] = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return twin

    def _bias(self) -> Optional[torch.Tensor]:
        # A parameter, or a plain None attribute when bias=False: _parameters first, because
        # nn.Module.__getattr__ costs ~2 us a lookup.
        params = self._parameters
        return params["bias"] if "bias" in params else self.bias

    def packed_weight_and_scale(self):
        """(packed int32 (N, W), scale float32 (N, G)) of the current weights."""
        if self.frozen:
            return self.packed_weight, self.weight_scale
        with torch.no_grad():
            codes, scale, _ = self.quantize_latent(self.weight)
            return ops.pack_bits(codes, self.bits), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
            what = f"a {type(x).__name__}" if not isinstance(x, torch.Tensor) else f"dtype {x.dtype}, shape {tuple(x.shape)}"
            raise ValueError(f"input is {what}; expected a floating-point tensor of shape (..., in_features={self.in_features})")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features in its last dimension (shape {tuple(x.shape)}); "
                f"expected in_features={self.in_features}"
            )
        if not torch.is_grad_enabled() and not _compiling():
            group = self.__dict__.get("_input_group")  # (SharedInputGroup, index), set by bitops.fuse_qkv_
            if group is not None:
                return group[0].output(group[1], x)
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if self.act_bits is not None and x2d.dtype != torch.float32:
            x2d = x2d.to(torch.float32)  # activation scales and int8 codes are computed in fp32
        x_hat, q, x_scale = self.kernel_inputs(*self.quantize_input(x2d))
        if self.frozen:
            # The buffers straight from _buffers: nn.Module.__getattr__ costs ~1 us a lookup, and a
            # small layer's whole Python share is ~20 us (36 layer calls in a MiniLM forward).
            packed, w_scale, bias = self._buffers["packed_weight"], self._buffers["weight_scale"], self._bias()
            args = (x_hat, q, x_scale, packed, w_scale, bias, self.bits, self.kernel_in_features, self.group_size)
            needs_grad = torch.is_grad_enabled() and (x_hat.requires_grad or (bias is not None and bias.requires_grad))
            # Inference calls the op directly: autograd.Function.apply costs ~10% of a small layer.
            if needs_grad:
                y = _FrozenLinearFn.apply(*args)
            elif q is not None:
                y = self._int8_output(q, x_scale, packed, w_scale, bias)
            else:
                y = _packed_forward(*args)
        else:
            y = _TrainingLinearFn.apply(x_hat, q, x_scale, self.weight, self.bias, self.bits, self.quantize_latent)
        # Each skipped no-op call (.to to the same dtype, reshape of a 2-D input) saves microseconds of a
        # small layer's Python overhead.
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if len(lead) == 1 else y.reshape(*lead, self.out_features)

    def _int8_output(self, q, x_scale, packed, w_scale, bias):
        # A frozen layer in inference: the lookup GEMV for a few CPU rows, the GEMM otherwise.
        if q.shape[0] <= GEMV_MAX_ROWS and q.is_cpu and not _compiling():
            gemv = self.gemv_layout()
            if gemv is not None:
                return _GEMV_INT8(q, x_scale, gemv, w_scale, bias, self.kernel_in_features)
        return _LINEAR_INT8(q, x_scale, packed, w_scale, bias, self.bits, self.kernel_in_features, self.group_size)

    def int8_matmul(self, q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        """A frozen layer's output for activations its caller has quantized already: int8 codes q
        (M, in_features) with per-row scales x_scale (M,) float32 (``quantize_rows_int8``'s form),
        times the packed weights, plus bias: (M, out_features) float32, no autograd. What forward
        computes after quantizing, for callers that fuse the quantization into something else
        (:func:`bitops.fuse_encoder_layers_`)."""
        if not self.frozen:
            raise RuntimeError("int8_matmul needs a frozen layer (call freeze() first); a training layer quantizes its own latent weights in forward")
        _, q, x_scale = self.kernel_inputs(None, q, x_scale)  # a split layer (bitops.tws) repeats its input
        buffers = self._buffers
        return self._int8_output(q, x_scale, buffers["packed_weight"], buffers["weight_scale"], self._bias())

    # -- freezing and serialization ---------------------------------------------------------
    def get_extra_state(self):
        return {
            "version": STATE_VERSION,
            "format": self.weight_format.value,
            "bits": self.bits,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "act_bits": self.act_bits,
            "act_quant": self.act_quant,
            "frozen": self.frozen,
        }

    def extra_repr(self) -> str:
        gran = {"tensor": "per tensor", "row": "per row", "group": f"per group of {self.group_size}"}[self.granularity]
        act = "float" if self.act_bits is None else f"int{self.act_bits} {self.act_quant}"
        fused = f", input_activation={self.input_activation}" if self.input_activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight={self.weight_format.value} ({self.bits}-bit, {gran}), act={act}, frozen={self.frozen}{fused}"
        )


class SharedInputGroup:
    """Frozen packed layers that a model calls one after another on the same input tensor (an
    attention block's query, key and value; bitops.fuse_qkv_ builds them). In inference (grad disabled,
    not under torch.compile) the first member called runs one GEMM over their concatenated weights, with
    one quantization of the input, and keeps the output; each other member called next with that same
    tensor object is served its columns of it (a view). Any other call pattern stays correct: a member
    called on another tensor, or twice, computes afresh. Every output equals the member's own
    computation bit for bit: the activation codes and per-row scales are the same, and the kernels'
    integer sums and float epilogue of an output column do not depend on the other columns.

    Why: at BERT's widths one GEMM of 3N columns beats three of N, and two quantizations of the
    input go (all-MiniLM-L6-v2's 384 x 384 query, key and value, one core: W1A8 1.21x at M = 128 and
    1.19x at M = 4096, W2A8 1.07x / 1.08x). The concatenated weights are a cache (not saved), keyed
    to the members' tensors (identity, device, in-place version) like the GEMV layout. As there, an inference tensor
    has no version counter: an input written in place between the members' calls, under
    torch.inference_mode, is not noticed (HF's attention never does it)."""

    def __init__(self, layers: Sequence["_PackedLinear"]):
        self.layers = tuple(layers)
        self.offsets = [0]  # member i's columns of the fused output: offsets[i]:offsets[i + 1]
        for layer in self.layers:
            self.offsets.append(self.offsets[-1] + layer.out_features)
        self.drop_cache()

    def __getstate__(self):  # deepcopy / pickle: the members only; the caches are rebuilt on use
        return {"layers": self.layers, "offsets": self.offsets}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.drop_cache()

    def drop_cache(self) -> None:
        self._fused = None  # (key of the members' tensors, frozen twin over the concatenated weights)
        self._pending = threading.local()  # per thread: (input, its version, fused output, members not served yet)

    def _twin(self) -> "_PackedLinear":
        tensors = [(m._buffers["packed_weight"], m._buffers["weight_scale"], m._bias()) for m in self.layers]
        key = tuple((id(t), t.data_ptr(), t.device, None if t.is_inference() else t._version)
                    for ts in tensors for t in ts if t is not None)
        if self._fused is None or self._fused[0] != key:
            packed, scale, bias = (None if ts[0] is None else torch.cat([t.detach() for t in ts]) for ts in zip(*tensors))
            self._fused = (key, self.layers[0]._frozen_twin(packed, scale, bias))
        return self._fused[1]

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s output for input ``x`` (see the class docstring)."""
        version = None if x.is_inference() else x._version
        pending = getattr(self._pending, "value", None)
        if pending is not None and pending[0] is x and pending[1] == version and index in pending[3]:
            y, unserved = pending[2], pending[3]
            unserved.discard(index)
            if not unserved:
                self._pending.value = None  # all served: hold neither the input nor the output
        else:
            y = self._twin().forward(x)
            self._pending.value = (x, version, y, set(range(len(self.layers))) - {index})
        return y[..., self.offsets[index]:self.offsets[index + 1]]


class BinaryLinear(_PackedLinear):
    """Linear layer with 1-bit weights ``sign(w) * mean|w|`` (format SIGN1, see bitops.formats).

    Args: in_features, out_features, bias as nn.Linear; ``act_bits`` 8, 4 or None (float
    activations); ``act_quant`` "dynamic" (per-token symmetric, XTC), "pact" or "lsq" (static,
    learnable clip, BinaryBERT); ``granularity`` of the weight scale: "row" (default), "tensor" or
    "group" with ``group_size``.
    Input (..., in_features) of any float dtype; output (..., out_features) in the input's dtype.
    """

    weight_format = PackFormat.SIGN1


class TernaryLinear(_PackedLinear):
    """Linear layer with 2-bit ternary (TWN) weights, format TERNARY2; arguments as BinaryLinear."""

    weight_format = PackFormat.TERNARY2
