"""GEMM benchmark at BERT-base layer shapes, one thread pinned, medians, all in one run:

  fp32        torch nn.Linear (MKL sgemm)
  int8        fbgemm dynamic int8 (torch.ao.quantization.quantize_dynamic of the same nn.Linear),
              which quantizes its activations on every call
  W1A8 layer  bitops.BinaryLinear, frozen, float input (per-token int8 quantization included)
  W2A8 layer  bitops.TernaryLinear, frozen, same
  W1A8 / W2A8 kernel: torch.ops.bitops.packed_linear_int8 alone on pre-quantized int8 input

Prints a table (ms, GMAC/s, speed ratio vs fp32 and vs int8) and writes CSV.
Usage: python benchmarks/bench_gemm.py [--repeats 30] [--out benchmarks/results/gemm.csv]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform

import torch

import bitops
from bitops._timing import median_ms
from bitops.quantizers import quantize_per_token_symmetric

SHAPES = [(m, k, n) for m in (1, 128) for (k, n) in ((768, 768), (768, 3072), (3072, 768))]


def pin_one_thread() -> None:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def bench_shape(m: int, k: int, n: int, repeats: int) -> dict:
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    row = {"M": m, "K": k, "N": n}
    with torch.inference_mode():
        row["fp32"] = median_ms(lambda: lin(x), repeats)
        row["int8 fbgemm"] = median_ms(lambda: int8(x), repeats)
        q, s = quantize_per_token_symmetric(x)
        for name, cls in (("W1A8", bitops.BinaryLinear), ("W2A8", bitops.TernaryLinear)):
            layer = cls.from_linear(lin, act_bits=8).freeze()
            row[f"{name} layer"] = median_ms(lambda: layer(x), repeats)
            p, ws, b = layer.packed_weight, layer.weight_scale, layer.bias
            row[f"{name} kernel"] = median_ms(
                lambda: bitops.ops.packed_linear_int8(q, s, p, ws, b, layer.bits, k, layer.group_size), repeats
            )
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/gemm.csv")
    args = ap.parse_args(argv)
    pin_one_thread()
    rows = [bench_shape(m, k, n, args.repeats) for m, k, n in SHAPES]
    kernels = [c for c in rows[0] if c not in ("M", "K", "N")]

    print(f"# GEMM, 1 thread pinned, median of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"bitops CPU path: {bitops.cpu_isa()}, torch {torch.__version__}")
    head = f"{'M':>4} {'K':>5} {'N':>5}  {'kernel':<12} {'ms':>8} {'GMAC/s':>8} {'vs fp32':>8} {'vs int8':>8}"
    print(head)
    print("-" * len(head))
    records = []
    for r in rows:
        macs = r["M"] * r["K"] * r["N"]
        for kname in kernels:
            ms = r[kname]
            rec = {"M": r["M"], "K": r["K"], "N": r["N"], "kernel": kname, "ms": ms,
                   "gmacs": macs / ms / 1e6, "speedup_vs_fp32": r["fp32"] / ms, "speedup_vs_int8": r["int8 fbgemm"] / ms}
            records.append(rec)
            print(f"{r['M']:>4} {r['K']:>5} {r['N']:>5}  {kname:<12} {ms:>8.3f} {rec['gmacs']:>8.1f} "
                  f"{rec['speedup_vs_fp32']:>7.2f}x {rec['speedup_vs_int8']:>7.2f}x")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
