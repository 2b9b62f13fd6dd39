"""What every packed module (BinaryLinear, TernaryLinear, BinaryEmbedding) does the same way when it
freezes and when it is saved and loaded: one place for the frozen buffers, the version check of the
extra state, and loading a frozen state_dict into a module that is still training."""
from __future__ import annotations

import torch

STATE_VERSION = 1


class FrozenPackedState:
    """Mixin for an nn.Module with a latent ``weight`` parameter that freezes to ``packed_weight`` and
    ``weight_scale`` buffers. Subclasses define ``packed_weight_and_scale()``, ``get_extra_state()``
    (including "version"), ``_state_kind`` (named in errors) and ``_checked_state_keys`` (extra-state
    entries that must match between the saved module and this one)."""

    _state_kind = "packed module"
    _checked_state_keys: tuple = ()
    # The dtype of a frozen module's float results where no float input sets it (an embedding's rows):
    # float32, or what the model was last cast to (model.half() -> float16). Not saved: structure.
    output_dtype: torch.dtype = torch.float32

    def _frozen_buffers(self, packed: torch.Tensor, scale: torch.Tensor) -> None:
        if "weight" in self._parameters:
            latent = self._parameters["weight"]
            if latent is not None and latent.is_floating_point():
                self.output_dtype = latent.dtype  # a half model's embedding keeps giving half rows once frozen
            del self._parameters["weight"]
        self.register_buffer("packed_weight", packed)
        self.register_buffer("weight_scale", scale)
        self.frozen = True

    @torch.no_grad()
    def freeze(self):
        """Drop the latent weights, keep the packed words and scales as buffers. Returns self."""
        if not self.frozen:
            self._frozen_buffers(*self.packed_weight_and_scale())
        return self

    def _apply(self, fn, recurse=True):
        # model.half(), .to(torch.bfloat16), .double(): the scales stay float32, the dtype every kernel
        # takes (a trip through half would also round them); they follow the model's device. The packed
        # words are integers, which dtype casts leave alone anyway.
        scale = self._buffers.get("weight_scale")
        if scale is None or not scale.is_floating_point():
            return super()._apply(fn, recurse)
        self._buffers["weight_scale"] = None  # skipped by nn.Module._apply
        try:
            out = super()._apply(fn, recurse)
            probe = fn(torch.empty(0, device=scale.device))  # where and as what a float32 tensor goes
            scale, self.output_dtype = scale.to(probe.device), probe.dtype
        finally:
            self._buffers["weight_scale"] = scale
        return out

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{self._state_kind} state version {got!r}; expected {STATE_VERSION}")
        mine = self.get_extra_state()
        for key in self._checked_state_keys:
            if state.get(key) != mine.get(key):  # an absent key (e.g. "halves" of an unsplit layer) is None
                raise ValueError(
                    f"state_dict was saved from a {self._state_kind} with {key}={state.get(key)!r}; "
                    f"this one has {key}={mine.get(key)!r}"
                )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A frozen state_dict loads into a training module too: it takes the frozen layout first.
        if prefix + "packed_weight" in state_dict and not self.frozen:
            device = self.weight.device
            self._frozen_buffers(
                torch.empty_like(state_dict[prefix + "packed_weight"], device=device),
                torch.empty_like(state_dict[prefix + "weight_scale"], device=device),
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
