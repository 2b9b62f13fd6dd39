"""BinaryBERT's multi-stage pipeline (Bai et al., ACL 2021) and TernaryBERT (Zhang et al., EMNLP 2020).

``binarybert`` (the left half of the project's seed figure; ``../shared/reference/algorithms.md``):

1. optional General KD: a reduced FP32 student (layers of the base model, XTC's skip rule) learns
   the base model's hidden states and attention scores on unlabeled text (default: the tweets,
   Amazon and NYT snippets of the MR archive plus the task's training texts; or a text file);
2. task FP32 student (only with layer reduction): Stage-I KD (hidden + attention) then Stage-II
   KD (logits) from the task teacher. Without general KD the reduced student starts from the
   task teacher's layers; without reduction the teacher itself is the FP32 model;
3. ternary student: the FP32 student with TWN weights (per matrix by default, as the reference),
   ternary word embeddings (per row) and pooler, 8-bit activations with a learnable clip (PACT) or
   4-bit with LSQ; Stage-I then Stage-II KD;
4. Ternary Weight Splitting (:mod:`bitops.tws`): every ternary module becomes two 1-bit halves
   that compute the same function; the split model's dev score is recorded before training;
5. Stage-II KD of the split 1-bit model (``split_stage1`` also runs Stage I first, as the
   reference scripts can).

Stage I ("intermediate") keeps the final weights: its loss has no task metric to select on (the
trainer evaluates once, at its end). Stage II keeps the best dev checkpoint, as XTC's stages do.

``ternarybert``: XTC's one-stage joint KD (logits + attention + hidden) of a ternary W2A8 copy of
the teacher, TWN per matrix, 8-bit activations clipped at a learnable +-2.5 (TernaryBERT's clip is
fixed at 2.5); exported packed at 2 bits. Attention matmuls stay in float (TernaryBERT also
quantizes Q, K, the attention probabilities and V: not done here).

Folders under ``out_dir`` (binarybert)::

    general/            general-KD student (HF folder) and its train/ log    (with general KD)
    fp32-student/       task FP32 student, stage1/ and train/ (stage 2)      (with reduction)
    ternary-student/    student.json, stage1/, train/best_model.pt          (bitbert export reads it)
    1bit-student/       the split model: student.json, [stage1/,] train/best_model.pt
    export/             the frozen packed split model (kd.export)
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import List, Optional

import bitops
from transformers import AutoTokenizer

from . import trainer as T
from .data import Encoded, Example, TaskData, general_corpus
from .export import export_student
from .losses import KDWeights
from .models import QuantSpec, load_classifier, quantize_student, reduce_layers, skip_layers, teacher_base_path
from .pipelines import XTCConfig, _encode, _is_main, _save_hf, kd_loss_fn, write_student_dir, xtc

# The two stages of TinyBERT/BinaryBERT distillation.
STAGE1 = KDWeights(logits=0.0, attention=1.0, hidden=1.0)
STAGE2 = KDWeights(logits=1.0, attention=0.0, hidden=0.0)
_ONCE = 10**12  # eval_every that means "only at the last step"


def stage1_config(cfg: T.TrainConfig) -> T.TrainConfig:
    """Stage-I schedule: evaluated once, at its end, so the final weights are kept."""
    return dataclasses.replace(cfg, eval_every=_ONCE)


@dataclass
class BinaryBERTConfig:
    """BinaryBERT's choices (defaults from the reference where it has one; CLI flags override).

    ``student_layers``/``teacher_layers``: layer reduction as in XTC (0: the teacher's depth).
    ``general``: the General KD budget, None to skip it; ``general_text_file``: its corpus (None:
    the archive's other snippets plus the task's training texts); ``general_max_texts`` caps it
    (0: all). Stage budgets: ``fp32_stage1/2`` (used with reduction), ``ternary_stage1/2``,
    ``split_stage1`` and ``split_stage2``; a Stage-I budget of None skips that Stage I (the
    default after TWS: Stage II only).
    ``act_bits`` 8 (PACT clip) or 4 (LSQ); ``granularity`` of the weight scales ("tensor": the
    reference's per matrix, or "row"); ``pooler_bits``/``embedding_bits`` 2 (ternary, then split)
    or None (float).
    """

    student_layers: int = 0
    teacher_layers: Optional[List[int]] = None
    base: Optional[str] = None  # the base model of general KD (default: the embedded MiniLM)
    general: Optional[T.TrainConfig] = None
    general_text_file: Optional[str] = None
    general_max_texts: int = 0
    fp32_stage1: Optional[T.TrainConfig] = field(default_factory=T.TrainConfig)
    fp32_stage2: T.TrainConfig = field(default_factory=T.TrainConfig)
    ternary_stage1: Optional[T.TrainConfig] = field(default_factory=lambda: T.TrainConfig(epochs=2, batch_size=16, lr=2.5e-5))
    ternary_stage2: T.TrainConfig = field(default_factory=lambda: T.TrainConfig(epochs=2, batch_size=16, lr=1e-5))
    split_stage1: Optional[T.TrainConfig] = None
    split_stage2: T.TrainConfig = field(default_factory=lambda: T.TrainConfig(epochs=2, batch_size=16, lr=5e-5))
    act_bits: int = 8
    granularity: str = "tensor"
    pooler_bits: Optional[int] = 2
    embedding_bits: Optional[int] = 2
    temperature: float = 1.0
    max_length: int = 128
    cache_dir: Optional[str] = None

    def __post_init__(self):
        if self.act_bits not in (8, 4):
            raise ValueError(f"act_bits={self.act_bits!r}; expected 8 (PACT clip) or 4 (LSQ)")
        if self.granularity not in bitops.tws.SPLIT_GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r}; expected one of {bitops.tws.SPLIT_GRANULARITIES}")
        if self.pooler_bits not in (2, None) or self.embedding_bits not in (2, None):
            raise ValueError(f"pooler_bits={self.pooler_bits!r}, embedding_bits={self.embedding_bits!r}; expected 2 or None (float)")
        if self.general is not None and not (self.student_layers or self.teacher_layers):
            raise ValueError("general KD distills a smaller student from the base model; expected student_layers > 0 or teacher_layers")

    def ternary_spec(self) -> QuantSpec:
        return QuantSpec(attention=2, ffn1=2, ffn2=2, pooler=self.pooler_bits, embedding_bits=self.embedding_bits,
                         act_bits=self.act_bits, granularity=self.granularity, act_quant="pact" if self.act_bits == 8 else "lsq")


def _stage(student, teacher, layer_map, data, encs, weights, cfg, out_dir, resume, desc):
    train_enc, dev_enc = encs
    resume = resume and os.path.exists(os.path.join(out_dir, T.CHECKPOINT))
    return T.train(student, train_enc, dev_enc, kd_loss_fn(teacher, layer_map, data.task_type, weights), cfg, out_dir,
                   data.task_type, resume=resume, desc=desc)


def _two_stages(student, teacher, layer_map, data, encs, cfg1, cfg2, folder, temperature, resume, name) -> dict:
    """Stage I (hidden + attention; final weights) then Stage II (logits; best dev) into ``folder``."""
    res = {}
    if cfg1 is not None:
        res["stage1"] = _stage(student, teacher, layer_map, data, encs, STAGE1, stage1_config(cfg1),
                               os.path.join(folder, "stage1"), resume, f"{name} stage I")
    res["stage2"] = _stage(student, teacher, layer_map, data, encs, dataclasses.replace(STAGE2, temperature=temperature),
                           cfg2, os.path.join(folder, "train"), resume, f"{name} stage II")
    return res


def general_kd(data: TaskData, base: str, layer_map: List[int], cfg: BinaryBERTConfig, tokenizer, out_dir: str, resume: bool = False):
    """(student, result): a reduced copy of ``base`` (layers ``layer_map``) trained to match the
    base model's hidden states and attention scores on the general corpus."""
    texts = general_corpus(cfg.cache_dir, cfg.general_text_file)
    if cfg.general_text_file is None:
        texts = texts + [e.text for e in data.train]
    if cfg.general_max_texts:
        texts = texts[: cfg.general_max_texts]
    # The loss has no labels; the classification head (random, unused by the loss) only lets the
    # trainer run its single final evaluation on a few task dev sentences.
    T.set_seed(cfg.general.seed)
    teacher = load_classifier(base, data.num_labels, data.task_type).eval().requires_grad_(False)
    student = reduce_layers(teacher, layer_map)
    student.requires_grad_(True)
    unlabeled = Encoded([Example(text=t, label=0) for t in texts],
                        tokenizer, cfg.max_length, data.task_type)
    dev = Encoded(data.split("dev")[:64], tokenizer, cfg.max_length, data.task_type)
    teacher.to(T.resolve_device(cfg.general.device))
    folder = os.path.join(out_dir, "general")
    res = _stage(student, teacher, layer_map, data, (unlabeled, dev), STAGE1, stage1_config(cfg.general),
                 os.path.join(folder, "train"), resume, "general KD")
    res["texts"] = len(texts)
    if _is_main():
        _save_hf(student.cpu(), tokenizer, folder, {**data.info(), "role": "general-student", "layer_map": layer_map, "texts": len(texts)})
    return student, res


def binarybert(data: TaskData, teacher_dir: str, out_dir: str, cfg: BinaryBERTConfig, resume: bool = False) -> dict:
    """Run BinaryBERT from a fine-tuned teacher folder. Returns {"layer_map", per-stage results,
    "tws": {"split_dev": dev metrics of the split model before its training}, "export": path}."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = load_classifier(teacher_dir).eval().requires_grad_(False)
    device = T.resolve_device(cfg.split_stage2.device)
    encs = _encode(data, tokenizer, cfg.max_length)
    n_teacher = teacher.config.num_hidden_layers
    results = {}
    if cfg.student_layers or cfg.teacher_layers:
        layer_map = list(cfg.teacher_layers) if cfg.teacher_layers else skip_layers(n_teacher, cfg.student_layers)
        if cfg.general is not None:
            student, results["general"] = general_kd(data, cfg.base or teacher_base_path(), layer_map, cfg, tokenizer, out_dir, resume)
            student.cpu()
            # the task head comes from the teacher (the general student's head is an unused random one)
            student.classifier.load_state_dict(teacher.classifier.state_dict())
        else:
            student = reduce_layers(teacher, layer_map)
        student.requires_grad_(True)
        teacher.to(device)
        folder = os.path.join(out_dir, "fp32-student")
        fp32 = _two_stages(student, teacher, layer_map, data, encs, cfg.fp32_stage1, cfg.fp32_stage2, folder,
                           cfg.temperature, resume, "FP32 student")
        results.update({f"fp32_{k}": v for k, v in fp32.items()})
        if _is_main():
            _save_hf(student.cpu(), tokenizer, folder, {**data.info(), "role": "fp32-student", "layer_map": layer_map,
                                                         "max_length": cfg.max_length, "best": fp32["stage2"]["best"]})
    else:
        layer_map = list(range(n_teacher))
        student = copy.deepcopy(teacher).requires_grad_(True)
    teacher.to(device)
    student.cpu()
    spec = cfg.ternary_spec()
    quantize_student(student, spec)
    info = {**data.info(), "layer_map": layer_map, "max_length": cfg.max_length}
    tdir = os.path.join(out_dir, "ternary-student")
    tern = _two_stages(student, teacher, layer_map, data, encs, cfg.ternary_stage1, cfg.ternary_stage2, tdir,
                       cfg.temperature, resume, "ternary student")
    results.update({f"ternary_{k}": v for k, v in tern.items()})
    if _is_main():
        write_student_dir(tdir, student.cpu(), spec, tokenizer, {**info, "role": "ternary-student", "best": tern["stage2"]["best"]})

    student.cpu()
    bitops.tws_split_(student)
    spec = dataclasses.replace(spec, split=True)
    results["tws"] = {"split_dev": T.evaluate(student, encs[1], data.task_type, cfg.split_stage2.eval_batch_size)}
    qdir = os.path.join(out_dir, "1bit-student")
    split = _two_stages(student, teacher, layer_map, data, encs, cfg.split_stage1, cfg.split_stage2, qdir,
                        cfg.temperature, resume, "1-bit (split) student")
    results.update({f"split_{k}": v for k, v in split.items()})
    results["quant"] = split["stage2"]  # the final model, under the key xtc uses
    results["layer_map"] = layer_map
    if _is_main():
        info = {**info, "role": "quantized-student", "best": split["stage2"]["best"]}
        write_student_dir(qdir, student.cpu(), spec, tokenizer, info)
        results["export"] = export_student(student, spec, tokenizer, os.path.join(out_dir, "export"), info, layer_map)
    return results


def ternarybert_config(student_layers: int = 0, teacher_layers: Optional[List[int]] = None, granularity: str = "tensor",
                       weights: Optional[KDWeights] = None, fp32: Optional[T.TrainConfig] = None,
                       quant: Optional[T.TrainConfig] = None, max_length: int = 128,
                       pooler_bits: Optional[int] = 2, embedding_bits: Optional[int] = 2) -> XTCConfig:
    """TernaryBERT as an XTC run: W2A8 (TWN weights, ternary word embeddings and pooler, PACT
    activations from +-2.5), joint KD with logits + attention + hidden (weights 1), lr 2e-5, 3
    epochs, no layer reduction by default; the student folder is ``2bit-student``."""
    spec = QuantSpec(attention=2, ffn1=2, ffn2=2, pooler=pooler_bits, embedding_bits=embedding_bits, act_bits=8,
                     granularity=granularity, act_quant="pact")
    return XTCConfig(student_layers=student_layers, teacher_layers=teacher_layers, spec=spec, weights=weights or KDWeights(),
                     fp32=fp32 or T.TrainConfig(epochs=3, lr=2e-5), quant=quant or T.TrainConfig(epochs=3, lr=2e-5),
                     max_length=max_length, quant_dir="2bit-student")


def ternarybert(data: TaskData, teacher_dir: str, out_dir: str, cfg: XTCConfig, resume: bool = False) -> dict:
    """Run TernaryBERT (a config from :func:`ternarybert_config`); results as :func:`kd.pipelines.xtc`."""
    if any(getattr(cfg.spec, fam) != 2 for fam in ("attention", "ffn1", "ffn2")):
        raise ValueError(f"spec={cfg.spec}; expected 2-bit attention, ffn1 and ffn2 (build it with ternarybert_config)")
    return xtc(data, teacher_dir, out_dir, cfg, resume)
