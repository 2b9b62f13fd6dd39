"""The recipes: teacher fine-tuning and XTC (Wu et al., NeurIPS 2022) as DeepSpeed Compression runs it.

XTC: [task teacher] -> student initialised by layer reduction (copies of teacher layers
``layer_map``), trained in FP32 with one-stage KD -> the same student quantized (1-bit W1A8 by
default: :class:`kd.models.QuantSpec`), trained again with one-stage KD, for longer. The
no-reduction variant skips the first stage and quantizes a copy of the whole teacher.

Folder layout written under ``out_dir``::

    teacher:        config.json, model.safetensors, tokenizer files, kd_task.json, train/
    xtc:            fp32-student/ (HF folder as above; absent without reduction)
                    1bit-student/ (student.json + train/best_model.pt: latent weights)
                    export/       (the frozen packed model: kd.export)

BinaryBERT and TernaryBERT: :mod:`kd.binarybert`.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from transformers import AutoTokenizer, BertConfig

from . import trainer as T
from .checkpoint import load_checkpoint
from .data import Encoded, TaskData
from .export import export_student
from .losses import KDWeights, kd_loss, task_loss
from .models import (QuantSpec, check_model_source, build_student, forward_with_internals, load_classifier, quantize_student,
                     reduce_layers, skip_layers)

TASK_FILE = "kd_task.json"
STUDENT_FILE = "student.json"


def _encode(data: TaskData, tokenizer, max_length: int):
    return Encoded(data.split("train"), tokenizer, max_length, data.task_type), Encoded(data.split("dev"), tokenizer, max_length, data.task_type)


def _save_hf(model, tokenizer, out_dir: str, info: dict) -> None:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, TASK_FILE), "w") as f:
        json.dump(info, f, indent=1)


def read_task_info(model_dir: str) -> dict:
    """The task record (task, task_type, labels, role, ...) that `bitbert teacher` / `distill` wrote in ``model_dir``."""
    path = os.path.join(model_dir, TASK_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected a folder written by `bitbert teacher` or `bitbert distill`")
    with open(path) as f:
        return json.load(f)


def finetune_teacher(data: TaskData, base: str, out_dir: str, cfg: T.TrainConfig, max_length: int = 128, resume: bool = False) -> dict:
    """Fine-tune the BERT at ``base`` on ``data`` (cross-entropy / MSE); save the best to ``out_dir``."""
    check_model_source(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    T.set_seed(cfg.seed)  # the fresh classifier head is drawn from this seed
    model = load_classifier(base, data.num_labels, data.task_type)
    train_enc, dev_enc = _encode(data, tokenizer, max_length)

    def loss_fn(net, batch):
        logits = net(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]).logits
        return {"loss": task_loss(logits, batch["labels"], data.task_type)}

    result = T.train(model, train_enc, dev_enc, loss_fn, cfg, os.path.join(out_dir, "train"), data.task_type, resume=resume, desc="teacher")
    if _is_main():
        _save_hf(model.cpu(), tokenizer, out_dir, {**data.info(), "role": "teacher", "max_length": max_length, "best": result["best"]})
    return result


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def kd_loss_fn(teacher, layer_map: List[int], task_type: str, weights: KDWeights):
    """``loss_fn(student, batch)`` for :func:`kd.trainer.train`: the teacher runs without grad."""

    def loss_fn(net, batch):
        with torch.no_grad():
            t_out = forward_with_internals(teacher, batch)
        s_out = forward_with_internals(net, batch)
        return kd_loss(s_out, t_out, batch["attention_mask"], layer_map, task_type, weights)

    return loss_fn


@dataclass
class XTCConfig:
    """XTC's choices. ``student_layers`` 0 means no reduction (all teacher layers, quantized);
    ``teacher_layers`` overrides the skip rule. Stage budgets are TrainConfigs."""

    student_layers: int = 0
    teacher_layers: Optional[List[int]] = None
    spec: QuantSpec = field(default_factory=QuantSpec)
    weights: KDWeights = field(default_factory=KDWeights)
    fp32: T.TrainConfig = field(default_factory=T.TrainConfig)
    quant: T.TrainConfig = field(default_factory=T.TrainConfig)
    max_length: int = 128
    quant_dir: str = "1bit-student"  # folder of the quantized student ("2bit-student" for TernaryBERT)
    # A quantized student folder of an earlier run (its 1bit-student/): the quantized stage starts
    # from its best weights, with this run's schedule and losses, and the FP32 stage is skipped.
    # Its quantization and layer map must be this run's. Continues a run with a longer or a
    # different schedule, or adds a stage (e.g. logits only) after one.
    init_student: Optional[str] = None


def xtc(data: TaskData, teacher_dir: str, out_dir: str, cfg: XTCConfig, resume: bool = False) -> dict:
    """Run XTC from a fine-tuned teacher folder; returns {"layer_map", "fp32": result, "quant": result, "export": path}."""
    teacher = load_classifier(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher.eval().requires_grad_(False)
    device = T.resolve_device(cfg.quant.device)
    teacher.to(device)
    train_enc, dev_enc = _encode(data, tokenizer, cfg.max_length)
    n_teacher = teacher.config.num_hidden_layers
    results = {}
    if cfg.init_student:
        student, layer_map = _init_student(cfg, n_teacher)
    elif cfg.student_layers or cfg.teacher_layers:
        layer_map = list(cfg.teacher_layers) if cfg.teacher_layers else skip_layers(n_teacher, cfg.student_layers)
        student = reduce_layers(teacher.cpu(), layer_map)
        teacher.to(device)
        results["fp32"] = T.train(
            student, train_enc, dev_enc, kd_loss_fn(teacher, layer_map, data.task_type, cfg.weights), cfg.fp32,
            os.path.join(out_dir, "fp32-student", "train"), data.task_type, resume=resume and _done_or_started(out_dir, "fp32-student"),
            desc="fp32 student",
        )
        if _is_main():
            _save_hf(student.cpu(), tokenizer, os.path.join(out_dir, "fp32-student"),
                     {**data.info(), "role": "fp32-student", "layer_map": layer_map, "max_length": cfg.max_length, "best": results["fp32"]["best"]})
    else:
        layer_map = list(range(n_teacher))
        student = copy.deepcopy(teacher.cpu())
        student.requires_grad_(True)
        teacher.to(device)
    student.cpu()
    if not cfg.init_student:
        quantize_student(student, cfg.spec)
    qdir = os.path.join(out_dir, cfg.quant_dir)
    results["quant"] = T.train(
        student, train_enc, dev_enc, kd_loss_fn(teacher, layer_map, data.task_type, cfg.weights), cfg.quant,
        os.path.join(qdir, "train"), data.task_type, resume=resume and _done_or_started(out_dir, cfg.quant_dir),
        desc=f"{cfg.quant_dir} (KD)",
    )
    results["layer_map"] = layer_map
    if _is_main():
        info = {**data.info(), "role": "quantized-student", "layer_map": layer_map, "max_length": cfg.max_length, "best": results["quant"]["best"]}
        write_student_dir(qdir, student, cfg.spec, tokenizer, info)
        results["export"] = export_student(student, cfg.spec, tokenizer, os.path.join(out_dir, "export"), info, layer_map)
    return results


def _init_student(cfg: XTCConfig, n_teacher: int):
    """(quantized student with the best weights of ``cfg.init_student``, its layer map), checked against cfg."""
    student, spec, _, info = load_student_dir(cfg.init_student)
    if spec != cfg.spec:
        raise ValueError(f"init_student={cfg.init_student!r} is quantized as {spec}; this run asks for {cfg.spec}: "
                         f"expected the same quantization")
    layer_map = list(info["layer_map"])
    if cfg.student_layers or cfg.teacher_layers:
        want = list(cfg.teacher_layers) if cfg.teacher_layers else skip_layers(n_teacher, cfg.student_layers)
        if want != layer_map:
            raise ValueError(f"init_student={cfg.init_student!r} has the layer map {layer_map}; this run asks for {want}")
    if max(layer_map) >= n_teacher:
        raise ValueError(f"init_student={cfg.init_student!r} has the layer map {layer_map}; the teacher has {n_teacher} layers")
    student.requires_grad_(True)
    return student, layer_map


def _done_or_started(out_dir: str, stage: str) -> bool:
    return os.path.exists(os.path.join(out_dir, stage, "train", T.CHECKPOINT))


def write_student_dir(qdir: str, student, spec: QuantSpec, tokenizer, info: dict) -> None:
    """student.json (BERT config, quant spec, task) + tokenizer next to train/best_model.pt."""
    os.makedirs(qdir, exist_ok=True)
    with open(os.path.join(qdir, STUDENT_FILE), "w") as f:
        json.dump({"bert_config": student.config.to_dict(), "quant": spec.to_dict(), "task": info}, f, indent=1)
    tokenizer.save_pretrained(qdir)


def load_student_dir(qdir: str):
    """(quantized training-state model with the best weights, spec, tokenizer, task info)."""
    path = os.path.join(qdir, STUDENT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected the 1bit-student folder written by `bitbert distill`")
    with open(path) as f:
        meta = json.load(f)
    spec = QuantSpec(**meta["quant"])
    model = build_student(BertConfig.from_dict(meta["bert_config"]), spec, frozen=False)
    model.load_state_dict(load_checkpoint(os.path.join(qdir, "train", T.BEST)))
    return model, spec, AutoTokenizer.from_pretrained(qdir), meta["task"]


def distill(data: TaskData, teacher_dir: str, out_dir: str, cfg, resume: bool = False) -> dict:
    """``bitbert distill`` from Python: the pipeline follows the config's type.

    :class:`XTCConfig` runs :func:`xtc` (a config from :func:`kd.binarybert.ternarybert_config` is
    TernaryBERT, an XTC run at 2 bits); :class:`kd.binarybert.BinaryBERTConfig` runs
    :func:`kd.binarybert.binarybert`. Returns the pipeline's result dict (its ``"export"`` is the
    export folder)."""
    from .binarybert import BinaryBERTConfig, binarybert

    if isinstance(cfg, BinaryBERTConfig):
        return binarybert(data, teacher_dir, out_dir, cfg, resume)
    if isinstance(cfg, XTCConfig):
        return xtc(data, teacher_dir, out_dir, cfg, resume)
    raise TypeError(f"cfg is a {type(cfg).__name__}; expected kd.XTCConfig (xtc, ternarybert) or kd.BinaryBERTConfig")
