"""GEMM benchmark at BERT-base layer shapes, all kernels in one run, medians (speed-ups: medians of the
per-round ratios of interleaved rounds):

  fp32          torch nn.Linear (MKL / oneDNN sgemm)
  int8 fbgemm   dynamic int8 (torch.ao.quantization.quantize_dynamic of the same nn.Linear), which
                quantizes its activations on every call
  W1A8 layer    bitops.BinaryLinear, frozen, float input (per-token int8 quantization included)
  W2A8 layer    bitops.TernaryLinear, frozen, same
  W1A8 / W2A8 kernel: torch.ops.bitops.packed_linear_int8 alone on pre-quantized int8 input
                (the kernel path it takes is in the CSV: gemv, lut or bytes)
  W1A8 gemv-lut kernel: torch.ops.bitops.packed_gemv_int8 on the same input and the GEMV layout of the
                same weights (the frozen layer uses it up to bitops.nn.GEMV_MAX_ROWS rows)

One thread pinned to one core for the main table; the W1A8 and W2A8 kernels also with 2 threads at M=128
(thread scaling). Writes CSV and a markdown table, and with matplotlib a PNG plot of GMAC/s vs M.
Usage: python benchmarks/bench_gemm.py [--repeats 20] [--ms 1 8 32 128] [--out-dir benchmarks/results]
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import torch

import bitops
from bitops._ops import _C
from bitops._timing import interleaved_times_ms, paired_ratio
from bitops.quantizers import quantize_per_token_symmetric
from _report import ALL_CORES, pin_threads, write_results

BERT_BASE_SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (K, N): attention, FFN1, FFN2
KERNELS = ("fp32", "int8 fbgemm", "W1A8 layer", "W2A8 layer", "W1A8 kernel", "W1A8 gemv-lut kernel", "W2A8 kernel")


def bench_shape(m: int, k: int, n: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    calls = {}
    paths = {}
    with torch.inference_mode():
        calls["fp32"] = lambda: lin(x)
        calls["int8 fbgemm"] = lambda: int8(x)
        q, s = quantize_per_token_symmetric(x)
        for name, cls in (("W1A8", bitops.BinaryLinear), ("W2A8", bitops.TernaryLinear)):
            layer = cls.from_linear(lin, act_bits=8).freeze()
            calls[f"{name} layer"] = functools.partial(layer, x)
            calls[f"{name} kernel"] = functools.partial(
                bitops.ops.packed_linear_int8, q, s, layer.packed_weight, layer.weight_scale, layer.bias, layer.bits, k,
                layer.group_size)
            paths[name] = _C.int8_kernel_path(m, layer.bits, layer.weight_scale.shape[1], layer.group_size)
            if name == "W1A8":
                calls["W1A8 gemv-lut kernel"] = functools.partial(
                    bitops.ops.packed_gemv_int8, q, s, layer.gemv_layout(), layer.weight_scale, layer.bias, k)
        # Round-robin over the kernels, so that the machine's drift does not enter their ratios.
        rounds = interleaved_times_ms(calls, repeats)
    macs = m * k * n
    records = []
    for name, ts in rounds.items():
        ms = statistics.median(ts)
        # Speed-ups: the median of the per-round ratios (the machine's drift between rounds cancels).
        records.append({"M": m, "K": k, "N": n, "threads": torch.get_num_threads(), "kernel": name, "ms": ms,
                        "gmacs": macs / ms / 1e6, "vs_fp32": paired_ratio(rounds["fp32"], ts)[0],
                        "vs_int8": paired_ratio(rounds["int8 fbgemm"], ts)[0],
                        "path": ("gemv-lut" if "gemv-lut" in name else paths.get(name.split()[0], "")) if "kernel" in name else ""})
    return records


def thread_scaling(k: int, n: int, bits: int, rounds: int) -> dict:
    """A kernel at M=128 (W1A8 lut or W2A8 bytes): 2-thread over 1-thread speed, as the median of the
    per-round ratios of alternating calls (one untimed call after each switch, for the OpenMP team to
    wake). The machine's drift within a round hits both alike; a ratio of the two medians (what this
    table showed until stop 19) let minutes of drift between them in: 1.21-1.92x for the same build."""
    torch.manual_seed(0)
    cls = bitops.BinaryLinear if bits == 1 else bitops.TernaryLinear
    layer = cls.from_linear(torch.nn.Linear(k, n), act_bits=8).freeze()
    q, s = quantize_per_token_symmetric(torch.randn(128, k))
    call = lambda: bitops.ops.packed_linear_int8(q, s, layer.packed_weight, layer.weight_scale, None, bits, k, k)  # noqa: E731
    times = {1: [], 2: []}
    # The first rounds of a process's first 2-thread calls could run at 2 threads no faster than at 1
    # (0.84-0.93x, then 1.8x for the same shape a second later): the OpenMP team and its buffers start,
    # and this VM's second vCPU, idle through the one-thread table, comes back slowly. Half a second of
    # 2-thread calls first, then a warm-up of half as many alternating rounds.
    pin_threads(2)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:
        call()
    for r in range(rounds + rounds // 2):
        for t in (1, 2):
            pin_threads(t)
            call()
            t0 = time.perf_counter()
            call()
            if r >= rounds // 2:
                times[t].append(time.perf_counter() - t0)
    pin_threads(1)
    speedup, q1, q3 = paired_ratio(times[1], times[2])
    out = {"kernel": f"W{bits}A8", "K": k, "N": n, "rounds": rounds}
    for t in (1, 2):
        out[f"ms_{t}t"] = statistics.median(times[t]) * 1e3
    out.update(speedup_2t=speedup, q1=q1, q3=q3)
    return out


def markdown(records: list[dict], scaling: list[dict], header: str) -> str:
    lines = [header, "", "| M | K | N | kernel | path | ms | GMAC/s | vs fp32 | vs int8 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['kernel']} | {r['path']} | {r['ms']:.3f} | "
                     f"{r['gmacs']:.1f} | {r['vs_fp32']:.2f}x | {r['vs_int8']:.2f}x |")
    if scaling:
        lines += ["", f"Kernels at M=128, 2 threads vs 1 (median of {scaling[0]['rounds']} per-round ratios, quartiles):", "",
                  "| kernel | K | N | 1 thread ms | 2 threads ms | speed-up | quartiles |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['kernel']} | {s['K']} | {s['N']} | {s['ms_1t']:.3f} | {s['ms_2t']:.3f} | {s['speedup_2t']:.2f}x | "
                  f"{s['q1']:.2f}-{s['q3']:.2f} |" for s in scaling]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(BERT_BASE_SHAPES), figsize=(5 * len(BERT_BASE_SHAPES), 4), sharey=True)
    for ax, (k, n) in zip(axes, BERT_BASE_SHAPES):
        for kernel in KERNELS:
            pts = sorted((r["M"], r["gmacs"]) for r in records if (r["K"], r["N"], r["kernel"]) == (k, n, kernel))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kernel)
        ax.set_xscale("log", base=2)
        ax.set_title(f"K={k} N={n}, 1 thread")
        ax.set_xlabel("M (tokens)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("GMAC/s")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 4, 8, 32, 128])
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    pin_threads(1)
    records = [r for m in args.ms for k, n in BERT_BASE_SHAPES for r in bench_shape(m, k, n, args.repeats)]
    rounds = max(60, 3 * args.repeats)
    scaling = ([thread_scaling(k, n, bits, rounds) for bits in (1, 2) for k, n in BERT_BASE_SHAPES]
               if len(ALL_CORES) > 1 else [])
    header = (f"GEMM, 1 thread pinned, median of {args.repeats} interleaved rounds (speed-ups: median of the per-round ratios); "
              f"{platform.processor() or platform.machine()}, "
              f"bitops CPU path: {bitops.cpu_isa()}, torch {torch.__version__}")
    wrote = write_results(args.out_dir, "gemm", records, markdown(records, scaling, header))
    png = os.path.join(args.out_dir, "gemm.png")
    print("wrote", ", ".join(wrote + ([png] if plot(records, png) else [])))


if __name__ == "__main__":
    main()
