"""``quantize_``: swap a model's nn.Linear modules for packed layers in place, torchao style::

    import bitops
    bitops.quantize_(model, bitops.BinaryConfig(act_bits=8))              # every Linear
    bitops.quantize_(model, bitops.TernaryConfig(), filter_fn=lambda m, name: "attention" in name)
    bitops.fuse_gelu_(model)   # inference: each FFN's GELU runs inside the next layer's quantization
    bitops.fuse_qkv_(model)    # inference: each attention's query, key and value run as one GEMM
    bitops.use_attention_kernel_(model)  # transformers models: attention on bitops' CPU kernel in inference
    bitops.fuse_encoder_layers_(model)   # BERT-family layers: one lean sequence of ops in CPU inference
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from ._ops import ops
from .nn import GEMV_MAX_ROWS, BinaryLinear, SharedInputGroup, TernaryLinear, _PackedLinear, check_layer_options
from .quantizers import quantize_per_token_symmetric


@dataclass(frozen=True)
class _PackedConfig:
    act_bits: Optional[int] = 8
    act_quant: str = "dynamic"
    granularity: str = "row"
    group_size: Optional[int] = None
    freeze: bool = False  # freeze right after the swap (inference: no latent weights kept)

    layer_cls = _PackedLinear

    def __post_init__(self):  # bad options fail here, not later inside quantize_
        check_layer_options(self.act_bits, self.act_quant, self.granularity, self.group_size)

    def layer_kwargs(self) -> dict:
        kw = asdict(self)
        kw.pop("freeze")
        return kw


@dataclass(frozen=True)
class BinaryConfig(_PackedConfig):
    """1-bit weights (BinaryLinear). Fields: act_bits (8, 4, None), act_quant ("dynamic", "pact",
    "lsq"), granularity ("row", "tensor", "group"), group_size, freeze."""

    layer_cls = BinaryLinear


@dataclass(frozen=True)
class TernaryConfig(_PackedConfig):
    """2-bit ternary weights (TernaryLinear); fields as BinaryConfig."""

    layer_cls = TernaryLinear


def _default_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear)


def quantize_(
    model: nn.Module,
    config: _PackedConfig,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
) -> nn.Module:
    """Replace, in place, each ``nn.Linear`` of ``model`` for which ``filter_fn(module, fqn)`` is true
    (default: all) with ``config.layer_cls.from_linear(module, **config)``. Returns ``model``.

    Modules that are not nn.Linear are never swapped, whatever the filter says.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
    if not isinstance(config, _PackedConfig):
        raise TypeError(f"config is a {type(config).__name__}; expected bitops.BinaryConfig or bitops.TernaryConfig")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn is a {type(filter_fn).__name__}; expected a callable (module, fqn) -> bool")
    filter_fn = filter_fn or _default_filter
    targets = [
        (fqn, m) for fqn, m in model.named_modules()
        if isinstance(m, nn.Linear) and fqn and filter_fn(m, fqn)
    ]
    if isinstance(model, nn.Linear):
        raise TypeError("model is itself an nn.Linear; use BinaryLinear.from_linear(model) to convert one layer")
    if not targets:
        warnings.warn("quantize_: no nn.Linear matched filter_fn; the model is unchanged", stacklevel=2)
    for fqn, module in targets:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = config.layer_cls.from_linear(module, **config.layer_kwargs())
        if config.freeze:
            layer.freeze()
        setattr(parent, child, layer)
    return model


def _is_exact_gelu(act) -> bool:
    """Whether ``act`` is the erf GELU: nn.GELU() or transformers' GELUActivation ("gelu"), not the
    tanh approximation or another activation."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    if type(act).__name__ == "GELUActivation":  # transformers.activations, without importing it
        # .act is F.gelu, or its erf formula in Python (use_gelu_python=True)
        return getattr(getattr(act, "act", None), "__name__", None) in ("gelu", "_gelu_python")
    return act is nn.functional.gelu


def fuse_gelu_(model: nn.Module) -> int:
    """Move each feed-forward block's GELU into the packed layer after it, in place; returns how many.

    The pattern is the BERT family's (BERT, RoBERTa, ELECTRA, MiniLM): a module with ``intermediate``
    (``dense`` then ``intermediate_act_fn``, the erf GELU) and ``output.dense``, a BinaryLinear or
    TernaryLinear. The activation becomes ``nn.Identity`` and the layer's ``input_activation`` "gelu":
    it then quantizes ``gelu(x)`` directly (``quantize_rows_int8(x, bits, "gelu")``), so the GELU's
    float output (4x the hidden size) is never written and read back, and the GELU itself runs on
    bitops' AVX2 code. The result equals the unfused model's except where a value lies within the
    GELUs' ~1e-7 difference of an int8 rounding boundary: one code off, in 24 of 37.7 M codes of
    all-MiniLM-L6-v2's FFNs at batch 32 x 128 (6e-7).
    Training works too (the GELU then runs as torch's, before the usual quantizer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
    fused = 0
    for module in model.modules():
        inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
        nxt = getattr(out, "dense", None)
        act = getattr(inter, "intermediate_act_fn", None)
        if isinstance(nxt, _PackedLinear) and nxt.input_activation is None and act is not None and _is_exact_gelu(act):
            inter.intermediate_act_fn = nn.Identity()
            nxt.input_activation = "gelu"
            fused += 1
    return fused


def _can_share_input(layers) -> bool:
    """Whether ``layers`` can run as one GEMM over their concatenated weights with results equal to
    their own: frozen packed layers of one class, input width, packing, scale granularity and
    per-token dynamic activation quantizer (a static clip is per layer), no fused activation, all
    with or all without bias, on one device, in no group yet."""
    first = layers[0]
    if not all(isinstance(m, _PackedLinear) and type(m) is type(first) for m in layers):
        return False
    same = ("in_features", "act_bits", "act_quant", "granularity", "group_size", "input_activation")
    return (
        first.frozen and first.act_bits is not None and first.act_quant == "dynamic" and first.input_activation is None
        and all(m.frozen and all(getattr(m, a) == getattr(first, a) for a in same) for m in layers)
        and len({m._bias() is None for m in layers}) == 1
        and len({(m.packed_weight.device, m.packed_weight.dtype, m.weight_scale.dtype) for m in layers}) == 1
        and not any("_input_group" in m.__dict__ for m in layers)
    )


def fuse_qkv_(model: nn.Module) -> int:
    """Group each attention block's ``query``, ``key`` and ``value`` packed layers, in place, so that in
    inference they run as one GEMM over their concatenated weights; returns how many groups.

    The pattern is the BERT family's (a module with ``query``, ``key`` and ``value``; in a
    cross-attention, whose query reads another input, only ``key`` and ``value``). The layers must be
    frozen, with per-token dynamic activations and the same format and options (see
    bitops.nn.SharedInputGroup for what happens at a call and why the outputs are bit for bit the
    same). Structure only: the state_dict, and so every saved file, is unchanged; training and
    calls with grad enabled run each layer on its own. The grouped layers' outputs are column views
    of the one fused output, not contiguous: ``.view`` that splits the feature dimension (what the
    BERT family's attention does, into heads) works, one that merges it with others needs
    ``.reshape`` or ``.contiguous()`` first (a copy each would cost more than the grouping saves)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
    groups = 0
    for fqn, module in model.named_modules():
        cross = "CrossAttention" in type(module).__name__ or fqn.rpartition(".")[2] == "crossattention"
        names = ("key", "value") if cross else ("query", "key", "value")
        layers = [getattr(module, n, None) for n in names]
        if all(isinstance(m, nn.Module) for m in layers) and _can_share_input(layers):
            group = SharedInputGroup(layers)
            for i, m in enumerate(layers):
                m.__dict__["_input_group"] = (group, i)
            groups += 1
    return groups


# ------------------------------------------------------------------------------------------------
# Attention of transformers models

HF_ATTENTION = "bitops"  # the attention implementation name use_attention_kernel_ registers with transformers


def attention_kernel_applies(module: nn.Module, query, attention_mask, kwargs: dict) -> bool:
    """Whether a transformers attention call can run :func:`bitops.attention` (its CPU kernel): CPU
    tensors, the module in eval mode, no attention weights asked for, not causal-without-a-mask
    (transformers' SDPA builds that mask itself; with a mask, causal or not, the mask says it all),
    no position bias or softcap."""
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)  # SDPA's default for modules that do not say
    return (query.device.type == "cpu" and not module.training and not kwargs.get("output_attentions")
            and not (causal and attention_mask is None and query.shape[2] > 1)
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None)


def hf_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function (``AttentionInterface``; registered as ``"bitops"`` by
    :func:`use_attention_kernel_`): :func:`bitops.attention` where :func:`attention_kernel_applies`,
    transformers' SDPA otherwise (training, GPUs, attention weights, causal without a mask)."""
    if attention_kernel_applies(module, query, attention_mask, kwargs):
        from . import attention  # bitops.attention (this module is imported by bitops/__init__.py)

        return attention(query, key, value, attention_mask, scaling).transpose(1, 2), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


# An attention function that computes bitops.attention(query, key, value, attention_mask, scaling),
# transposed to (B, T, heads, head size), whenever a predicate of (module, query, attention_mask, kwargs)
# holds says so with that predicate as this attribute: fused encoder layers then call the op themselves
# (its Python wrappers cost ~5 us a layer). kd's capturing attention declares it too.
BITOPS_ATTENTION_WHEN = "bitops_attention_when"
setattr(hf_attention_forward, BITOPS_ATTENTION_WHEN, attention_kernel_applies)


def use_attention_kernel_(model: nn.Module) -> nn.Module:
    """A transformers model's attention runs :func:`bitops.attention` in CPU inference (see
    :func:`hf_attention_forward`; SDPA otherwise), in place; returns ``model``. For a binarized BERT
    the float attention is the largest part left besides the packed GEMMs: 1.1-1.3x SDPA's speed at
    BERT's shapes, and keys hidden by padding are skipped. The mask transformers builds for it is
    SDPA's (boolean). Models loaded by ``kd`` do this through kd's own attention already."""
    if not isinstance(model, nn.Module) or not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model is a {type(model).__name__}; expected a transformers PreTrainedModel")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(HF_ATTENTION, hf_attention_forward)
    AttentionMaskInterface.register(HF_ATTENTION, sdpa_mask)
    model.set_attn_implementation(HF_ATTENTION)
    return model


# ------------------------------------------------------------------------------------------------
# Whole encoder layers

def _frozen_int8_layer(m, activation=None) -> bool:
    """A frozen packed layer with per-token dynamic int8/int4 activations and the given fused input activation."""
    return (isinstance(m, _PackedLinear) and m.frozen and m.act_bits is not None and m.act_quant == "dynamic"
            and m.input_activation == activation)


# The self-attention classes whose forward is the query/key/value projections, the split into heads and
# the model's registered attention function, nothing else (transformers 5: BERT and its copies). Another
# class with the same submodule names may do more (RoFormer rotates query and key): not fused.
PLAIN_SELF_ATTENTION = frozenset({"BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention",
                                  "ElectraSelfAttention", "CamembertSelfAttention"})


class _EncoderLayerPlan:
    """The forward of a fused BERT-family encoder layer (see :func:`fuse_encoder_layers_`), set as
    the layer's ``forward`` attribute: an object, not a bound function, so that copy.deepcopy and
    pickle give a copy its own (bound to the copied modules). The modules are found once; their
    tensors are read at each call, so weights loaded or moved later are used.

    Unless ``exact``, each add & norm runs on ``add_layer_norm_int8`` with the quantization of its
    output for the packed layer after it, and the layer's last one quantizes for the next fused
    layer (``next``, the following layer of the same encoder): the codes wait in ``_incoming`` of
    that plan, per thread, and are used if its input is the very tensor this layer returned, not
    written in place since (an inference tensor has no version counter to tell: as for
    bitops.nn.SharedInputGroup, an in-place write between two layers under inference_mode is not
    noticed; transformers never does one)."""

    # Where the modules the fused path reads sit in the layer: checked at each call, so that a
    # submodule replaced after fusing sends the call to the layer's own forward instead of running
    # the old one.
    PATHS = (("attention", "self"), ("attention", "self", "query"), ("attention", "self", "key"),
             ("attention", "self", "value"), ("attention", "output", "dense"), ("attention", "output", "LayerNorm"),
             ("intermediate", "dense"), ("intermediate", "intermediate_act_fn"), ("output", "dense"), ("output", "LayerNorm"))

    def __init__(self, layer: nn.Module, exact: bool):
        att = layer.attention
        self.layer, self.exact, self.next = layer, exact, None
        self.watched = self.current_modules()
        self.self_attention, self.qkv = att.self, att.self.query.__dict__["_input_group"][0]
        self.attention_dense, self.norm1 = att.output.dense, att.output.LayerNorm
        self.ffn1, self.activation = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        self.ffn2, self.norm2 = layer.output.dense, layer.output.LayerNorm
        # Every module whose own forward the fused path does not call: a hook on any of them sends
        # the call down the layer's own forward, so that it runs.
        self.skipped = [m for part in (att, layer.intermediate, layer.output) for m in part.modules()]
        # Query, key and value of equal widths: the fused output splits into heads by one view and permute.
        o = self.qkv.offsets
        self.equal_thirds = o == [0, o[1], 2 * o[1], 3 * o[1]] and o[1] % self.self_attention.attention_head_size == 0
        # The layer as one op (encoder_layer_int8) where it is that op's sequence: the default add & norm,
        # plain packed layers (a split one, bitops.tws, repeats its input), and, checked at each call, the
        # GELU inside the quantization, query, key and value as wide as the input and an attention
        # function that runs bitops.attention.
        lins = (*self.qkv.layers, self.attention_dense, self.ffn1, self.ffn2)
        self.one_op = (not exact and self.equal_thirds
                       and all(type(m).kernel_inputs is _PackedLinear.kernel_inputs for m in lins))
        self.float_params = [p for m in (self.norm1, self.norm2) for p in m.parameters()] + [
            b for m in (*self.qkv.layers, self.attention_dense, self.ffn1, self.ffn2) if (b := m._bias()) is not None]
        self._incoming = threading.local()

    def __getstate__(self):  # deepcopy / pickle: no waiting codes (and a threading.local cannot be copied)
        return {k: v for k, v in self.__dict__.items() if k != "_incoming"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in ("equal_thirds", "one_op"):  # a plan pickled before these attributes existed
            self.__dict__.setdefault(name, False)
        self._incoming = threading.local()

    def current_modules(self) -> tuple:
        """The objects now at PATHS (dictionary lookups only: nn.Module.__getattr__ costs ~1 us each)."""
        found = []
        for path in self.PATHS:
            m = self.layer
            for name in path:
                m = m._modules[name] if name in m._modules else m.__dict__.get(name)
                if m is None:
                    break
            found.append(m)
        return tuple(found)

    @staticmethod
    def build(layer: nn.Module, exact: bool) -> Optional["_EncoderLayerPlan"]:
        """The plan of a BERT-family encoder layer (self-attention, no cross-attention, not a decoder)
        whose linear layers are frozen packed layers with dynamic activations (query, key and value
        grouped by fuse_qkv_); None for any other module."""
        att = getattr(layer, "attention", None)
        inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
        sa, att_out = getattr(att, "self", None), getattr(att, "output", None)
        if None in (sa, att_out, inter, out) or getattr(layer, "is_decoder", False) or hasattr(layer, "crossattention"):
            return None
        if type(sa).__name__ not in PLAIN_SELF_ATTENTION or getattr(att, "is_cross_attention", False):
            return None
        group = getattr(getattr(sa, "query", None), "__dict__", {}).get("_input_group")
        if group is None or group[0].layers != (sa.query, sa.key, sa.value) or not _frozen_int8_layer(group[0].layers[0]):
            return None
        act = getattr(inter, "intermediate_act_fn", None)
        ffn2_activation = getattr(getattr(out, "dense", None), "input_activation", None)
        if not (_frozen_int8_layer(getattr(att_out, "dense", None)) and _frozen_int8_layer(getattr(inter, "dense", None))
                and _frozen_int8_layer(out.dense, ffn2_activation) and callable(act)
                and (ffn2_activation is None or (ffn2_activation == "gelu" and isinstance(act, nn.Identity)))):
            return None
        if not all(isinstance(getattr(m, "LayerNorm", None), nn.LayerNorm) for m in (att_out, out)):
            return None
        return _EncoderLayerPlan(layer, exact)

    def __call__(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 past_key_values=None, **kwargs):
        incoming, self._incoming.value = getattr(self._incoming, "value", None), None
        attend = self.attention_function(hidden_states, encoder_hidden_states, past_key_values, kwargs)
        if attend is not None:
            return self.run(hidden_states, attention_mask, attend, kwargs, incoming)
        layer = self.layer
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, **kwargs)

    def attention_function(self, x, encoder_hidden_states, past_key_values, kwargs) -> Optional[Callable]:
        """The attention function of this call if it can take the fused path, else None. The fused
        path needs: eval mode, no gradient to keep, a (B, T, H) float32 CPU input, no cross-attention
        input or cache, no attention weights asked for, no hooks on the modules it skips, not under
        torch.compile, and an attention implementation transformers has registered (every one but
        "eager", which the layer's own forward runs)."""
        if (self.layer.training or encoder_hidden_states is not None or past_key_values is not None
                or kwargs.get("output_attentions") or x.dim() != 3 or x.dtype != torch.float32 or not x.is_cpu):
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.float_params)):
            return None
        if _global_forward_hooks or _global_forward_pre_hooks or torch.compiler.is_compiling():
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.skipped) and not _only_idle_output_capture(self.skipped):
            return None
        if any(a is not b for a, b in zip(self.current_modules(), self.watched)):
            return None
        return _all_attention_functions().get(self.self_attention.config._attn_implementation)

    def run(self, x: torch.Tensor, attention_mask, attend: Callable, kwargs, incoming=None) -> torch.Tensor:
        """The layer's output, as its own forward computes it in eval mode (dropout off). ``incoming``:
        (tensor, its version, codes, scales, bits) from the previous fused layer."""
        b, t, hidden = x.shape
        x2 = x.reshape(b * t, hidden)
        sa, group = self.self_attention, self.qkv
        fused_qkv = group._twin()
        codes = None
        if (incoming is not None and incoming[0] is x and incoming[4] == fused_qkv.act_bits
                and incoming[1] == (None if x.is_inference() else x._version)):
            codes = incoming[2:4]
        nxt = self.next
        bits = None if nxt is None or nxt.exact else nxt.qkv.layers[0].act_bits
        when = getattr(attend, BITOPS_ATTENTION_WHEN, None)
        if (self.one_op and when is not None and group.offsets[3] == 3 * hidden and self.ffn2.input_activation == "gelu"
                and when(sa, x2.view(b, t, -1, sa.attention_head_size).transpose(1, 2), attention_mask, kwargs)):
            # The whole sequence below in one op call (bitops.ops.encoder_layer_int8), without its Python.
            # Positional: keyword arguments cost the op call ~8 us more to parse.
            out, q, scale = _ENCODER_LAYER(*self.layer_op_args(x, codes, attention_mask, bits, fused_qkv).values())
            if bits:
                nxt._incoming.value = (out, None if out.is_inference() else out._version, q, scale, bits)
            return out
        if codes is None:
            codes = quantize_per_token_symmetric(x2, fused_qkv.act_bits)
        y = fused_qkv.int8_matmul(*codes)
        if self.equal_thirds and y.is_contiguous():  # (B, T, 3, heads, head size) -> 3 x (B, heads, T, head size)
            query, key, value = y.view(b, t, 3, -1, sa.attention_head_size).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            o = group.offsets
            query, key, value = (y[:, o[i]:o[i + 1]].view(b, t, -1, sa.attention_head_size).transpose(1, 2) for i in range(3))
        when = getattr(attend, BITOPS_ATTENTION_WHEN, None)
        if when is not None and when(sa, query, attention_mask, kwargs):
            a = _ATTENTION(query, key, value, attention_mask, sa.scaling).transpose(1, 2)
        else:
            a, _ = attend(sa, query, key, value, attention_mask, dropout=0.0, scaling=sa.scaling, **kwargs)
        a = a.reshape(b * t, -1)  # (B, T, heads, head size): bitops.attention's is contiguous, a free reshape
        dense = self.attention_dense
        h = dense.int8_matmul(*quantize_per_token_symmetric(a, dense.act_bits))
        x1, codes = self.add_norm(h, x2, self.norm1, self.ffn1.act_bits)
        h = self.ffn1.int8_matmul(*codes)
        ffn2 = self.ffn2
        if ffn2.input_activation == "gelu":
            codes = quantize_per_token_symmetric(h, ffn2.act_bits, "gelu")
        else:
            codes = quantize_per_token_symmetric(self.activation(h), ffn2.act_bits)
        out, codes = self.add_norm(ffn2.int8_matmul(*codes), x1, self.norm2, bits)
        out = out.view(b, t, hidden)
        if codes is not None:
            nxt._incoming.value = (out, None if out.is_inference() else out._version, *codes, bits)
        return out

    def layer_op_modules(self, fused_qkv=None) -> tuple:
        """The four packed layers of encoder_layer_int8, in its order (query, key and value as one)."""
        return (self.qkv._twin() if fused_qkv is None else fused_qkv, self.attention_dense, self.ffn1, self.ffn2)

    def layer_op_args(self, x, codes, attention_mask, bits: Optional[int], fused_qkv=None) -> dict:
        """encoder_layer_int8's arguments, in its order, for this layer on x (B, T, H), with codes (q,
        scales) of x or None, the codes of its output at ``bits`` (None: none); the GEMV layouts for few
        rows, as _PackedLinear.int8_matmul picks them. One loop and dictionary reads: this runs at every
        call, and attribute lookups on modules cost ~1 us each."""
        sa, n1, n2 = self.self_attention, self.norm1._parameters, self.norm2._parameters
        few_rows = x.shape[0] * x.shape[1] <= GEMV_MAX_ROWS
        packed, scales, biases, gemv, bits_, in_features, group_sizes, act_bits = ([] for _ in range(8))
        for m in self.layer_op_modules(fused_qkv):
            buffers = m._buffers
            packed.append(buffers["packed_weight"])
            scales.append(buffers["weight_scale"])
            biases.append(m._bias())
            gemv.append(m.gemv_layout() if few_rows else None)
            bits_.append(m.bits)
            in_features.append(m.kernel_in_features)
            group_sizes.append(m.group_size)
            act_bits.append(m.act_bits)
        return dict(
            x=x, x_codes=None if codes is None else codes[0], x_scales=None if codes is None else codes[1],
            attn_mask=attention_mask, num_heads=x.shape[2] // sa.attention_head_size, scale=sa.scaling,
            packed_weights=packed, weight_scales=scales, biases=biases, gemv_weights=gemv, bits=bits_,
            in_features=in_features, group_sizes=group_sizes, act_bits=act_bits,
            norm1_weight=n1.get("weight"), norm1_bias=n1.get("bias"), norm1_eps=self.norm1.eps,
            norm2_weight=n2.get("weight"), norm2_bias=n2.get("bias"), norm2_eps=self.norm2.eps, out_bits=bits or 0)

    def add_norm(self, h, residual, norm: nn.LayerNorm, bits: Optional[int]):
        """(layer_norm(h + residual), its codes at ``bits`` or None): bitops' kernel unless exact."""
        if self.exact or bits is None:
            out = F.layer_norm(h + residual, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            return out, None if bits is None else quantize_per_token_symmetric(out, bits)
        out, q, scale = _ADD_LAYER_NORM_INT8(h, residual, norm.weight, norm.bias, norm.eps, bits)
        return out, (q, scale)


_ADD_LAYER_NORM_INT8, _ATTENTION = ops.add_layer_norm_int8.default, ops.attention.default
_ENCODER_LAYER = ops.encoder_layer_int8.default
_ATTENTION_FUNCTIONS = None


def _all_attention_functions():
    """transformers' ALL_ATTENTION_FUNCTIONS, imported on first use and kept (an import statement per
    layer call cost ~1.6 us; transformers is imported already by any model that gets here)."""
    global _ATTENTION_FUNCTIONS
    if _ATTENTION_FUNCTIONS is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        _ATTENTION_FUNCTIONS = ALL_ATTENTION_FUNCTIONS
    return _ATTENTION_FUNCTIONS


def _only_idle_output_capture(modules) -> bool:
    """Whether every forward hook on ``modules`` is transformers' output capture with nothing to
    capture there now. transformers 5 installs those hooks on the first call that asks for attention
    weights and keeps them; they record only while a call that asked is running (hidden states are
    recorded on the layers themselves, which the fused path still returns through)."""
    hooks = [h for m in modules for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    if not all(getattr(h, "__module__", None) == "transformers.utils.output_capturing" for h in hooks):
        return False
    from transformers.utils.output_capturing import _active_collector

    active = _active_collector.get()
    return active is None or set(active) <= {"hidden_states", "_hidden_states_layers"}


def fuse_encoder_layers_(model: nn.Module, exact: bool = False) -> int:
    """Run each BERT-family encoder layer (BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT: the self-attention
    classes in ``PLAIN_SELF_ATTENTION``) whose linear layers are frozen packed layers (per-token
    dynamic activations) as one lean sequence of bitops ops in CPU inference, in place; returns how
    many layers. Applies :func:`fuse_qkv_` first (the query, key and value GEMM is one).

    A fused layer's call in eval mode with no gradient to keep (``torch.no_grad`` or
    ``torch.inference_mode``, or no parameter that requires one) on a float32 CPU input runs:
    quantize, the query/key/value GEMM, the model's attention function (``bitops.attention`` after
    :func:`use_attention_kernel_` and in kd's models, SDPA by default; a function that declares when it
    computes ``bitops.attention``, as those two do (``BITOPS_ATTENTION_WHEN``), has the op called
    directly then), quantize, GEMM, add & norm
    with the quantization after it, GEMM, the activation (inside the quantization after
    :func:`fuse_gelu_`), GEMM, add & norm, whose quantization serves the next layer's first GEMM. What
    goes is the Python of the eight submodule forwards around the ops (~15% of a 1-bit
    all-MiniLM-L6-v2 forward of 1 x 128 tokens on one core) and, with the add & norm on
    ``bitops.ops.add_layer_norm_int8``, three passes over the activations per norm. With the GELU fused
    and an attention function that runs ``bitops.attention``, the whole sequence is one call of
    ``bitops.ops.encoder_layer_int8`` (the same ops from C++, the same outputs bit for bit).

    ``exact=True`` keeps torch's LayerNorm and a separate quantization: the layer's own outputs bit
    for bit. By default bitops' LayerNorm differs from torch's by float rounding (~1e-7 relative), so
    an int8 code that sits on a rounding boundary may move by one, as with :func:`fuse_gelu_`.
    Every other call (training, gradients, attention weights asked for, cross-attention or a cache,
    another device or dtype, torch.compile, a hook on any submodule, a submodule replaced since (also
    by fuse_gelu_: fuse the GELUs first, or call this again), the "eager" attention implementation)
    runs the layer's own forward. Structure only: the state_dict is unchanged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
    fuse_qkv_(model)
    plans = {}
    for module in model.modules():
        plan = _EncoderLayerPlan.build(module, exact)
        if plan is not None:
            module.forward = plans[id(module)] = plan
    # Layers that follow each other in a ModuleList (an encoder's): the first hands the second its codes.
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            chain = [plans.get(id(m)) for m in module]
            for first, second in zip(chain, chain[1:]):
                if first is not None and second is not None:
                    first.next = second
    return len(plans)
