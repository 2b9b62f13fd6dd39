"""``bitbert compare``: XTC, BinaryBERT and TernaryBERT side by side, on the same data, the same task
teacher and the same budget of optimizer steps, into one table (CSV + markdown).

The budget: each pipeline gets ``budget_steps`` optimizer steps in all, at the same batch size,
shared among its stages by fixed fractions (:func:`budget_plan`); learning rates and everything
else are each pipeline's reference defaults. Columns, per pipeline and for the FP32 teacher:
dev score of the kept checkpoint, test score of the exported model reloaded from disk, the size of
the exported ``model.safetensors`` (the teacher's own file for the teacher), wall-clock training
time, and CPU inference latency (median over single sentences, batch 1, of the reloaded model,
at the torch thread count of the run).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from . import metrics as M
from . import trainer as T
from .binarybert import BinaryBERTConfig, binarybert, ternarybert, ternarybert_config
from .data import Encoded, TaskData
from .export import WEIGHTS_FILE, load_exported
from .models import QuantSpec, load_classifier
from .pipelines import XTCConfig, xtc

PIPELINES = ("xtc", "binarybert", "ternarybert")
CSV_FILE = "compare.csv"
MD_FILE = "compare.md"

# Stage shares of the step budget. XTC and TernaryBERT: the FP32 reduction stage (with reduction)
# and the quantized stage, half each. BinaryBERT: with reduction FP32 I, FP32 II, ternary I,
# ternary II, then the split model twice as long as one ternary stage (its last, longest stage in
# the reference scripts); without reduction the FP32 stages drop out.
SHARES = {
    ("xtc", True): {"fp32": 1, "quant": 1},
    ("xtc", False): {"quant": 1},
    ("binarybert", True): {"fp32_stage1": 1, "fp32_stage2": 1, "ternary_stage1": 1, "ternary_stage2": 1, "split_stage2": 2},
    ("binarybert", False): {"ternary_stage1": 1, "ternary_stage2": 1, "split_stage2": 2},
}
SHARES[("ternarybert", True)] = SHARES[("xtc", True)]
SHARES[("ternarybert", False)] = SHARES[("xtc", False)]


def budget_plan(pipeline: str, total: int, reduced: bool) -> Dict[str, int]:
    """Steps per stage summing to ``total`` (each stage at least 1)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline={pipeline!r}; expected one of {PIPELINES}")
    shares = SHARES[(pipeline, reduced)]
    if total < len(shares):
        raise ValueError(f"budget_steps={total}; expected at least {len(shares)} for the {len(shares)} stages of {pipeline}")
    weight = sum(shares.values())
    plan = {stage: max(1, total * s // weight) for stage, s in shares.items()}
    last = list(plan)[-1]
    plan[last] += total - sum(plan.values())
    return plan


@dataclass
class CompareConfig:
    """``budget_steps`` per pipeline; ``train``: the shared settings (batch size, seed, device...;
    its epochs/lr are replaced per stage); ``student_layers`` as XTC's (0: no reduction)."""

    budget_steps: int = 600
    student_layers: int = 0
    pipelines: Sequence[str] = PIPELINES
    train: T.TrainConfig = field(default_factory=T.TrainConfig)
    max_length: int = 128
    latency_examples: int = 32

    def __post_init__(self):
        bad = [p for p in self.pipelines if p not in PIPELINES]
        if bad or not self.pipelines:
            raise ValueError(f"pipelines={list(self.pipelines)}; expected a non-empty subset of {PIPELINES}")


def _stage_cfg(cfg: CompareConfig, steps: int, lr: float, warmup: float) -> T.TrainConfig:
    return dataclasses.replace(cfg.train, max_steps=steps, lr=lr, warmup=warmup)


def _run(name: str, data: TaskData, teacher_dir: str, out: str, cfg: CompareConfig) -> dict:
    reduced = cfg.student_layers > 0
    plan = budget_plan(name, cfg.budget_steps, reduced)
    if name == "xtc":
        # XTC's defaults (DeepSpeed's scripts): lr 5e-5, one warm-up epoch of 18 (1/18); the
        # project's default student spec (1-bit, per-row scales, 1-bit pooler as the CLI's).
        xcfg = XTCConfig(student_layers=cfg.student_layers, spec=QuantSpec(pooler=1), max_length=cfg.max_length,
                         fp32=_stage_cfg(cfg, plan.get("fp32", 1), 5e-5, 1 / 18),
                         quant=_stage_cfg(cfg, plan["quant"], 5e-5, 1 / 18))
        return xtc(data, teacher_dir, out, xcfg)
    if name == "ternarybert":
        tcfg = ternarybert_config(cfg.student_layers, max_length=cfg.max_length,
                                  fp32=_stage_cfg(cfg, plan.get("fp32", 1), 2e-5, 0.1),
                                  quant=_stage_cfg(cfg, plan["quant"], 2e-5, 0.1))
        return ternarybert(data, teacher_dir, out, tcfg)
    bcfg = BinaryBERTConfig(
        student_layers=cfg.student_layers, max_length=cfg.max_length,
        fp32_stage1=_stage_cfg(cfg, plan.get("fp32_stage1", 1), 5e-5, 0.1),
        fp32_stage2=_stage_cfg(cfg, plan.get("fp32_stage2", 1), 5e-5, 0.1),
        ternary_stage1=_stage_cfg(cfg, plan["ternary_stage1"], 2.5e-5, 0.1),
        ternary_stage2=_stage_cfg(cfg, plan["ternary_stage2"], 1e-5, 0.1),
        split_stage2=_stage_cfg(cfg, plan["split_stage2"], 5e-5, 0.1),
    )
    return binarybert(data, teacher_dir, out, bcfg)


def latency_ms(model: torch.nn.Module, enc: Encoded, n: int) -> float:
    """Median wall time (ms) of one forward at batch 1 over the first ``n`` examples of ``enc``."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(min(n, len(enc)) + 2):
            b = enc.batch([i % len(enc)])
            t0 = time.perf_counter()
            model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"])
            if i >= 2:  # the first two calls warm up allocators and caches
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _eval_split(data: TaskData) -> str:
    return "test" if data.test else "dev"


def _row(name: str, model, tok, data: TaskData, cfg: CompareConfig, size: int, train_s: Optional[float], dev_best) -> dict:
    metric = M.default_metric(data.task_type)
    split = _eval_split(data)
    enc = Encoded(data.split(split), tok, cfg.max_length, data.task_type)
    score = T.evaluate(model, enc, data.task_type, cfg.train.eval_batch_size)[metric]
    return {
        "model": name, f"dev_{metric}": None if dev_best is None else round(dev_best[metric], 4),
        f"{split}_{metric}": round(score, 4), "size_mb": round(size / 2**20, 3),
        "train_s": None if train_s is None else round(train_s, 1),
        "latency_ms": round(latency_ms(model, enc, cfg.latency_examples), 2),
    }


def compare(data: TaskData, teacher_dir: str, out_dir: str, cfg: CompareConfig) -> List[dict]:
    """Run the pipelines, write ``compare.csv`` and ``compare.md`` in ``out_dir``; returns the rows."""
    from transformers import AutoTokenizer

    os.makedirs(out_dir, exist_ok=True)
    teacher = load_classifier(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher_size = os.path.getsize(os.path.join(teacher_dir, WEIGHTS_FILE))
    rows = [_row("teacher (FP32)", teacher, tok, data, cfg, teacher_size, None, None)]
    for name in cfg.pipelines:
        t0 = time.perf_counter()
        res = _run(name, data, teacher_dir, os.path.join(out_dir, name), cfg)
        train_s = time.perf_counter() - t0
        model, tok2, _ = load_exported(res["export"])
        size = os.path.getsize(os.path.join(res["export"], WEIGHTS_FILE))
        rows.append(_row(name, model, tok2, data, cfg, size, train_s, res["quant"]["best"]["metrics"]))
    for r in rows:
        r["smaller_than_teacher"] = round(teacher_size / 2**20 / r["size_mb"], 1)
    budget = (f"budget: {cfg.budget_steps} optimizer steps per pipeline at batch {cfg.train.batch_size}, max length "
              f"{cfg.max_length}, student layers {cfg.student_layers or 'all'}; "
              + "; ".join(f"{p}: " + ", ".join(f"{s} {n}" for s, n in budget_plan(p, cfg.budget_steps, cfg.student_layers > 0).items())
                          for p in cfg.pipelines)
              + f"; {len(data.train)} training examples; torch threads {torch.get_num_threads()}")
    write_table(rows, out_dir, budget)
    return rows


def markdown(rows: List[dict], budget: str) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + f"\n\n{budget}\n"


def write_table(rows: List[dict], out_dir: str, budget: str) -> None:
    with open(os.path.join(out_dir, CSV_FILE), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, MD_FILE), "w") as f:
        f.write(markdown(rows, budget))
