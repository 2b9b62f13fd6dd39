"""Distillation losses (XTC's one-stage KD; TinyBERT/TernaryBERT's terms).

* logits: soft cross-entropy ``-sum_c softmax(t/T)_c * log_softmax(s/T)_c``, mean over the batch
  (classification); MSE between the logits (regression);
* attention: MSE between pre-softmax attention scores (B, H, T, T) of student layer i and teacher
  layer ``layer_map[i]``, over the (query, key) pairs where both tokens are real (padding
  excluded, rather than TernaryBERT's zeroing of masked entries), summed over layers;
* hidden: MSE between hidden states (B, T, D), over real tokens, of the student's embedding output
  and layer outputs and the teacher's ``[0] + [t + 1 for t in layer_map]``, summed over layers.

All weights default to 1 and the temperature to 1 (XTC's values).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence

import torch
import torch.nn.functional as F


def _same_shape(a_name, a, b_name, b, layout):
    if a.shape != b.shape:
        raise ValueError(f"{a_name} has shape {tuple(a.shape)} and {b_name} {tuple(b.shape)}; expected the same {layout} shape")


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft cross-entropy of (B, C) logits at ``temperature``: a scalar, mean over B."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; expected > 0")
    _same_shape("student_logits", student_logits, "teacher_logits", teacher_logits, "(B, C)")
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def attention_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over heads and (query, key) pairs of real tokens. Scores (B, H, T, T); mask (B, T) 0/1."""
    _same_shape("student_scores", student_scores, "teacher_scores", teacher_scores, "(B, H, T, T)")
    m = attention_mask.to(torch.bool)
    pair = (m[:, :, None] & m[:, None, :])[:, None].expand_as(student_scores)
    diff = (student_scores.float() - teacher_scores.detach().float())[pair]
    return (diff * diff).mean()


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens and features. Hidden (B, T, D); mask (B, T) 0/1."""
    _same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden, "(B, T, D)")
    m = attention_mask.to(torch.bool)
    diff = (student_hidden.float() - teacher_hidden.detach().float())[m]
    return (diff * diff).mean()


@dataclass
class KDWeights:
    """Weights of the three :func:`kd_loss` terms (>= 0) and the softmax temperature of the logits term (> 0)."""

    logits: float = 1.0
    attention: float = 1.0
    hidden: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        for name in ("logits", "attention", "hidden"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"KD weight {name}={v}; expected a finite value >= 0")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}; expected a finite value > 0")


def kd_loss(
    student_out, teacher_out, attention_mask: torch.Tensor, layer_map: Sequence[int], task_type: str, w: KDWeights
) -> Dict[str, torch.Tensor]:
    """One-stage KD loss. ``*_out``: (logits, hidden states, attention scores) as returned by
    :func:`kd.models.forward_with_internals`. Returns {"loss", "logits", "attention", "hidden"}."""
    s_logits, s_hidden, s_scores = student_out
    t_logits, t_hidden, t_scores = teacher_out
    if len(s_scores) != len(layer_map) or len(s_hidden) != len(layer_map) + 1:
        raise ValueError(
            f"student has {len(s_scores)} attention layers and {len(s_hidden)} hidden states; "
            f"expected {len(layer_map)} and {len(layer_map) + 1} for layer_map={list(layer_map)}"
        )
    zero = s_logits.new_zeros(())
    if task_type == "regression":
        logit_term = F.mse_loss(s_logits.float().squeeze(-1), t_logits.detach().float().squeeze(-1))
    else:
        logit_term = soft_cross_entropy(s_logits, t_logits, w.temperature)
    att = zero
    hid = zero
    if w.attention:
        att = sum((attention_mse(s_scores[i], t_scores[t], attention_mask) for i, t in enumerate(layer_map)), zero)
    if w.hidden:
        teacher_idx = [0] + [t + 1 for t in layer_map]
        hid = sum((hidden_mse(s_hidden[i], t_hidden[t], attention_mask) for i, t in enumerate(teacher_idx)), zero)
    loss = w.logits * logit_term + w.attention * att + w.hidden * hid
    return {"loss": loss, "logits": logit_term.detach(), "attention": att.detach(), "hidden": hid.detach()}


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Fine-tuning loss on gold labels: cross-entropy, or MSE for regression."""
    if task_type == "regression":
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)
