"""kd.hf.DistillationTrainer: the HF Trainer example runs end to end (teacher fine-tuning, KD of a
1-bit student, packed save_pretrained, from_pretrained) on a tiny random-init BERT and MR."""
import importlib.util
import math
import os

import pytest
import torch
from transformers import TrainingArguments

import kd
from kd.models import QuantSpec, load_classifier, quantize_student, reduce_layers

from kd_helpers import mr_subset, one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "hf_trainer_distill.py")


def load_example():
    spec = importlib.util.spec_from_file_location("hf_trainer_distill", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_two_steps(tmp_path):
    base = save_tiny_base(str(tmp_path / "base"), layers=2, dropout=0.0)
    res = load_example().main([
        "--out", str(tmp_path / "run"), "--base", base, "--student-layers", "1", "--max-steps", "2",
        "--batch-size", "8", "--max-length", "32", "--train-limit", "32", "--eval-limit", "16",
    ])
    trainer = res["trainer"]
    assert trainer.state.global_step == 2
    losses = [r[k] for r in trainer.state.log_history for k in ("train_loss", "eval_loss") if k in r]
    assert len(losses) >= 2 and all(math.isfinite(v) and v > 0 for v in losses), trainer.state.log_history
    # The packed model predicts after the reload exactly as the frozen student did.
    assert res["reloaded"]["eval_accuracy"] == pytest.approx(res["distilled"]["eval_accuracy"])
    assert sorted(os.listdir(res["path"]))[:2] == ["config.json", "model.safetensors"]


def test_trainer_checks_its_arguments(tmp_path):
    base = save_tiny_base(str(tmp_path / "base"), layers=2, dropout=0.0)
    teacher = load_classifier(base)
    student = quantize_student(reduce_layers(teacher, [1]), QuantSpec())
    args = TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"layer_map=\[5\]; expected 1 teacher layer indices in \[0, 2\)"):
        kd.hf.DistillationTrainer(model=student, teacher=teacher, layer_map=[5], args=args)
    sdpa = load_classifier(base)
    sdpa.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="teacher uses attn_implementation='sdpa'; the attention loss needs"):
        kd.hf.DistillationTrainer(model=student, teacher=sdpa, args=args)
    trainer = kd.hf.DistillationTrainer(model=student, teacher=teacher, args=args)
    assert trainer.layer_map == [1]
    with pytest.raises(ValueError, match=r"batch lacks \['token_type_ids'\]"):
        trainer.compute_loss(student, {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long)})
