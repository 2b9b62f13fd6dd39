"""kd.models (layer reduction, the quantized student, attention capture) and bitops.BinaryEmbedding."""
import pytest
import torch
from transformers import BertForSequenceClassification

import bitops
from bitops import quantizers as Q
from kd import models
from kd.models import QuantSpec

from kd_helpers import one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)


def tiny_model(layers=4, dropout=0.0):
    cfg = tiny_config(layers, dropout)
    cfg._attn_implementation = models.ATTN_IMPLEMENTATION
    return BertForSequenceClassification(cfg).eval()


def batch(t=7):
    ids = torch.randint(1000, 2000, (3, t))
    mask = torch.ones(3, t, dtype=torch.int64)
    mask[1, 4:] = 0
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


@pytest.mark.parametrize("teacher,student,want", [(12, 6, [1, 3, 5, 7, 9, 11]), (12, 5, [2, 4, 6, 8, 10]), (6, 3, [1, 3, 5]), (6, 6, list(range(6))), (6, 1, [5])])
def test_skip_layers(teacher, student, want):
    assert models.skip_layers(teacher, student) == want


def test_skip_layers_rejects_bad_counts():
    with pytest.raises(ValueError, match="student_layers=7"):
        models.skip_layers(6, 7)


def test_reduce_layers_copies_exactly():
    teacher = tiny_model(4)
    student = models.reduce_layers(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t, s = teacher.state_dict(), student.state_dict()
    for key, v in s.items():
        if key.startswith("bert.encoder.layer."):
            i, rest = key[len("bert.encoder.layer."):].split(".", 1)
            src = t[f"bert.encoder.layer.{[1, 3][int(i)]}.{rest}"]
        else:
            src = t[key]
        assert torch.equal(v, src), key
    assert set(k for k in s if not k.startswith("bert.encoder.")) == set(k for k in t if not k.startswith("bert.encoder."))
    with pytest.raises(ValueError, match=r"teacher_layers=\[4\]"):
        models.reduce_layers(teacher, [4])


def test_captured_scores_are_pre_softmax_q_kT():
    model = tiny_model(2)
    b = batch()
    _, hidden, scores = models.forward_with_internals(model, b)
    assert len(scores) == 2 and len(hidden) == 3
    att = model.bert.encoder.layer[0].attention.self
    x = hidden[0]
    q = att.query(x).view(3, 7, 2, 16).transpose(1, 2)
    k = att.key(x).view(3, 7, 2, 16).transpose(1, 2)
    torch.testing.assert_close(scores[0], q @ k.transpose(2, 3) / 4.0)
    # capture is off outside the block and the model output does not depend on it
    logits_plain = model(**b).logits
    torch.testing.assert_close(logits_plain, models.forward_with_internals(model, b)[0])
    assert models._capture.scores is None


def test_padding_is_masked():
    # A padded sequence gives the hidden states it gives alone: transformers passes kd's attention the
    # padding mask only because kd registers a mask function for its attention name (without it, the
    # mask was None and padded tokens were attended to).
    model = tiny_model(2)
    b = batch()
    with torch.no_grad():
        padded = model.bert(**b).last_hidden_state[1, :4]
        alone = model.bert(**{k: v[1:2, :4] for k, v in b.items()}).last_hidden_state[0]
        unmasked = model.bert(**{**b, "attention_mask": torch.ones_like(b["attention_mask"])}).last_hidden_state[1, :4]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert (padded - unmasked).abs().max() > 1e-2  # the padding does change the output when attended to


def test_quantize_student_module_set():
    model = tiny_model(2)
    models.quantize_student(model, QuantSpec(ffn2=2))
    layer = model.bert.encoder.layer[0]
    for m in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value, layer.attention.output.dense, layer.intermediate.dense):
        assert type(m) is bitops.BinaryLinear and m.act_bits == 8
    assert type(layer.output.dense) is bitops.TernaryLinear
    assert type(model.bert.embeddings.word_embeddings) is bitops.BinaryEmbedding
    assert type(model.bert.embeddings.position_embeddings) is torch.nn.Embedding
    assert type(model.bert.pooler.dense) is torch.nn.Linear and type(model.classifier) is torch.nn.Linear
    models.quantize_student(model, QuantSpec(pooler=1))
    assert type(model.bert.pooler.dense) is bitops.BinaryLinear and type(model.classifier) is torch.nn.Linear
    with pytest.raises(ValueError, match="ffn1 bits=None"):
        QuantSpec(ffn1=None)
    with pytest.raises(ValueError, match="ffn1 bits=3"):
        QuantSpec(ffn1=3)


def test_frozen_student_matches_training_student_exactly():
    model = tiny_model(2)
    models.quantize_student(model, QuantSpec())
    b = batch()
    with torch.no_grad():
        want = model(**b).logits
        models.freeze_student(model)
        got = model(**b).logits
    assert torch.equal(got, want)


# -- BinaryEmbedding --------------------------------------------------------------------------

def test_binary_embedding_lookup_and_freeze():
    emb = torch.nn.Embedding(50, 40, padding_idx=0)
    layer = bitops.BinaryEmbedding.from_embedding(emb)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    codes, scale, _ = Q.quantize_weight(emb.weight, 1, "row")
    want = (codes.float() * scale)[ids]
    out = layer(ids)
    assert torch.equal(out, want)
    frozen = bitops.BinaryEmbedding.from_embedding(emb).freeze()
    assert "weight" not in dict(frozen.named_parameters())
    assert frozen.packed_weight.dtype == torch.int32 and frozen.packed_weight.shape == (50, 2)
    assert torch.equal(frozen.packed_weight, bitops.pack(codes, 1))
    assert torch.equal(frozen(ids), want)
    # a frozen state_dict loads into a fresh training layer
    fresh = bitops.BinaryEmbedding(50, 40, padding_idx=0)
    fresh.load_state_dict(frozen.state_dict())
    assert fresh.frozen and torch.equal(fresh(ids), want)


def test_binary_embedding_ste_gradient():
    emb = torch.nn.Embedding(10, 8)
    layer = bitops.BinaryEmbedding.from_embedding(emb)
    ids = torch.tensor([2, 5, 2])
    g = torch.randn(3, 8)
    layer(ids).backward(g)
    want = torch.zeros(10, 8)
    want.index_add_(0, ids, g)
    assert torch.equal(layer.weight.grad, want)


def test_binary_embedding_errors():
    layer = bitops.BinaryEmbedding(10, 8)
    with pytest.raises(ValueError, match=r"ids hold values in \[0, 10\]; expected ids in \[0, 10\)"):
        layer(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="ids has dtype torch.float32"):
        layer(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="embedding_dim=0"):
        bitops.BinaryEmbedding(10, 0)
    other = bitops.BinaryEmbedding(10, 16).freeze()
    with pytest.raises(ValueError, match="embedding_dim=16"):
        layer.load_state_dict(other.state_dict())
