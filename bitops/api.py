"""``quantize_``: swap a model's nn.Linear modules for packed layers in place, torchao style::

    import bitops
    bitops.quantize_(model, bitops.BinaryConfig(act_bits=8))              # every Linear
    bitops.quantize_(model, bitops.TernaryConfig(), filter_fn=lambda m, name: "attention" in name)
    bitops.fuse_gelu_(model)   # inference: each FFN's GELU runs inside the next layer's quantization
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from torch import nn

import warnings

from .nn import BinaryLinear, TernaryLinear, _PackedLinear, check_layer_options


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
