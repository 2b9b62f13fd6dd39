"""``quantize_``: swap a model's nn.Linear modules for packed layers in place, torchao style::

    import bitops
    bitops.quantize_(model, bitops.BinaryConfig(act_bits=8))              # every Linear
    bitops.quantize_(model, bitops.TernaryConfig(), filter_fn=lambda m, name: "attention" in name)
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
