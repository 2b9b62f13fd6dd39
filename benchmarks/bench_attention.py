"""bitops.attention against torch's scaled_dot_product_attention on CPU, one thread pinned, medians of
interleaved rounds, at BERT attention shapes: 12 heads of 32 (MiniLM) and of 64 (BERT-base), 128
tokens, batch 1 and 32. q, k and v are head views of (B, T, H, D) tensors and the result is merged
back to (B, T, H * D), as BERT does on either side of its attention (free after bitops.attention,
a copy after SDPA). Masks: none, and a boolean key-padding mask where each sequence keeps its first
`--keep` of the keys (SDPA computes every key; bitops.attention skips the masked ones).
Usage: python benchmarks/bench_attention.py [--batches 1 32] [--keep 0.25] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics

import torch

import bitops
from bitops._timing import interleaved_times_ms, paired_ratio
from _report import pin_threads, write_results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--keep", type=float, default=0.25, help="share of the keys a padded sequence keeps")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    pin_threads(1)
    torch.manual_seed(0)
    t, heads = args.seq_len, 12
    records = []
    for head_dim in (32, 64):
        for b in args.batches:
            q, k, v = (torch.randn(b, t, heads, head_dim).transpose(1, 2) for _ in range(3))
            padding = torch.zeros(b, 1, t, t, dtype=torch.bool)
            padding[..., : max(1, round(args.keep * t))] = True
            for mask_name, mask in (("none", None), (f"padding, {args.keep:.0%} kept", padding)):
                def merged(fn, mask=mask):
                    return fn(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, heads * head_dim)

                calls = {"sdpa": lambda: merged(torch.nn.functional.scaled_dot_product_attention),
                         "bitops": lambda: merged(bitops.attention)}
                with torch.inference_mode():
                    rounds = interleaved_times_ms(calls, repeats=args.repeats if b == 1 else max(5, args.repeats // 4))
                ms = {name: statistics.median(ts) for name, ts in rounds.items()}
                macs = 2 * b * heads * t * t * head_dim
                records.append({"batch": b, "tokens": t, "heads": heads, "head_dim": head_dim, "mask": mask_name,
                                "sdpa_ms": ms["sdpa"], "bitops_ms": ms["bitops"],
                                "sdpa_gmacs": macs / ms["sdpa"] / 1e6, "bitops_gmacs": macs / ms["bitops"] / 1e6,
                                "speedup": paired_ratio(rounds["sdpa"], rounds["bitops"])[0]})
    lines = [f"Attention, 1 thread pinned, medians of interleaved rounds (speed-up: median of the per-round ratios), "
             f"torch {torch.__version__}, "
             f"bitops CPU path {bitops.cpu_isa()}; GMAC/s count all keys (q k^T and p v)", "",
             "| batch x tokens | heads x dim | mask | SDPA ms | bitops ms | SDPA GMAC/s | bitops GMAC/s | bitops vs SDPA |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} x {r['tokens']} | {r['heads']} x {r['head_dim']} | {r['mask']} | {r['sdpa_ms']:.3f} | "
              f"{r['bitops_ms']:.3f} | {r['sdpa_gmacs']:.1f} | {r['bitops_gmacs']:.1f} | {r['speedup']:.2f}x |" for r in records]
    write_results(args.out_dir, "attention", records, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
