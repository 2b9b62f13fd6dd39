"""Export of a frozen packed student and loading it back.

An export folder holds:

* ``model.safetensors``: every tensor of the frozen model: packed int32 words and float32 scales
  of the 1/2-bit layers (``packed_weight``, ``weight_scale``), and the float tensors that stay
  float (position/token-type embeddings, LayerNorm, biases, pooler, classifier);
* ``config.json``: the BERT config with a ``quantization_config`` for transformers'
  ``from_pretrained`` (:mod:`kd.hf`);
* ``bitbert.json``: format name and version, the BERT config, the quantization spec, every packed
  module with its packing format and shapes, the layer map of the reduction, the task (type,
  labels), and the size and sha256 of ``model.safetensors``;
* the tokenizer files.

:func:`load_exported` checks the version, the size and the checksum before reading any tensor, so
a truncated, corrupted or foreign file stops with a clear error instead of giving wrong outputs.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig

import bitops

from .models import PACKED_TYPES, QuantSpec, build_student, freeze_student

FORMAT = "bitbert-packed"
# Version 2 adds ternary word embeddings and TWS-split modules ("halves": 2 in their manifest
# entry); a version-1 folder is a valid version-2 folder without them, so both are read.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
CONFIG_FILE = "bitbert.json"
WEIGHTS_FILE = "model.safetensors"


class ExportError(ValueError):
    """An export folder that cannot be loaded: the message says which file and what is wrong."""


def sha256_file(path: str) -> str:
    """Hex sha256 of the bytes of file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packed_module_states(model: torch.nn.Module) -> dict:
    """fqn -> extra state (format, shapes, activation settings) of every frozen packed module."""
    states = {}
    for fqn, m in model.named_modules():
        if isinstance(m, PACKED_TYPES):
            if not m.frozen:
                raise ValueError(f"module {fqn!r} is not frozen; expected a frozen model (kd.models.freeze_student)")
            states[fqn] = m.get_extra_state()
    if not states:
        raise ValueError("model has no packed layers; expected a student quantized by kd.models.quantize_student")
    return states


def export_student(
    model: torch.nn.Module,
    spec: QuantSpec,
    tokenizer,
    out_dir: str,
    task: dict,
    layer_map: Optional[Sequence[int]] = None,
) -> str:
    """Freeze a copy of the quantized ``model`` and write the export folder. Returns ``out_dir``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder; expected a folder (new or existing) for the export")
    frozen = freeze_student(copy.deepcopy(model).cpu().eval())
    packed = packed_module_states(frozen)
    tensors = {k: v.contiguous() for k, v in frozen.state_dict().items() if isinstance(v, torch.Tensor)}
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, WEIGHTS_FILE)
    tmp = weights + ".tmp"
    # One metadata key: safetensors writes the metadata map in hash order, random per process, so two
    # keys made the bytes (and the recorded sha256) of identical exports differ between runs.
    save_file(tensors, tmp, metadata={"format": f"{FORMAT}/{FORMAT_VERSION}"})
    os.replace(tmp, weights)
    config = frozen.config.to_dict()
    config.pop("_attn_implementation_autoset", None)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bert_config": config,
        "quant": spec.to_dict(),
        "packing": {f.value: {"bits": f.bits, "values": list(f.values), "word": "int32, LSB first, packed along the last dimension"} for f in bitops.PackFormat},
        "packed_modules": packed,
        "layer_map": list(layer_map) if layer_map is not None else None,
        "task": task,
        "weights": {"file": WEIGHTS_FILE, "bytes": os.path.getsize(weights), "sha256": sha256_file(weights)},
    }
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    from .hf import write_config  # here, not at the top: kd.hf imports this module

    write_config(frozen, spec, tensors, task, out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def read_export_config(path: str) -> dict:
    """The bitbert.json of export folder ``path`` as a dict, after checking its format and version."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise ExportError(f"{cfg_path}: no such file; expected a folder written by `bitbert export`")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{cfg_path}: not valid JSON ({e}); the file is damaged, export again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{cfg_path}: format {meta.get('format') if isinstance(meta, dict) else None!r}; expected {FORMAT!r}")
    if meta.get("format_version") not in READ_VERSIONS:
        raise ExportError(
            f"{cfg_path}: format_version {meta.get('format_version')!r}; this bitbert reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}. "
            "Export the model again with this version"
        )
    return meta


def _swap_in_frozen(model: torch.nn.Module, fqn: str, state: dict, cfg_path: str) -> None:
    """Replace module ``fqn`` by an empty frozen packed layer built from its recorded extra state
    (format, shapes, activation settings): the layout comes from the manifest, never from shapes."""
    try:
        old = model.get_submodule(fqn)
    except AttributeError:
        raise ExportError(f"{cfg_path}: packed module {fqn!r} does not exist in the model its bert_config describes") from None
    fmt, split = state.get("format"), state.get("halves", 1) == 2
    sign1, ternary2 = bitops.PackFormat.SIGN1.value, bitops.PackFormat.TERNARY2.value
    if isinstance(old, torch.nn.Embedding) and fmt in (sign1, ternary2):
        cls = bitops.TernaryEmbedding if fmt == ternary2 else bitops.SplitBinaryEmbedding if split else bitops.BinaryEmbedding
        new = cls(state["num_embeddings"], state["embedding_dim"], old.padding_idx)
    elif isinstance(old, torch.nn.Linear) and fmt in (sign1, ternary2):
        kwargs = dict(bias=old.bias is not None, act_bits=state["act_bits"], act_quant=state["act_quant"], granularity=state["granularity"])
        if fmt == sign1 and split:
            new = bitops.SplitBinaryLinear(state["in_features"], state["out_features"], **kwargs)
        else:
            cls = bitops.BinaryLinear if fmt == sign1 else bitops.TernaryLinear
            new = cls(state["in_features"], state["out_features"],
                      group_size=state["group_size"] if state["granularity"] == "group" else None, **kwargs)
    else:
        raise ExportError(f"{cfg_path}: packed module {fqn!r} has format {fmt!r} over a {type(old).__name__}; expected sign1/ternary2 Linear or Embedding")
    try:
        new.set_extra_state(state)
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{cfg_path}: packed module {fqn!r} does not match the manifest's own description: {e}") from None
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new.freeze())


def verify_weights(path: str, meta: dict) -> str:
    """Check the weights file of export folder ``path`` against ``meta`` (its bitbert.json): present,
    of the recorded size and sha256. Returns the file's path; raises :class:`ExportError` naming it."""
    weights = os.path.join(path, meta["weights"]["file"])
    if not os.path.isfile(weights):
        raise ExportError(f"{weights}: no such file; expected the weights named in {CONFIG_FILE}")
    size = os.path.getsize(weights)
    if size != meta["weights"]["bytes"]:
        raise ExportError(f"{weights}: {size} bytes; expected {meta['weights']['bytes']} (truncated or replaced file)")
    digest = sha256_file(weights)
    if digest != meta["weights"]["sha256"]:
        raise ExportError(f"{weights}: sha256 {digest}; expected {meta['weights']['sha256']} (the file is corrupted)")
    return weights


def load_exported(path: str, device: str = "cpu", fuse_gelu: bool = True, fuse_qkv: bool = True,
                  fuse_layers: bool = True, exact: bool = False):
    """(model, tokenizer, meta) from an export folder; the model is frozen, in eval mode, and runs
    on the packed kernels. ``fuse_gelu``: each FFN's GELU runs inside the next packed layer's input
    quantization (bitops.fuse_gelu_; ~10% faster at batch 32 x 128 on CPU). ``fuse_qkv``: each
    attention's query, key and value run as one GEMM in inference (bitops.fuse_qkv_; same outputs bit
    for bit). ``fuse_layers``: each encoder layer runs as one lean sequence of ops in CPU inference,
    its add & norms on bitops' kernel with the quantization after them (bitops.fuse_encoder_layers_,
    which groups query, key and value too; ~15% faster at batch 1 x 128). bitops' GELU and LayerNorm
    differ from torch's by float rounding, so an int8 code on a rounding boundary may move by one;
    ``exact=True`` keeps torch's (no fuse_gelu, layers fused exactly): the training student's
    outputs bit for bit. All change structure only: the state_dict is the same either way."""
    meta = read_export_config(path)
    weights = verify_weights(path, meta)
    tensors = load_file(weights)
    model = build_student(BertConfig.from_dict(meta["bert_config"]), None, frozen=False)
    for fqn, state in meta["packed_modules"].items():
        _swap_in_frozen(model, fqn, state, cfg_path=os.path.join(path, CONFIG_FILE))
    if fuse_gelu and not exact:
        bitops.fuse_gelu_(model)
    if fuse_qkv:
        bitops.fuse_qkv_(model)
    if fuse_layers:
        bitops.fuse_encoder_layers_(model, exact=exact)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (RuntimeError, ValueError) as e:  # shapes or packed-layer metadata differ from the manifest's
        raise ExportError(f"{weights}: the tensors do not match the manifest {CONFIG_FILE}: {e}") from None
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ExportError(f"{weights}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}; expected the layout in {CONFIG_FILE}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer, meta


def predict(model_dir: str, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> List[dict]:
    """Run the exported model in ``model_dir`` on ``texts`` (what ``bitbert predict`` prints).

    Returns one dict per text: ``{"label": name or index, "score": probability}`` for classification,
    ``{"score": value}`` for regression, in the order of ``texts``. Texts are truncated to
    ``max_length`` tokens and run on the packed kernels in batches of ``batch_size`` texts of similar
    length (sorted by token count), so that a batch pads little."""
    model, tok, meta = load_exported(model_dir)
    labels = meta["task"].get("labels") or []
    regression = meta["task"].get("task_type") == "regression"
    fields = ("input_ids", "token_type_ids", "attention_mask")
    enc = tok(list(texts), truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    out: List[dict] = [{}] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tok.pad({k: [enc[k][i] for i in rows] for k in fields if k in enc}, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        for i, row in zip(rows, logits):
            if regression:
                out[i] = {"score": float(row[0])}
            else:
                probs = row.softmax(-1)
                k = int(probs.argmax())
                out[i] = {"label": labels[k] if k < len(labels) else k, "score": float(probs[k])}
    return out
