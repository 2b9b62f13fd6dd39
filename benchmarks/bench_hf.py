"""CPU latency of a packed student loaded with transformers' from_pretrained (kd.hf), eager and
under torch.compile(fullgraph=True), one thread pinned, medians.

The student has the shape of the embedded teacher base (all-MiniLM-L6-v2: 6 layers, hidden 384) and
the CLI's quantization (1-bit attention/FFN/pooler/word embeddings, 8-bit per-token activations),
random init (the packed kernels' speed does not depend on the weight values). It is exported with
kd.export.export_student, then loaded with AutoModelForSequenceClassification.from_pretrained:

  eager          as loaded (kd's attention, the default of a bitbert load: bitops.attention in eval)
  eager sdpa     from_pretrained(..., attn_implementation="sdpa")
  compiled       torch.compile(eager model, fullgraph=True); the first call compiles (not timed)

Usage: nice python benchmarks/bench_hf.py [--batches 1 8] [--seq-len 128] [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

import bitops
import kd  # noqa: F401  (registers the bitbert quantization method)
from bitops._timing import median_ms
from bitops.demo import SENTENCES
from _report import pin_threads, write_results


def export_student(out_dir: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from kd.export import export_student as write
    from kd.models import QuantSpec, build_student, teacher_base_path

    config = AutoConfig.from_pretrained(teacher_base_path(), num_labels=2)
    spec = QuantSpec(pooler=1)
    student = build_student(config, spec, frozen=True).eval()
    write(student, spec, AutoTokenizer.from_pretrained(teacher_base_path()), out_dir,
          task={"task": "bench", "task_type": "classification", "labels": ["negative", "positive"]})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    pin_threads(1)
    torch.manual_seed(0)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with tempfile.TemporaryDirectory() as path:
        export_student(path)
        tok = AutoTokenizer.from_pretrained(path)
        eager = AutoModelForSequenceClassification.from_pretrained(path)
        sdpa = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa")
    records = []
    for b in args.batches:
        texts = (SENTENCES * (b // len(SENTENCES) + 1))[:b]
        batch = dict(tok(texts, padding="max_length", truncation=True, max_length=args.seq_len, return_tensors="pt"))
        compiled = torch.compile(eager, fullgraph=True)
        with torch.inference_mode():
            t0 = time.perf_counter()
            want, got = eager(**batch).logits, compiled(**batch).logits
            compile_s = time.perf_counter() - t0
            max_diff, max_logit = (want - got).abs().max().item(), want.abs().max().item()
            times = {
                "eager": median_ms(lambda: eager(**batch), repeats=args.repeats),
                "eager sdpa": median_ms(lambda: sdpa(**batch), repeats=args.repeats),
                "compiled": median_ms(lambda: compiled(**batch), repeats=args.repeats),
            }
        for name, ms in times.items():
            records.append({"batch": b, "seq_len": args.seq_len, "model": name, "ms": ms, "vs_eager": times["eager"] / ms,
                            "first_call_s": compile_s if name == "compiled" else None,
                            "max_abs_diff_vs_eager": max_diff if name == "compiled" else None,
                            "max_abs_logit": max_logit})
        torch._dynamo.reset()
    lines = [f"from_pretrained packed student (MiniLM-L6 shape, W1A8, 1-bit embeddings), 1 thread pinned, median of "
             f"{args.repeats}, torch {torch.__version__}, bitops CPU path {bitops.cpu_isa()}", "",
             "| batch x tokens | model | ms | vs eager | first call (compile) s | max abs logit diff vs eager (max abs logit) |",
             "|---|---|---|---|---|---|"]

    def cell(v, fmt):
        return "" if v is None else format(v, fmt)

    def diff(r):
        return "" if r["max_abs_diff_vs_eager"] is None else f"{r['max_abs_diff_vs_eager']:.1e} ({r['max_abs_logit']:.2f})"

    lines += [f"| {r['batch']} x {r['seq_len']} | {r['model']} | {r['ms']:.1f} | {r['vs_eager']:.2f}x | "
              f"{cell(r['first_call_s'], '.0f')} | {diff(r)} |" for r in records]
    write_results(args.out_dir, "hf_compile", records, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
