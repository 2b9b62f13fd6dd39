"""``make demo``: the whole product on real data, offline, in minutes on a 2-core CPU.

1. fine-tune the embedded teacher base (all-MiniLM-L6-v2, 6 layers) on a subset of MR;
2. XTC: layer-reduced FP32 student (3 layers by the skip rule: teacher layers 1, 3, 5), one-stage
   KD; then the 1-bit W1A8 student from it, one-stage KD, longer;
3. export the frozen packed student, load it back;
4. print one table: MR dev accuracy, file size and CPU latency per batch of the teacher, the FP32
   student and the exported 1-bit student.

The defaults fit about 10 minutes on 2 cores; flags give the full run (``--train-size 0`` uses all
8,454 training sentences; raise the epochs).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from bitops._timing import interleaved_median_ms

from . import trainer as T
from .data import Encoded, load_mr
from .export import WEIGHTS_FILE, load_exported
from .models import QuantSpec, load_classifier, teacher_base_path
from .pipelines import XTCConfig, finetune_teacher, xtc


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m kd.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (teacher/, xtc/)")
    p.add_argument("--train-size", type=int, default=1280, help="MR training sentences (0: all 8,454)")
    p.add_argument("--dev-size", type=int, default=0, help="MR dev sentences (0: all 1,057)")
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--teacher-lr", type=float, default=1e-4)
    p.add_argument("--student-layers", type=int, default=3, help="0: no reduction (all 6 layers at 1 bit)")
    p.add_argument("--fp32-epochs", type=float, default=2.0)
    p.add_argument("--fp32-lr", type=float, default=1e-4)
    p.add_argument("--quant-epochs", type=float, default=3.0)
    p.add_argument("--quant-lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared 2-core machine)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reuse-teacher", action="store_true", help="skip step 1 when --out/teacher exists")
    return p.parse_args(argv)


def latencies_ms(models: dict, batch) -> dict:
    """Median time of one inference forward over ``batch`` of each of ``models`` (name -> model), timed
    round-robin (bitops._timing.interleaved_median_ms): on a shared machine whose speed drifts, models timed
    one after another each get a different phase of it (the 1-bit student measured 70.9 ms in one demo run
    and 92.5 ms in the next stop's, whose kernels were faster at its shapes)."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.inference_mode():
        return interleaved_median_ms({name: (lambda m=m: m(**inputs)) for name, m in models.items()}, repeats=10, warmup=2)


def _mb(path: str) -> float:
    return os.path.getsize(path) / 1e6


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    data = load_mr()
    if a.train_size:
        data.train = data.train[: a.train_size]
    if a.dev_size:
        data.dev = data.dev[: a.dev_size]
    print(f"MR: {len(data.train)} train / {len(data.dev)} dev sentences, max length {a.max_length}, {a.threads} thread(s)")
    # One dev evaluation per stage, at its end: evaluations are a large share of a short run.
    common = dict(batch_size=a.batch_size, seed=a.seed, device="cpu", eval_batch_size=64, eval_every=10**9)
    teacher_dir = os.path.join(a.out, "teacher")
    if not (a.reuse_teacher and os.path.exists(os.path.join(teacher_dir, "config.json"))):
        finetune_teacher(data, teacher_base_path(), teacher_dir,
                         T.TrainConfig(epochs=a.teacher_epochs, lr=a.teacher_lr, warmup=0.1, **common), a.max_length)
    t_teacher = time.time() - t0
    cfg = XTCConfig(
        student_layers=a.student_layers, spec=QuantSpec(pooler=1), max_length=a.max_length,
        fp32=T.TrainConfig(epochs=a.fp32_epochs, lr=a.fp32_lr, warmup=0.05, **common),
        quant=T.TrainConfig(epochs=a.quant_epochs, lr=a.quant_lr, warmup=0.05, **common),
    )
    res = xtc(data, teacher_dir, os.path.join(a.out, "xtc"), cfg)
    t_xtc = time.time() - t0 - t_teacher

    teacher = load_classifier(teacher_dir).eval()
    student_dir = os.path.join(a.out, "xtc", "fp32-student")
    models = [("FP32 teacher", teacher, os.path.join(teacher_dir, "model.safetensors"), teacher.config.num_hidden_layers)]
    if os.path.isdir(student_dir):
        fp32 = load_classifier(student_dir).eval()
        models.append(("FP32 student", fp32, os.path.join(student_dir, "model.safetensors"), fp32.config.num_hidden_layers))
    packed, tok, meta = load_exported(res["export"])
    models.append(("1-bit W1A8 student (exported)", packed, os.path.join(res["export"], WEIGHTS_FILE), packed.config.num_hidden_layers))

    dev = Encoded(data.dev, tok, a.max_length, "classification")
    bench = dev.batch(range(min(a.batch_size, len(dev))))
    accuracy = {name: T.evaluate(model, dev, "classification")["accuracy"] for name, model, _, _ in models}
    ms = latencies_ms({name: model for name, model, _, _ in models}, bench)
    rows = [(name, layers, accuracy[name], _mb(path), ms[name]) for name, _, path, layers in models]
    same_layers_fp32 = next((r[3] for r in rows[:-1] if r[1] == rows[-1][1]), None)
    print()
    print(f"{'model':32s} {'layers':>6s} {'MR dev acc':>10s} {'file MB':>9s} {'ms/batch':>9s}")
    for name, layers, acc, mb, ms in rows:
        print(f"{name:32s} {layers:6d} {acc:10.4f} {mb:9.2f} {ms:9.1f}")
    one_bit = rows[-1][3]
    print(f"\nlatency: batch of {bench['input_ids'].shape[0]} x {bench['input_ids'].shape[1]} tokens, median of 10 interleaved rounds, {a.threads} thread(s)")
    print(f"exported 1-bit student vs FP32 teacher file: {rows[0][3] / one_bit:.1f}x smaller"
          + (f"; vs FP32 with the same {rows[-1][1]} layers: {same_layers_fp32 / one_bit:.1f}x smaller" if same_layers_fp32 else ""))
    print(f"time: teacher {t_teacher:.0f} s, XTC {t_xtc:.0f} s, total {time.time() - t0:.0f} s")
    return {"rows": rows, "same_layers_ratio": same_layers_fp32 / one_bit if same_layers_fp32 else None}


if __name__ == "__main__":
    main()
