"""bitops.fuse_encoder_layers_: a BERT-family encoder layer of frozen packed layers runs as one lean
sequence of ops in CPU inference, with the layer's own outputs bit for bit, and every call it cannot
take (training, gradients, attention weights, hooks, ...) runs the layer's own forward."""
import collections
import copy
import io

import pytest
import torch

from torch.utils._python_dispatch import TorchDispatchMode

import bitops
from bitops.api import _EncoderLayerPlan
from conftest import run_in_threads

CONFIGS = {
    "W1A8": bitops.BinaryConfig(act_bits=8, freeze=True),
    "W2A8": bitops.TernaryConfig(act_bits=8, freeze=True),
    "W1A4 per tensor": bitops.BinaryConfig(act_bits=4, granularity="tensor", freeze=True),
    "W1A8 groups of 16": bitops.BinaryConfig(act_bits=8, granularity="group", group_size=16, freeze=True),
}


def small_bert(attn_implementation="sdpa", **kw):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def packed_bert(config=CONFIGS["W1A8"], **kw):
    return bitops.quantize_(small_bert(**kw), config)


@pytest.fixture
def fused_runs(monkeypatch):
    """How many layer calls took the fused path."""
    calls = []
    real = _EncoderLayerPlan.run
    monkeypatch.setattr(_EncoderLayerPlan, "run", lambda self, *a: calls.append(1) or real(self, *a))
    return calls


@pytest.fixture
def layer_op_calls(monkeypatch):
    """The fused layers' encoder_layer_int8 calls."""
    import bitops.api

    calls = []
    real = bitops.api._ENCODER_LAYER
    monkeypatch.setattr(bitops.api, "_ENCODER_LAYER", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def inputs(batch, length, pad=0, seed=1):
    ids = torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, length, dtype=torch.int64)
    if pad:
        mask[0, length - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


class OpCounts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "bitops":
            self.counts[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention", ["sdpa", "bitops"])
@pytest.mark.parametrize("gelu", ["fused GELU", "torch GELU"])
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_fused_layers_give_the_layers_own_outputs(config, gelu, attention, fused_runs, layer_op_calls):
    model = packed_bert(config)
    if gelu == "fused GELU":
        bitops.fuse_gelu_(model)
    if attention == "bitops":
        bitops.use_attention_kernel_(model)
    exact, fused = copy.deepcopy(model), copy.deepcopy(model)
    assert bitops.fuse_encoder_layers_(exact, exact=True) == 2
    assert bitops.fuse_encoder_layers_(fused) == 2
    assert bitops.fuse_encoder_layers_(fused) == 2  # again: new plans, nothing grouped twice
    a, b = model.state_dict(), fused.state_dict()  # structure only
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    # 60 rows with a padded sequence: the GEMM kernels and a boolean mask; 5 and 1 rows: the GEMV paths.
    for batch in (inputs(3, 20, pad=7), inputs(1, 5), inputs(1, 1)):
        for mode in (torch.inference_mode, torch.no_grad):
            with mode():
                want = model(**batch).last_hidden_state
                before = len(fused_runs)
                # exact: torch's LayerNorm, the layer's own ops on the same tensors.
                assert torch.equal(exact(**batch).last_hidden_state, want)
                # Default: bitops' add & norm (float rounding apart), whose codes feed the next GEMM.
                with OpCounts() as ops:
                    got = fused(**batch).last_hidden_state
                torch.testing.assert_close(got, want, rtol=0, atol=3e-2)
                assert (got - want).abs().mean() < 1e-3
                assert len(fused_runs) == before + 4
                one_op = gelu == "fused GELU" and attention == "bitops"
                # With the GELU fused and bitops' attention each layer is one encoder_layer_int8 call
                # (test_one_op_is_the_python_sequence).
                assert len(layer_op_calls) == (2 if one_op else 0)
                layer_op_calls.clear()
                if one_op and mode is torch.inference_mode:
                    # No autograd keys: the dispatch mode sees the op whole (under no_grad, the ops it calls).
                    assert ops.counts["encoder_layer_int8"] == 2 and ops.counts["quantize_rows_int8"] == 1, ops.counts
                else:
                    # Per layer: quantize the attention output and the FFN's middle; the first layer also its
                    # input (the second gets the first's last add & norm codes); the pooler its input. The
                    # last add & norm has no packed layer to serve: torch's LayerNorm.
                    assert ops.counts["add_layer_norm_int8"] == 3 and ops.counts["quantize_rows_int8"] == 6, ops.counts


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_one_op_is_the_python_sequence(config, fused_runs, layer_op_calls):
    # With the GELU fused and bitops' attention, a fused layer is one encoder_layer_int8 call: the same
    # ops in the same order as the Python sequence, so the same outputs bit for bit (GEMM and GEMV row
    # counts, masks, the first layer quantizing its input and the second taking the codes handed on).
    model = packed_bert(config)
    bitops.fuse_gelu_(model)
    bitops.use_attention_kernel_(model)
    assert bitops.fuse_encoder_layers_(model) == 2
    plans = [layer.forward for layer in model.encoder.layer]
    assert all(p.one_op for p in plans)
    for batch in (inputs(3, 20, pad=7), inputs(2, 9), inputs(1, 5), inputs(1, 1)):
        for mode in (torch.inference_mode, torch.no_grad):
            with mode():
                got = model(**batch).last_hidden_state
                assert len(layer_op_calls) == 2
                for p in plans:
                    p.one_op = False
                want = model(**batch).last_hidden_state
                assert len(layer_op_calls) == 2
                for p in plans:
                    p.one_op = True
                layer_op_calls.clear()
                assert torch.equal(got, want)
    assert len(fused_runs) == 4 * 2 * 4
    x = torch.randn(9, 2, 32).transpose(0, 1)  # a (B, T, H) input that is not contiguous
    with torch.no_grad():
        got = plans[1](x)
        assert len(layer_op_calls) == 1
        plans[1].one_op = False
        assert torch.equal(got, plans[1](x)) and len(layer_op_calls) == 1


def test_layer_op_matches_its_reference():
    # bitops.reference.encoder_layer_int8: the same sequence of the ops' pure-torch references.
    from bitops import reference

    model = packed_bert(CONFIGS["W1A8"])
    bitops.fuse_gelu_(model)
    bitops.fuse_encoder_layers_(model)
    plan = model.encoder.layer[0].forward
    args = plan.layer_op_args(torch.randn(2, 7, 32), None, None, 8)
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    for gemv in (False, True):
        a = dict(args, attn_mask=mask, gemv_weights=[m.gemv_layout() if gemv else None for m in plan.layer_op_modules()])
        with torch.no_grad():
            out, q, s = bitops.ops.encoder_layer_int8(**a)
            r_out, r_q, r_s = reference.encoder_layer_int8(**a)
        torch.testing.assert_close(out, r_out, rtol=0, atol=1e-4)
        assert q.shape == r_q.shape and (q.int() - r_q.int()).abs().max() <= 1 and (q != r_q).float().mean() < 0.01
        torch.testing.assert_close(s, r_s, rtol=1e-5, atol=0)


def test_codes_handed_on_only_for_the_tensor_they_belong_to(fused_runs):
    model = packed_bert()
    fused = copy.deepcopy(model)
    bitops.fuse_encoder_layers_(fused)
    batch = inputs(2, 9)
    for m in (model, fused):  # a hook that writes layer 0's output in place: layer 1 must quantize it anew
        m.encoder.layer[0].register_forward_hook(lambda mod, args, out: out.mul_(-2.0))
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        with OpCounts() as ops:
            got = fused(**batch).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=3e-2)
    assert len(fused_runs) == 2 and ops.counts["quantize_rows_int8"] == 7  # 3 a layer and the pooler's (6 without the hook)
    # A layer called on another tensor than the one handed on, or in another order: its own codes.
    with torch.no_grad():
        x = torch.randn(2, 9, 32)
        want = model.encoder.layer[1](model.encoder.layer[0](x))
        fused.encoder.layer[0](x)
        torch.testing.assert_close(fused.encoder.layer[1](want * 0 + x), model.encoder.layer[1](x), rtol=0, atol=3e-2)


def test_what_runs_the_layers_own_forward(fused_runs):
    model = packed_bert()
    bitops.fuse_encoder_layers_(model, exact=True)  # every path gives the same outputs
    batch = inputs(2, 9, pad=3)
    with torch.no_grad():
        want = model(**batch).last_hidden_state
    assert len(fused_runs) == 2
    fused_runs.clear()

    # Grad enabled and parameters that want gradients (LayerNorm, biases): autograd through the layers.
    out = model(**batch).last_hidden_state
    assert out.requires_grad
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)  # the training-path quantizer (an STE)
    out.sum().backward()
    assert model.encoder.layer[0].output.LayerNorm.weight.grad is not None
    # Attention weights asked for: the layer's own attention module is called (SDPA has none to give).
    # transformers leaves its capture hooks on the attention modules: idle, they do not stop the fused
    # path later, and hidden states asked for are recorded on the layers.
    with torch.no_grad():
        model(**batch, output_attentions=True)
        assert fused_runs == []
        hidden = model(**batch, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and torch.equal(hidden[2], want) and fused_runs == [1, 1]
    fused_runs.clear()
    # A hook on a submodule that the fused path skips: it fires.
    seen = []
    handle = model.encoder.layer[1].intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, want)
    handle.remove()
    assert seen == [(2, 9, 128)]
    # Training mode.
    model.train()
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, want)  # dropout 0 in this config
    model.eval()
    assert fused_runs == [1]  # only layer 0 of the hooked call
    fused_runs.clear()

    # Grad enabled, no parameter wanting one: nothing to keep, the fused path.
    model.requires_grad_(False)
    assert torch.equal(model(**batch).last_hidden_state, want) and len(fused_runs) == 2
    # bf16 input: the layer's own forward.
    fused_runs.clear()
    with torch.no_grad():
        hidden = torch.randn(2, 9, 32)
        layer = model.encoder.layer[0]
        assert layer(hidden.bfloat16()).dtype == torch.bfloat16
        assert fused_runs == []
        layer(hidden)
        assert fused_runs == [1]


def test_eager_attention_and_other_attention_functions(fused_runs):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    model = packed_bert(attn_implementation="eager")
    assert bitops.fuse_encoder_layers_(model) == 2
    batch = inputs(2, 9, pad=3)
    with torch.no_grad():
        eager = model(**batch).last_hidden_state
    assert fused_runs == []  # "eager" is the layer's own code: its forward runs it
    # The fused path calls the model's registered attention function, with its side effects
    # (kd's captures of attention scores go through it).
    calls = []
    AttentionInterface.register("test_spy", lambda *a, **kw: calls.append(1) or sdpa_attention_forward(*a, **kw))
    AttentionMaskInterface.register("test_spy", sdpa_mask)
    model.set_attn_implementation("test_spy")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, eager, rtol=1e-5, atol=1e-5)
    assert calls == [1, 1] and fused_runs == [1, 1]


def test_attention_functions_that_run_bitops_attention_are_called_as_the_op(fused_runs, monkeypatch):
    # kd's capturing attention runs bitops.attention unless scores are being captured, and says so
    # (bitops.api.BITOPS_ATTENTION_WHEN): the fused path then calls the op itself, and goes through the
    # function while a capture is active.
    import kd.models as km

    model = packed_bert(attn_implementation=km.ATTN_IMPLEMENTATION)
    fused = copy.deepcopy(model)
    assert bitops.fuse_encoder_layers_(fused, exact=True) == 2
    wrapper_calls = []
    real = bitops.attention
    monkeypatch.setattr(bitops, "attention", lambda *a, **kw: wrapper_calls.append(1) or real(*a, **kw))
    batch = inputs(2, 9, pad=3)
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        assert len(wrapper_calls) == 2  # the layers' own forwards: through capturing_attention
        with OpCounts() as ops:
            got = fused(**batch).last_hidden_state
        assert torch.equal(got, want) and len(wrapper_calls) == 2 and ops.counts["attention"] == 2
        assert len(fused_runs) == 2
        with km.capture_attention_scores() as want_scores:
            want = model(**batch).last_hidden_state
        with km.capture_attention_scores() as scores:
            got = fused(**batch).last_hidden_state
    assert len(fused_runs) == 4 and len(scores) == 2 and all(torch.equal(a, b) for a, b in zip(scores, want_scores))
    assert torch.equal(got, want)


def test_copies_and_pickles_keep_their_own_layers(fused_runs):
    model = packed_bert()
    bitops.fuse_encoder_layers_(model)
    batch = inputs(2, 6)
    with torch.no_grad():
        want = model(**batch).last_hidden_state
    twin = copy.deepcopy(model)
    layer = twin.encoder.layer[0]
    assert layer.forward.layer is layer  # the copy's own, not the original's
    with torch.no_grad():
        twin.encoder.layer[1].output.dense.packed_weight.neg_()  # the copy's weights only
        assert not torch.equal(twin(**batch).last_hidden_state, want)
        assert torch.equal(model(**batch).last_hidden_state, want)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).last_hidden_state, want)


def test_weights_loaded_after_fusing_are_used():
    model = packed_bert()
    other = packed_bert()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = inputs(2, 6)
    with torch.no_grad():
        want = other(**batch).last_hidden_state
    bitops.fuse_encoder_layers_(model, exact=True)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.equal(model(**batch).last_hidden_state, want)


def test_only_what_it_can():
    assert bitops.fuse_encoder_layers_(small_bert()) == 0  # nn.Linear
    assert bitops.fuse_encoder_layers_(packed_bert(bitops.BinaryConfig(act_bits=8))) == 0  # not frozen
    assert bitops.fuse_encoder_layers_(packed_bert(bitops.BinaryConfig(act_bits=None, freeze=True))) == 0  # float activations
    assert bitops.fuse_encoder_layers_(packed_bert(bitops.BinaryConfig(act_bits=8, act_quant="pact", freeze=True))) == 0
    half = bitops.quantize_(small_bert(), CONFIGS["W1A8"], filter_fn=lambda m, name: "intermediate" not in name)
    assert bitops.fuse_encoder_layers_(half) == 0  # FFN1 stays float
    decoder = packed_bert(is_decoder=True, add_cross_attention=True)
    assert bitops.fuse_encoder_layers_(decoder) == 0
    with pytest.raises(TypeError, match=r"model is a str; expected a torch.nn.Module"):
        bitops.fuse_encoder_layers_("bert")


def test_other_attention_classes_and_replaced_modules(fused_runs):
    # A self-attention of another class with the same submodules (RoFormer's rotates query and key) may
    # do more than the fused path: its layer is left alone.
    model = packed_bert()
    sa = model.encoder.layer[0].attention.self
    sa.__class__ = type("RotarySelfAttention", (type(sa),), {})
    assert bitops.fuse_encoder_layers_(model, exact=True) == 1
    # A submodule replaced after fusing: that layer runs its own forward, with the new module.
    model = packed_bert()
    reference = copy.deepcopy(model)
    bitops.fuse_encoder_layers_(model, exact=True)
    batch = inputs(2, 6)
    for m in (model, reference):
        m.encoder.layer[1].output.dense = copy.deepcopy(m.encoder.layer[0].output.dense)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)
    assert fused_runs == [1]


def test_roberta(fused_runs):
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = bitops.quantize_(RobertaModel(cfg).eval(), CONFIGS["W1A8"])
    fused = copy.deepcopy(model)
    assert bitops.fuse_encoder_layers_(fused, exact=True) == 2
    batch = {"input_ids": torch.randint(3, 60, (2, 9))}
    with torch.inference_mode():
        assert torch.equal(fused(**batch).last_hidden_state, model(**batch).last_hidden_state)
    assert fused_runs == [1, 1]


def test_threads_share_a_fused_model():
    # Threads run one model at once: each hands its codes to the next layer in its own slot.
    model = packed_bert()
    bitops.fuse_encoder_layers_(model)
    batches = [inputs(2, 5 + 3 * t, seed=t) for t in range(4)]
    with torch.inference_mode():
        want = [model(**b).last_hidden_state for b in batches]
    results = {}

    def worker(t):
        with torch.inference_mode():
            for rep in range(6):
                i = (t + rep) % len(batches)
                results[(t, rep)] = (i, model(**batches[i]).last_hidden_state)

    run_in_threads(worker, 4)
    assert len(results) == 24 and all(torch.equal(y, want[i]) for i, y in results.values())
