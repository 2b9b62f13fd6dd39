"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is XTC's one-stage KD
(:func:`kd.losses.kd_loss`) between the trained student and a frozen teacher. Import it as
``kd.hf.DistillationTrainer`` (this module is loaded on first use: transformers' Trainer is slow to
import)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import Trainer
from transformers.modeling_outputs import SequenceClassifierOutput

from .losses import KDWeights, kd_loss
from .models import ATTN_IMPLEMENTATION, forward_with_internals, skip_layers

INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class DistillationTrainer(Trainer):
    """Trainer for a student (``model``, e.g. a BERT quantized by :func:`kd.models.quantize_student`
    or :func:`bitops.quantize_`) distilled from ``teacher``.

    Args (besides Trainer's): ``teacher``: a BertForSequenceClassification, kept in eval mode without
    gradients on the training device; ``layer_map``: teacher layer (0-indexed) of each student layer,
    default :func:`kd.models.skip_layers` (identity when the depths match); ``task_type``:
    "classification" (soft cross-entropy on logits) or "regression" (MSE); ``kd_weights``:
    :class:`kd.losses.KDWeights` (logits / attention / hidden weights, temperature).

    Batches: dicts with ``input_ids``, ``token_type_ids``, ``attention_mask`` (int64, (B, T)) and
    ``labels`` (B,) for evaluation. The attention term reads pre-softmax scores, so with a non-zero
    attention weight both models must use kd's capturing attention
    (``attn_implementation=kd.models.ATTN_IMPLEMENTATION``; :func:`kd.models.load_classifier` and
    :func:`kd.models.reduce_layers` set it).

    The KD loss is a per-batch mean, so gradient accumulation divides it by the number of steps.
    Checkpoints hold the student's state as it trains (latent float weights, no packed-layer
    extra state); the packed model is written by freezing it (:func:`kd.models.freeze_student`),
    then :func:`kd.hf.attach` and ``save_pretrained``, or by :func:`kd.export.export_student`.
    """

    def __init__(
        self,
        *args,
        teacher: torch.nn.Module,
        layer_map: Optional[Sequence[int]] = None,
        task_type: str = "classification",
        kd_weights: Optional[KDWeights] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if task_type not in ("classification", "regression"):
            raise ValueError(f"task_type={task_type!r}; expected 'classification' or 'regression'")
        self.kd_weights = kd_weights or KDWeights()
        n_student, n_teacher = self.model.config.num_hidden_layers, teacher.config.num_hidden_layers
        self.layer_map = list(layer_map) if layer_map is not None else skip_layers(n_teacher, n_student)
        if len(self.layer_map) != n_student or not all(0 <= t < n_teacher for t in self.layer_map):
            raise ValueError(
                f"layer_map={self.layer_map}; expected {n_student} teacher layer indices in [0, {n_teacher})"
            )
        if self.kd_weights.attention:
            for name, m in (("model", self.model), ("teacher", teacher)):
                if m.config._attn_implementation != ATTN_IMPLEMENTATION:
                    raise ValueError(
                        f"{name} uses attn_implementation={m.config._attn_implementation!r}; the attention loss needs "
                        f"{ATTN_IMPLEMENTATION!r} (model.set_attn_implementation(kd.models.ATTN_IMPLEMENTATION)) or kd_weights.attention=0"
                    )
        self.task_type = task_type
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides it for gradient accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """KD loss of the batch (a scalar); with ``return_outputs`` also the student's logits (B, C)."""
        missing = [k for k in INPUT_KEYS if k not in inputs]
        if missing:
            raise ValueError(f"batch lacks {missing}; expected {list(INPUT_KEYS)} (tokenize with return_token_type_ids=True)")
        with torch.no_grad():
            t_out = forward_with_internals(self.teacher, inputs)
        s_out = forward_with_internals(model, inputs)
        losses = kd_loss(s_out, t_out, inputs["attention_mask"], self.layer_map, self.task_type, self.kd_weights)
        if return_outputs:
            return losses["loss"], SequenceClassifierOutput(loss=losses["loss"], logits=s_out[0])
        return losses["loss"]

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        # Packed layers put their format record (a dict) in the state_dict; safetensors holds tensors.
        state_dict = self.model.state_dict() if state_dict is None else state_dict
        super()._save(output_dir, {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
