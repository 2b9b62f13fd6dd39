"""``quantize_``: swap a model's nn.Linear modules for packed layers in place, torchao style::

    import bitops
    bitops.quantize_(model, bitops.BinaryConfig(act_bits=8))              # every Linear
    bitops.quantize_(model, bitops.TernaryConfig(), filter_fn=lambda m, name: "attention" in name)
    bitops.fuse_gelu_(model)   # inference: each FFN's GELU runs inside the next layer's quantization
    bitops.fuse_qkv_(model)    # inference: each attention's query, key and value run as one GEMM
    bitops.use_attention_kernel_(model)  # transformers models: attention on bitops' CPU kernel in inference
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from torch import nn

import warnings

from .nn import BinaryLinear, SharedInputGroup, TernaryLinear, _PackedLinear, check_layer_options


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
