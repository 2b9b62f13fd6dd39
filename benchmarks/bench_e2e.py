"""End-to-end CPU latency of a real 6-layer BERT (all-MiniLM-L6-v2, the embedded teacher base) in
four forms, measured in one run, one thread pinned, medians (speed-ups: the median of the per-round
ratios of interleaved rounds, with quartiles):

  fp32         the transformers BertModel as loaded
  int8 fbgemm  torch.ao.quantization.quantize_dynamic of every nn.Linear (qint8 weights, dynamic
               int8 activations): what a user gets from PyTorch today
  W1A8 packed  every encoder nn.Linear swapped for a frozen bitops.BinaryLinear (1-bit packed weights,
               8-bit per-token activations): the same modules a kd/ student exports
  W1A8 packed, fused
               the same after bitops.fuse_gelu_ (each FFN's GELU inside the next layer's quantization)
               and bitops.fuse_qkv_ (each attention's query, key and value as one GEMM)
  W1A8 packed, fused + attention
               the same after bitops.use_attention_kernel_ (attention on bitops.attention's CPU
               kernel in inference)
  W1A8 packed, fused layers
               the same after bitops.fuse_encoder_layers_ (each encoder layer one lean sequence of
               ops, without its submodules' Python): what kd.load_exported and from_pretrained give
  W2A8 packed, fused layers
               the same with frozen bitops.TernaryLinear (2-bit ternary weights, TernaryBERT / BinaryBERT's
               ternary stage)

The others use transformers' default attention (torch SDPA). Each model runs at batch 1 x 128 and
32 x 128 tokens of real text, in two forms of input:

  full    every sequence is 128 real tokens (the demo's sentences, one after another)
  padded  every sequence is one sentence (10-18 tokens) padded to 128: the attention mask hides 85-92%
          of the keys, which bitops.attention skips and SDPA computes

Also reports how far each packed model's outputs are from the fake-quant model's (the same
quantizers with dense float math; bitops.demo). Writes CSV, markdown and (with matplotlib) a PNG bar chart.
Usage: python benchmarks/bench_e2e.py [--batches 1 32] [--seq-len 128] [--inputs full padded] [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch

import bitops
from bitops._timing import interleaved_times_ms, paired_ratio
from bitops.demo import SENTENCES, encoder_linear, fake_quant_copy, model_dir
from _report import pin_threads, write_results


def build_models():
    from transformers import AutoTokenizer, BertModel

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    fp32 = BertModel.from_pretrained(path).eval()
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    packed = bitops.quantize_(copy.deepcopy(fp32), bitops.BinaryConfig(act_bits=8), filter_fn=encoder_linear)
    ternary = bitops.quantize_(copy.deepcopy(fp32), bitops.TernaryConfig(act_bits=8), filter_fn=encoder_linear)
    fakes = {"W1A8": fake_quant_copy(packed), "W2A8": fake_quant_copy(ternary)}
    for m in [*packed.modules(), *ternary.modules()]:
        if isinstance(m, (bitops.BinaryLinear, bitops.TernaryLinear)):
            m.freeze()
    fused = copy.deepcopy(packed)
    for model in (fused, ternary):
        bitops.fuse_gelu_(model)
        bitops.fuse_qkv_(model)
    fused_attention = copy.deepcopy(fused)
    for model in (fused_attention, ternary):
        bitops.use_attention_kernel_(model)
    fused_layers = copy.deepcopy(fused_attention)
    for model in (fused_layers, ternary):
        bitops.fuse_encoder_layers_(model)
    models = {"fp32": fp32, "int8 fbgemm": int8, "W1A8 packed": packed, "W1A8 packed, fused": fused,
              "W1A8 packed, fused + attention": fused_attention, "W1A8 packed, fused layers": fused_layers,
              "W2A8 packed, fused layers": ternary}
    return tok, models, fakes


def texts_for(kind: str, batch: int, tok, seq_len: int):
    """``batch`` texts: "padded", one demo sentence each; "full", the sentences one after another
    from a different start per row, long enough to fill ``seq_len`` tokens."""
    if kind == "padded":
        return (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
    per_text = seq_len // min(len(tok(s)["input_ids"]) for s in SENTENCES) + 1
    return [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(per_text)) for i in range(batch)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--inputs", nargs="+", choices=["full", "padded"], default=["full", "padded"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile of the fused W1A8 model (fullgraph; the first call compiles, ~1 min)")
    args = ap.parse_args(argv)
    pin_threads(1)
    torch.manual_seed(0)
    tok, models, fakes = build_models()
    if args.compile:
        models["W1A8 packed, fused, compiled"] = torch.compile(models["W1A8 packed, fused"], fullgraph=True)
    records = []
    for b, inputs in ((b, kind) for kind in args.inputs for b in args.batches):
        texts = texts_for(inputs, b, tok, args.seq_len)
        batch = tok(texts, padding="max_length", truncation=True, max_length=args.seq_len, return_tensors="pt")
        tokens = int(batch["attention_mask"].sum())
        with torch.inference_mode():
            # Round-robin over the models, so that the machine's drift does not enter their ratios.
            calls = {name: (lambda model=model: model(**batch)) for name, model in models.items()}
            rounds = interleaved_times_ms(calls, repeats=args.repeats)
            # Each packed model against the fake-quant model of its own weight format.
            want = {kind: fake(**batch).last_hidden_state for kind, fake in fakes.items()}
            diffs = {name: (models[name](**batch).last_hidden_state - want[name[:4]]).abs()
                     for name in models if name[:4] in want}
        for name, ts in rounds.items():
            d = diffs.get(name)
            # Speed-ups as the median of the per-round ratios (paired_ratio), with their quartiles.
            vs_fp32, vs_fp32_q1, vs_fp32_q3 = paired_ratio(rounds["fp32"], ts)
            vs_int8, vs_int8_q1, vs_int8_q3 = paired_ratio(rounds["int8 fbgemm"], ts)
            records.append({"batch": b, "seq_len": args.seq_len, "inputs": inputs, "real_tokens": tokens, "model": name,
                            "ms": statistics.median(ts), "vs_fp32": vs_fp32, "vs_fp32_q1": vs_fp32_q1, "vs_fp32_q3": vs_fp32_q3,
                            "vs_int8": vs_int8, "vs_int8_q1": vs_int8_q1, "vs_int8_q3": vs_int8_q3,
                            "max_diff_vs_fake_quant": "" if d is None else f"{float(d.max()):.3e}",
                            "mean_diff_vs_fake_quant": "" if d is None else f"{float(d.mean()):.3e}"})
    lines = [f"End to end, all-MiniLM-L6-v2, 1 thread pinned, median of {args.repeats} interleaved rounds, torch {torch.__version__}, "
             f"bitops CPU path {bitops.cpu_isa()}", "",
             "Speed-ups: median of the per-round ratios [quartiles].", "",
             "| batch x tokens | inputs (real tokens) | model | ms | vs fp32 | vs int8 | vs fake-quant: max / mean abs diff |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} x {r['seq_len']} | {r['inputs']} ({r['real_tokens']}) | {r['model']} | {r['ms']:.1f} | "
              f"{r['vs_fp32']:.2f}x [{r['vs_fp32_q1']:.2f}, {r['vs_fp32_q3']:.2f}] | {r['vs_int8']:.2f}x [{r['vs_int8_q1']:.2f}, {r['vs_int8_q3']:.2f}] | "
              + (f"{r['max_diff_vs_fake_quant']} / {r['mean_diff_vs_fake_quant']} |" if r["max_diff_vs_fake_quant"] else "|")
              for r in records]
    write_results(args.out_dir, "e2e", records, "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # One row of panels per input kind, one column per batch size.
        fig, axes = plt.subplots(len(args.inputs), len(args.batches), figsize=(6 * len(args.batches), 4.4 * len(args.inputs)),
                                 squeeze=False)
        for ax, (kind, b) in zip(axes.flat, ((kind, b) for kind in args.inputs for b in args.batches)):
            rs = [r for r in records if r["batch"] == b and r["inputs"] == kind]
            ax.bar([r["model"] for r in rs], [r["ms"] for r in rs], color=["#888", "#c84", "#48c", "#4a8", "#2a6", "#185", "#c48", "#a6c"][: len(rs)])
            ax.set_title(f"batch {b} x {args.seq_len}, {kind} inputs, 1 thread")
            ax.set_ylabel("ms")
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out_dir, "e2e.png"), dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
