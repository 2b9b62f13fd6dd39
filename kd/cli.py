"""``bitbert``: fine-tune a teacher, distill a 1-bit student with XTC, evaluate, export, predict.

    bitbert teacher --out runs/teacher                       # MR by default; --train-file... or --glue-task
    bitbert distill --pipeline xtc --teacher runs/teacher --out runs/xtc --student-layers 3
    bitbert distill --pipeline binarybert --teacher runs/teacher --out runs/bb   # ternary -> TWS -> 1 bit
    bitbert distill --pipeline ternarybert --teacher runs/teacher --out runs/tb  # W2A8
    bitbert compare --teacher runs/teacher --out runs/cmp --budget-steps 600    # all three, one table
    bitbert eval    --model runs/xtc/export --split test
    bitbert export  --student runs/xtc/1bit-student --out runs/export
    echo "a charming film" | bitbert predict --model runs/xtc/export

Multi-process data parallel: ``torchrun --nproc_per_node N -m kd.cli teacher ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import trainer as T
from .data import DataError, TaskData, load_files, load_glue, load_mr
from .losses import KDWeights
from .models import QuantSpec


PIPELINES = ("xtc", "binarybert", "ternarybert")
# Per-pipeline defaults of the --fp32-* and --quant-* schedules (flags left at None).
_XTC = {"epochs": 18.0, "lr": 5e-5, "warmup": 1 / 18}
_TB = {"epochs": 3.0, "lr": 2e-5, "warmup": 0.1}
PIPELINE_DEFAULTS = {
    "xtc": {"fp32": _XTC, "quant": _XTC},
    "ternarybert": {"fp32": _TB, "quant": _TB},
    "binarybert": {"fp32": {"epochs": 3.0, "lr": 5e-5, "warmup": 0.1}},
}
DISTILL_DOC = """Pipelines:
  xtc          layer reduction + FP32 KD, then one-stage KD of the 1-bit student (default 18 + 18
               epochs, lr 5e-5; W1A8, per-row scales)
  binarybert   [General KD] -> FP32 Stage I/II (with reduction) -> ternary W2 Stage I/II -> TWS ->
               split 1-bit Stage II (ternary lr 1e-5, split 5e-5, Stage I at 2.5x, 2 epochs each;
               A8 PACT or A4 LSQ; per-matrix scales)
  ternarybert  one-stage joint KD of a W2A8 copy of the teacher (3 epochs, lr 2e-5; per-matrix scales)
"""


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (default: the embedded MR movie-review task)")
    g.add_argument("--train-file", help="CSV, TSV or JSONL training file (with --dev-file)")
    g.add_argument("--dev-file", help="CSV, TSV or JSONL dev file")
    g.add_argument("--test-file", help="CSV, TSV or JSONL test file (optional)")
    g.add_argument("--text-column", default="text")
    g.add_argument("--text-pair-column", default=None, help="second text column of sentence-pair tasks")
    g.add_argument("--label-column", default="label")
    g.add_argument("--task-type", choices=("classification", "regression"), default="classification")
    g.add_argument("--glue-task", help="a GLUE task through the `datasets` library (needs a hub): sst2, mrpc, ...")
    g.add_argument("--cache-dir", default=None, help="where MR is fetched to (default .cache or $BITBERT_CACHE)")
    g.add_argument("--max-train", type=int, default=0, help="use only the first N training examples (0: all)")
    g.add_argument("--max-eval", type=int, default=0, help="use only the first N dev/test examples (0: all)")


def _train_args(p: argparse.ArgumentParser, prefix: str = "", title: str = "", **defaults) -> None:
    """--[prefix-]epochs/max-steps/lr/warmup. A default of None is filled in per pipeline (see
    PIPELINE_DEFAULTS) and the help says so."""
    d = {**{"epochs": 3.0, "lr": 5e-5, "warmup": 0.1}, **defaults}
    dash = f"--{prefix}-" if prefix else "--"
    g = p.add_argument_group(f"{prefix or 'training'} schedule", title or None)
    per = " (default: the pipeline's, see above)"
    g.add_argument(f"{dash}epochs", type=float, default=d["epochs"], help=per if d["epochs"] is None else None)
    g.add_argument(f"{dash}max-steps", type=int, default=0, help="overrides epochs when > 0")
    g.add_argument(f"{dash}lr", type=float, default=d["lr"], help=per if d["lr"] is None else None)
    g.add_argument(f"{dash}warmup", type=float, default=d["warmup"], help="fraction of the steps" + (per if d["warmup"] is None else ""))


def _common_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--max-length", type=int, default=128)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: once per epoch)")
    g.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: at each evaluation)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip an update whose loss or gradients are nan/inf (default: stop with the step and module)")


def _train_config(a, prefix: str = "", defaults: Optional[dict] = None) -> T.TrainConfig:
    """The TrainConfig of stage ``prefix``; ``defaults`` fill the flags left at None."""
    def get(k):
        v = getattr(a, f"{prefix}_{k}" if prefix else k, None)
        return (defaults or {}).get(k) if v is None else v

    return T.TrainConfig(
        epochs=get("epochs"), max_steps=get("max_steps"), lr=get("lr"), warmup=get("warmup"),
        batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, weight_decay=a.weight_decay,
        max_grad_norm=a.max_grad_norm, eval_every=a.eval_every, save_every=a.save_every, seed=a.seed,
        device=a.device, progress=not a.no_progress, skip_nonfinite=a.skip_nonfinite,
    )


def load_task(a) -> TaskData:
    if a.glue_task:
        data = load_glue(a.glue_task)
    elif a.train_file or a.dev_file:
        if not (a.train_file and a.dev_file):
            raise DataError("--train-file and --dev-file go together; expected both")
        data = load_files(a.train_file, a.dev_file, a.test_file, a.text_column, a.label_column, a.text_pair_column, a.task_type)
    else:
        data = load_mr(a.cache_dir)
    if a.max_train:
        data.train = data.train[: a.max_train]
    if getattr(a, "max_eval", 0):
        data.dev, data.test = data.dev[: a.max_eval], data.test[: a.max_eval]
    return data


def _int_list(s: str) -> List[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}; expected comma-separated layer indices like 1,3,5") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitbert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("teacher", help="fine-tune a BERT base into the task teacher")
    t.add_argument("--base", default=None, help="HF BERT folder (default: the embedded all-MiniLM-L6-v2)")
    t.add_argument("--out", required=True, help="output folder of the teacher")
    _data_args(t)
    _train_args(t)
    _common_train_args(t)

    d = sub.add_parser("distill", help="distill a quantized student from a teacher", description=DISTILL_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--pipeline", choices=PIPELINES, default="xtc")
    d.add_argument("--teacher", required=True, help="fine-tuned teacher folder (from `bitbert teacher` or HF with kd_task.json)")
    d.add_argument("--out", required=True)
    d.add_argument("--student-layers", type=int, default=0, help="layer reduction to N layers by XTC's skip rule (0: no reduction)")
    d.add_argument("--teacher-layers", type=_int_list, default=None, help="explicit layer map, e.g. 1,3,5")
    for fam in ("attention", "ffn1", "ffn2"):
        d.add_argument(f"--{fam}-bits", type=int, choices=(1, 2), default=1, help=f"xtc: {fam} weights, 1 (binary) or 2 (ternary)")
    d.add_argument("--pooler-bits", choices=("1", "2", "float"), default=None,
                   help="pooler weights (xtc default 1: keeps a 3-layer export >20x smaller, XTC itself keeps it float; "
                        "binarybert/ternarybert: 2 (default) or float)")
    d.add_argument("--embedding-bits", choices=("1", "2", "float"), default=None,
                   help="word embeddings: xtc 1 (default) or float; binarybert/ternarybert 2 (default, per row) or float")
    d.add_argument("--act-bits", type=int, choices=(8, 4), default=8,
                   help="activation bits (binarybert: 8 with a learnable PACT clip, 4 with LSQ; ternarybert: 8)")
    d.add_argument("--granularity", choices=("row", "tensor"), default=None,
                   help="weight scale per output row or per matrix (default: xtc row, binarybert/ternarybert tensor as their references)")
    d.add_argument("--init-student", default=None,
                   help="xtc: start the quantized stage from the best weights of an earlier run's 1bit-student/ folder "
                        "(same quantization and layer map), skipping the FP32 stage: a longer or different schedule")
    d.add_argument("--kd-logits", type=float, default=1.0, help="xtc/ternarybert: weight of the logits soft-CE (MSE for regression); 1")
    d.add_argument("--kd-attention", type=float, default=1.0, help="xtc/ternarybert: weight of the attention-score MSE; 1")
    d.add_argument("--kd-hidden", type=float, default=1.0, help="xtc/ternarybert: weight of the hidden-state MSE; 1")
    d.add_argument("--temperature", type=float, default=1.0, help="soft-CE temperature; 1")
    g = d.add_argument_group("binarybert")
    g.add_argument("--general-kd", action="store_true", help="run General KD first (needs --student-layers or --teacher-layers)")
    g.add_argument("--general-text-file", default=None, help="unlabeled text, one sentence per line (default: the MR archive's "
                   "tweets, Amazon and NYT snippets plus the task's training texts)")
    g.add_argument("--general-max-texts", type=int, default=0, help="use only the first N general-KD sentences (0: all)")
    g.add_argument("--base", default=None, help="base model of General KD (default: the embedded all-MiniLM-L6-v2)")
    g.add_argument("--split-both-stages", action="store_true", help="after TWS run Stage I then Stage II (default: Stage II only)")
    _data_args(d)
    # XTC's schedule (DeepSpeedExamples compression/bert): 18 epochs, 1 warm-up epoch, lr 5e-5, for
    # both stages (its FP32 reduction run is 36 epochs on MNLI/QQP). TernaryBERT: lr 2e-5, 3 epochs.
    _train_args(d, "fp32", "xtc/ternarybert FP32 reduction stage; binarybert FP32 Stage II", epochs=None, lr=None, warmup=None)
    _train_args(d, "quant", "xtc/ternarybert quantized stage", epochs=None, lr=None, warmup=None)
    # BinaryBERT's schedule (huawei-noah BinaryBERT scripts): two-stage KD, Stage I at 2.5x the
    # lr; ternary at lr 1e-5, after TWS at 5e-5; 2 epochs each.
    _train_args(d, "general", "binarybert General KD", epochs=1.0, lr=5e-5)
    _train_args(d, "fp32-stage1", "binarybert FP32 Stage I", epochs=3.0, lr=1.25e-4)
    _train_args(d, "ternary-stage1", "binarybert ternary Stage I", epochs=2.0, lr=2.5e-5)
    _train_args(d, "ternary-stage2", "binarybert ternary Stage II", epochs=2.0, lr=1e-5)
    _train_args(d, "split-stage1", "binarybert split 1-bit Stage I (with --split-both-stages)", epochs=2.0, lr=1.25e-4)
    _train_args(d, "split-stage2", "binarybert split 1-bit Stage II", epochs=2.0, lr=5e-5)
    _common_train_args(d)

    c = sub.add_parser("compare", help="run xtc, binarybert and ternarybert on one budget; table as CSV + markdown",
                       description="Runs the pipelines on the same data, teacher and budget of optimizer steps (shared "
                       "among each pipeline's stages by fixed fractions, kd.compare.SHARES) and writes compare.csv and "
                       "compare.md: dev and test score, exported size, training time, CPU latency at batch 1.")
    c.add_argument("--teacher", required=True, help="fine-tuned teacher folder")
    c.add_argument("--out", required=True, help="folder of the runs and of compare.csv / compare.md")
    c.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated subset of " + ",".join(PIPELINES))
    c.add_argument("--budget-steps", type=int, default=600, help="optimizer steps per pipeline, all stages together")
    c.add_argument("--student-layers", type=int, default=0, help="layer reduction for every pipeline (0: none)")
    c.add_argument("--latency-examples", type=int, default=32, help="sentences timed at batch 1 for the latency column")
    _data_args(c)
    _common_train_args(c)

    e = sub.add_parser("eval", help="evaluate a teacher, FP32 student or exported model")
    e.add_argument("--model", required=True, help="HF folder (teacher / fp32-student) or export folder")
    e.add_argument("--split", choices=("dev", "test"), default="dev")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-length", type=int, default=0, help="0: the length the model was trained with")
    _data_args(e)

    x = sub.add_parser("export", help="freeze and pack a distilled student into an export folder")
    x.add_argument("--student", required=True, help="the 1bit-student folder written by `bitbert distill`")
    x.add_argument("--out", required=True)

    r = sub.add_parser("predict", help="classify text lines from a file or stdin with an exported model")
    r.add_argument("--model", required=True, help="export folder")
    r.add_argument("--input", default="-", help="text file, one example per line (default: stdin)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--max-length", type=int, default=128)
    return p


def cmd_teacher(a) -> None:
    from .models import teacher_base_path
    from .pipelines import finetune_teacher

    data = load_task(a)
    res = finetune_teacher(data, a.base or teacher_base_path(), a.out, _train_config(a), a.max_length, a.resume)
    print(f"teacher saved to {a.out}; best dev: {res['best']}")


def _bits(flag: Optional[str], default: str, allowed, name: str, pipeline: str) -> Optional[int]:
    v = default if flag is None else flag
    if v not in allowed:
        raise argparse.ArgumentTypeError(f"--{name}={v}; {pipeline} expects one of {', '.join(allowed)}")
    return None if v == "float" else int(v)


def cmd_distill(a) -> None:
    from .binarybert import BinaryBERTConfig, binarybert, ternarybert, ternarybert_config
    from .pipelines import XTCConfig, xtc

    p = a.pipeline
    stage = lambda prefix: _train_config(a, prefix, PIPELINE_DEFAULTS[p].get(prefix))  # noqa: E731
    weights = KDWeights(a.kd_logits, a.kd_attention, a.kd_hidden, a.temperature)
    if a.init_student and p != "xtc":
        raise argparse.ArgumentTypeError(f"--init-student applies to --pipeline xtc; got --pipeline {p}")
    data = load_task(a)
    if p == "xtc":
        spec = QuantSpec(attention=a.attention_bits, ffn1=a.ffn1_bits, ffn2=a.ffn2_bits,
                         pooler=_bits(a.pooler_bits, "1", ("1", "2", "float"), "pooler-bits", p),
                         embedding_bits=_bits(a.embedding_bits, "1", ("1", "float"), "embedding-bits", p),
                         act_bits=a.act_bits, granularity=a.granularity or "row")
        cfg = XTCConfig(student_layers=a.student_layers, teacher_layers=a.teacher_layers, spec=spec, weights=weights,
                        fp32=stage("fp32"), quant=stage("quant"), max_length=a.max_length, init_student=a.init_student)
        res = xtc(data, a.teacher, a.out, cfg, a.resume)
    elif p == "ternarybert":
        if a.act_bits != 8:
            raise argparse.ArgumentTypeError(f"--act-bits={a.act_bits}; ternarybert is W2A8, expected 8")
        cfg = ternarybert_config(a.student_layers, a.teacher_layers, a.granularity or "tensor", weights,
                                 stage("fp32"), stage("quant"), a.max_length,
                                 pooler_bits=_bits(a.pooler_bits, "2", ("2", "float"), "pooler-bits", p),
                                 embedding_bits=_bits(a.embedding_bits, "2", ("2", "float"), "embedding-bits", p))
        res = ternarybert(data, a.teacher, a.out, cfg, a.resume)
    else:
        cfg = BinaryBERTConfig(
            student_layers=a.student_layers, teacher_layers=a.teacher_layers, base=a.base,
            general=stage("general") if a.general_kd else None, general_text_file=a.general_text_file,
            general_max_texts=a.general_max_texts, fp32_stage1=stage("fp32_stage1"), fp32_stage2=stage("fp32"),
            ternary_stage1=stage("ternary_stage1"), ternary_stage2=stage("ternary_stage2"),
            split_stage1=stage("split_stage1") if a.split_both_stages else None, split_stage2=stage("split_stage2"),
            act_bits=a.act_bits, granularity=a.granularity or "tensor",
            pooler_bits=_bits(a.pooler_bits, "2", ("2", "float"), "pooler-bits", p),
            embedding_bits=_bits(a.embedding_bits, "2", ("2", "float"), "embedding-bits", p),
            temperature=a.temperature, max_length=a.max_length, cache_dir=a.cache_dir,
        )
        res = binarybert(data, a.teacher, a.out, cfg, a.resume)
        print(f"ternary student best dev: {res['ternary_stage2']['best']}; split model before training: {res['tws']['split_dev']}")
    if "fp32" in res:
        print(f"FP32 student best dev: {res['fp32']['best']}")
    print(f"quantized student best dev: {res['quant']['best']}; export: {res.get('export')}")


def cmd_compare(a) -> None:
    from .compare import MD_FILE, CompareConfig, compare

    cfg = CompareConfig(budget_steps=a.budget_steps, student_layers=a.student_layers,
                        pipelines=[p.strip() for p in a.pipelines.split(",") if p.strip()],
                        train=_train_config(a, defaults={"epochs": 1.0, "max_steps": 0, "lr": 5e-5, "warmup": 0.1}),
                        max_length=a.max_length, latency_examples=a.latency_examples)
    compare(load_task(a), a.teacher, a.out, cfg)
    with open(os.path.join(a.out, MD_FILE)) as f:
        print(f.read(), end="")


def load_any(path: str):
    """(model, tokenizer, task info) from an export folder or an HF folder with kd_task.json."""
    from transformers import AutoTokenizer

    from .export import CONFIG_FILE, load_exported
    from .models import load_classifier
    from .pipelines import read_task_info

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder; expected an export folder or a model folder from `bitbert teacher`/`distill`")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        model, tok, meta = load_exported(path)
        return model, tok, meta["task"]
    return load_classifier(path).eval(), AutoTokenizer.from_pretrained(path), read_task_info(path)


def cmd_eval(a) -> None:
    from .data import Encoded
    from .trainer import evaluate

    model, tok, info = load_any(a.model)
    data = load_task(a)
    max_length = a.max_length or info.get("max_length", 128)
    enc = Encoded(data.split(a.split), tok, max_length, data.task_type)
    scores = evaluate(model, enc, data.task_type, a.batch_size)
    print(f"{a.model} on {data.name} {a.split} ({len(enc)} examples): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def cmd_export(a) -> None:
    from .export import export_student
    from .pipelines import load_student_dir

    model, spec, tok, info = load_student_dir(a.student)
    path = export_student(model, spec, tok, a.out, info, info.get("layer_map"))
    print(f"exported to {path}")


def cmd_predict(a) -> None:
    from .export import predict, read_export_config

    read_export_config(a.model)  # a wrong --model fails before stdin is read
    stream = sys.stdin if a.input == "-" else open(a.input, encoding="utf-8", errors="strict")
    with stream:
        lines = [line.rstrip("\n") for line in stream if line.strip()]
    for text, p in zip(lines, predict(a.model, lines, a.batch_size, a.max_length)):
        print(f"{p['score']:.4f}\t{text}" if "label" not in p else f"{p['label']}\t{p['score']:.4f}\t{text}")


COMMANDS = {"teacher": cmd_teacher, "distill": cmd_distill, "compare": cmd_compare, "eval": cmd_eval, "export": cmd_export,
            "predict": cmd_predict}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, argparse.ArgumentTypeError) as e:  # bad input: DataError, ExportError, CheckpointError, missing files, bad values
        print(f"bitbert {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
