"""Task metrics: accuracy, binary F1, Matthews correlation (classification); Pearson and Spearman
correlation (regression). Inputs are 1-D tensors; outputs plain floats."""
from __future__ import annotations

import math
from typing import Dict

import torch

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Fraction of equal entries of two (N,) class-index tensors."""
    return float((pred == gold).float().mean())


def f1_binary(pred: torch.Tensor, gold: torch.Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` (GLUE's F1 for MRPC/QQP); 0 when it is never predicted nor gold."""
    tp = int(((pred == positive) & (gold == positive)).sum())
    fp = int(((pred == positive) & (gold != positive)).sum())
    fn = int(((pred != positive) & (gold == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def mcc(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Matthews correlation, multi-class form (Gorodkin's R_K); 0 when undefined."""
    k = int(max(pred.max(), gold.max())) + 1
    cm = torch.zeros(k, k, dtype=torch.float64)
    cm.index_put_((gold.long(), pred.long()), torch.ones(len(gold), dtype=torch.float64), accumulate=True)
    t, p = cm.sum(1), cm.sum(0)
    c, s = cm.trace(), cm.sum()
    den = math.sqrt(float(s * s - (p * p).sum())) * math.sqrt(float(s * s - (t * t).sum()))
    return float(c * s - (t * p).sum()) / den if den else 0.0


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (N,) float tensors (0.0 when either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two (N,) float tensors (ties get their mean rank)."""
    return pearson(_ranks(x), _ranks(y))


def compute(task_type: str, logits: torch.Tensor, gold: torch.Tensor) -> Dict[str, float]:
    """All metrics of the task type from (N, C) logits and (N,) gold labels."""
    if task_type == "regression":
        pred = logits.squeeze(-1)
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    pred = logits.argmax(-1)
    return {"accuracy": accuracy(pred, gold), "f1": f1_binary(pred, gold), "mcc": mcc(pred, gold)}


def default_metric(task_type: str) -> str:
    """The metric that picks the best checkpoint: "pearson" (regression) or "accuracy"."""
    return "pearson" if task_type == "regression" else "accuracy"
