"""Ternary Weight Splitting (bitops.tws): exactness of the split on the real MiniLM weights, the
split layers' training/frozen/export behaviour, and the edge cases of the formulas."""
import copy

import pytest
import torch

import bitops
from bitops import reference as R
from bitops import quantizers as Q
from kd import export
from kd.models import QuantSpec, load_classifier, quantize_student, teacher_base_path

from kd_helpers import one_thread  # noqa: F401  (autouse fixture)

SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate cliches from start to finish,",
    "it's a charming and often affecting journey.",
]


@pytest.fixture(scope="module")
def minilm():
    """(classifier with a seeded head, tokenizer, encoded sentences) of the embedded MiniLM base."""
    from transformers import AutoTokenizer

    path = teacher_base_path()
    torch.manual_seed(0)
    model = load_classifier(path, 2, "classification").eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    return model, tok, {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


def _ternary_spec(granularity, act_bits=8, act_quant="pact", split=False):
    return QuantSpec(attention=2, ffn1=2, ffn2=2, pooler=2, embedding_bits=2, act_bits=act_bits,
                     granularity=granularity, act_quant=act_quant, split=split)


def _binarize64(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """sign(w) * mean|w| in float64 (sign(0) = +1, bitops' convention), per matrix or per row."""
    mean = w.abs().mean() if granularity == "tensor" else w.abs().mean(-1, keepdim=True)
    return torch.where(w >= 0, 1.0, -1.0).to(torch.float64) * mean


REAL_MATRICES = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.3.intermediate.dense",
                 "bert.encoder.layer.5.output.dense", "bert.pooler.dense"]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("fqn", REAL_MATRICES)
def test_split_is_exact_in_float64_on_minilm(minilm, fqn, granularity):
    model = minilm[0]
    w = model.get_submodule(fqn).weight.detach()
    w1, w2, codes, alpha = bitops.tws_weights(w, granularity)
    assert w1.dtype == w2.dtype == torch.float64
    # The ternary layer's own codes and scale (float32): TWS starts from exactly these.
    t_codes, t_scale, _ = Q.quantize_weight(w, 2, granularity)
    assert torch.equal(codes, t_codes)
    torch.testing.assert_close(alpha.float(), t_scale, rtol=1e-6, atol=0)
    half = alpha[:, 0] / 2 if granularity == "row" else alpha[0, 0] / 2
    m1 = w1.abs().mean(-1) if granularity == "row" else w1.abs().mean()
    m2 = w2.abs().mean(-1) if granularity == "row" else w2.abs().mean()
    torch.testing.assert_close(m1, half, rtol=1e-12, atol=0)
    torch.testing.assert_close(m2, half, rtol=1e-12, atol=0)
    # The kernels take float32 scales, so the float64 check runs in the pure-torch reference: the
    # split layer's packed codes, unpacked by bitops.reference, with float64 scales.
    split = bitops.SplitBinaryLinear(w.shape[1], w.shape[0], granularity=granularity, dtype=torch.float64)
    with torch.no_grad():
        split.weight.copy_(torch.cat([w1, w2], 1))
    packed, _ = split.packed_weight_and_scale()
    c = R.unpack_bits(packed, 1, 2 * w.shape[1]).to(torch.float64)
    c1, c2 = c[:, : w.shape[1]], c[:, w.shape[1]:]
    assert torch.equal(c1 + c2, 2 * codes.to(torch.float64))  # sign(w1) + sign(w2) = 2 t
    w_split = _binarize64(w1, granularity) + _binarize64(w2, granularity)
    w_tern = codes.to(torch.float64) * alpha
    torch.manual_seed(1)
    x = torch.randn(7, w.shape[1], dtype=torch.float64)
    torch.testing.assert_close(x @ w_split.T, x @ w_tern.T, rtol=0, atol=1e-10)


def test_embedding_split_is_exact_per_row_on_minilm(minilm):
    w = minilm[0].bert.embeddings.word_embeddings.weight.detach()
    w1, w2, codes, alpha = bitops.tws_weights(w, "row")
    torch.testing.assert_close(w1.abs().mean(-1), alpha[:, 0] / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(w2.abs().mean(-1), alpha[:, 0] / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(_binarize64(w1, "row") + _binarize64(w2, "row"), codes.to(torch.float64) * alpha, rtol=0, atol=1e-10)
    emb = bitops.TernaryEmbedding.from_embedding(minilm[0].bert.embeddings.word_embeddings)
    split = bitops.SplitBinaryEmbedding.from_ternary(emb)
    ids = minilm[2]["input_ids"]
    torch.testing.assert_close(split(ids), emb(ids), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_split_model_logits_equal_ternary_fp32(minilm, granularity):
    """Float activations: nothing is re-quantized between layers, so the split model must give the
    ternary model's logits to fp32 rounding (A8: see the next test)."""
    model, _, batch = minilm
    tern = quantize_student(copy.deepcopy(model), _ternary_spec(granularity, act_bits=None)).eval()
    split = bitops.tws_split_(copy.deepcopy(tern)).eval()
    assert not any(isinstance(m, (bitops.TernaryLinear, bitops.TernaryEmbedding)) for m in split.modules())
    with torch.no_grad():
        want, got = tern(**batch).logits, split(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("act_quant", ["pact", "dynamic", "lsq"])
def test_split_layers_match_ternary_layers_with_int8_activations(minilm, act_quant):
    """With A8, each split layer, fed the very input its ternary layer got, gives the same int8
    codes and GEMM integers, so outputs agree to the fp32 epilogue's rounding. (Through the whole
    model a 1-ulp difference can move a later activation across an int8 rounding boundary, so the
    model-level check above runs with float activations.)"""
    model, _, batch = minilm
    tern = quantize_student(copy.deepcopy(model), _ternary_spec("row", act_quant=act_quant)).eval()
    split = bitops.tws_split_(copy.deepcopy(tern)).eval()
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, fqn=fqn: inputs.__setitem__(fqn, (i[0], o)))
             for fqn, m in tern.named_modules() if isinstance(m, bitops.TernaryLinear)]
    with torch.no_grad():
        tern(**batch)
        for h in hooks:
            h.remove()
        assert len(inputs) == 6 * 6 + 1
        for fqn, (x, y) in inputs.items():
            layer = split.get_submodule(fqn)
            assert isinstance(layer, bitops.SplitBinaryLinear)
            torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5 * float(y.abs().max()), msg=fqn)


def test_split_model_survives_export_and_reload(minilm, tmp_path):
    model, tok, batch = minilm
    spec = _ternary_spec("tensor")
    tern = quantize_student(copy.deepcopy(model), spec)
    split = bitops.tws_split_(tern).eval()
    with torch.no_grad():
        want = split(**batch).logits
    out = export.export_student(split, QuantSpec(**{**spec.to_dict(), "split": True}), tok, str(tmp_path / "e"),
                                {"task": "t", "task_type": "classification", "labels": ["n", "p"]})
    meta = export.read_export_config(out)
    assert meta["format_version"] == 2 and meta["quant"]["split"] is True
    halves = {fqn: s.get("halves") for fqn, s in meta["packed_modules"].items()}
    assert len(halves) == 6 * 6 + 2 and set(halves.values()) == {2}
    loaded, _, _ = export.load_exported(out)
    assert isinstance(loaded.bert.embeddings.word_embeddings, bitops.SplitBinaryEmbedding)
    assert isinstance(loaded.bert.encoder.layer[2].output.dense, bitops.SplitBinaryLinear)
    with torch.no_grad():
        got = loaded(**batch).logits
    assert torch.equal(got, want)
    sd = loaded.state_dict()
    # 1 bit per half-weight: as many packed words as the ternary (2-bit) matrix would take.
    assert sd["bert.encoder.layer.0.intermediate.dense.packed_weight"].shape == (1536, 2 * 384 // 32)
    assert sd["bert.embeddings.word_embeddings.packed_weight"].shape == (30522, 2 * 384 // 32)
    assert sd["bert.embeddings.word_embeddings.weight_scale"].shape == (30522, 2)


# ---------------------------------------------------------------------------------------------
# Small layers: edge cases, training, freezing


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_split_edge_rows(granularity):
    w = torch.randn(4, 40)
    w[1] = 0.0  # all zero: no kept weight
    w[2] = torch.where(torch.arange(40) % 2 == 0, 1.0, -1.0) * 0.3  # equal magnitudes: no zero code
    w[3, :5] = 0.0  # exact zeros fall in K (w <= 0)
    t = bitops.TernaryLinear(40, 4, act_bits=None, granularity=granularity)
    with torch.no_grad():
        t.weight.copy_(w)
    s = bitops.SplitBinaryLinear.from_ternary(t)
    x = torch.randn(3, 40)
    torch.testing.assert_close(s(x), t(x), rtol=1e-6, atol=1e-6)
    w1, w2, codes, alpha = bitops.tws_weights(w, granularity)
    assert torch.isfinite(w1).all() and torch.isfinite(w2).all()
    if granularity == "row":
        assert float(alpha[1, 0]) == 0.0 and float(w1[1].abs().max()) == 0.0 and float(w2[1].abs().max()) == 0.0


def test_split_trains_both_halves_and_freezes_bitwise():
    torch.manual_seed(3)
    t = bitops.TernaryLinear(70, 9, act_bits=8, act_quant="pact", granularity="row")
    s = bitops.SplitBinaryLinear.from_ternary(t)
    assert torch.equal(s.act_clip, t.act_clip)
    x = torch.randn(5, 70, requires_grad=True)
    y = s(x)
    (y * torch.randn_like(y)).sum().backward()
    k = 70
    # STE: both halves get the gradient of the binarized weights they feed, which is the same
    assert torch.equal(s.weight.grad[:, :k], s.weight.grad[:, k:]) and s.weight.grad.abs().sum() > 0
    assert x.grad is not None and s.act_clip.grad is not None and s.bias.grad is not None
    opt = torch.optim.SGD(s.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        want = s(x)
    frozen = copy.deepcopy(s).freeze()
    assert frozen.packed_weight.shape == (9, 5) and frozen.weight_scale.shape == (9, 2)
    with torch.no_grad():
        assert torch.equal(frozen(x), want)
    fresh = bitops.SplitBinaryLinear(70, 9, act_bits=8, act_quant="pact", granularity="row")
    fresh.load_state_dict(frozen.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), want)
    plain = bitops.BinaryLinear(70, 9, act_bits=8, act_quant="pact", granularity="row")
    with pytest.raises(ValueError, match="halves"):
        plain.load_state_dict(frozen.state_dict())


def test_split_embedding_trains_and_freezes_bitwise():
    e = bitops.TernaryEmbedding(30, 40, padding_idx=0)
    s = bitops.SplitBinaryEmbedding.from_ternary(e)
    ids = torch.tensor([[0, 3, 7], [29, 3, 1]])
    s(ids).sum().backward()
    assert s.weight.grad[0].abs().sum() == 0 and s.weight.grad[3].abs().sum() > 0
    with torch.no_grad():
        want = s(ids)
    s.freeze()
    assert s.packed_weight.shape == (30, 4) and s.weight_scale.shape == (30, 2)
    assert torch.equal(s(ids), want)


def test_split_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="granularity='group'; expected one of"):
        bitops.tws_weights(torch.randn(3, 8), "group")
    g = bitops.TernaryLinear(64, 3, granularity="group", group_size=32)
    with pytest.raises(ValueError, match=r"granularity='group'; expected one of \('tensor', 'row'\)"):
        bitops.SplitBinaryLinear.from_ternary(g)
    with pytest.raises(TypeError, match="expected bitops.TernaryLinear"):
        bitops.SplitBinaryLinear.from_ternary(bitops.BinaryLinear(8, 3))
    with pytest.raises(ValueError, match="frozen"):
        bitops.SplitBinaryLinear.from_ternary(bitops.TernaryLinear(8, 3).freeze())
    with pytest.raises(ValueError, match="no TernaryLinear"):
        bitops.tws_split_(torch.nn.Sequential(torch.nn.Linear(3, 3)))
