"""BinaryLinear / TernaryLinear: gradients equal the reference straight-through gradients, a frozen
layer computes bit for bit what the training layer computed, state_dicts are packed and reload."""
import copy
import io

import pytest
import torch

import bitops
from bitops.quantizers import PerTokenSymmetricSTE, WeightSTE
from bitops.reference import FakeQuantLinear
from conftest import run_in_threads

LAYERS = [bitops.BinaryLinear, bitops.TernaryLinear]
VARIANTS = [
    dict(act_bits=8),
    dict(act_bits=4),
    dict(act_bits=None),
    dict(act_bits=8, granularity="tensor"),
    dict(act_bits=8, granularity="group", group_size=32),
    dict(act_bits=8, act_quant="pact"),
    dict(act_bits=4, act_quant="lsq"),
]


def vid(v):
    return "-".join(f"{k}={x}" for k, x in v.items())


@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_gradients_match_reference_ste(cls, variant):
    lin = torch.nn.Linear(96, 40)
    layer = cls.from_linear(lin, **variant)
    x = torch.randn(2, 9, 96, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)

    # Reference: the same quantizers in dense float arithmetic, differentiated by autograd.
    w = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    x2 = xr.reshape(-1, 96)
    if variant.get("act_bits") is not None:
        x2 = layer.quantize_input(x2)[0]
    w_hat = WeightSTE.apply(w, layer.bits, layer.granularity, layer.group_size)
    yr = torch.nn.functional.linear(x2, w_hat, b).reshape(2, 9, 40)
    yr.backward(gy)

    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, b.grad)
    # The STE passes dL/dw_hat to w unchanged: grad_w == grad_y^T x_hat.
    assert not torch.equal(layer.weight.grad, torch.zeros_like(layer.weight.grad))


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_learnable_clip_gets_gradient(cls):
    for quant, name in (("pact", "act_clip"), ("lsq", "act_step")):
        layer = cls(16, 4, act_bits=8, act_quant=quant)
        (layer(torch.randn(5, 16) * 4).square().sum()).backward()
        grad = getattr(layer, name).grad
        assert grad is not None and grad.shape == (1,) and grad.abs().item() > 0


@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_frozen_equals_training_bitwise(isa, cls, variant):
    layer = cls.from_linear(torch.nn.Linear(100, 30), **variant)
    x = torch.randn(3, 7, 100)
    with torch.no_grad():
        train_out = layer(x)
    layer.freeze()
    assert layer.frozen and "weight" not in dict(layer.named_parameters())
    with torch.no_grad():
        frozen_out = layer(x)
    if variant.get("act_bits") is None:  # float path: same kernel, same inputs
        torch.testing.assert_close(frozen_out, train_out, rtol=0, atol=0)
    else:
        assert torch.equal(frozen_out, train_out)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_packed_forward_close_to_fake_quant(cls):
    layer = cls.from_linear(torch.nn.Linear(768, 64), act_bits=8)
    x = torch.randn(17, 768)
    ref = FakeQuantLinear(layer)(x)
    out = layer.freeze()(x)
    # Same integers; only float rounding of the dense reference GEMM differs.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls,ratio", [(bitops.BinaryLinear, 25), (bitops.TernaryLinear, 12)],
                         ids=["binary", "ternary"])
def test_frozen_state_dict_is_packed_and_small(cls, ratio):
    lin = torch.nn.Linear(768, 768)
    layer = cls.from_linear(lin).freeze()
    sd = layer.state_dict()
    assert set(sd) == {"bias", "packed_weight", "weight_scale", "_extra_state"}
    assert sd["packed_weight"].dtype == torch.int32
    assert sd["_extra_state"]["format"] == layer.weight_format.value
    weight_bytes = sum(sd[k].numel() * sd[k].element_size() for k in ("packed_weight", "weight_scale"))
    assert lin.weight.numel() * 4 / weight_bytes >= ratio


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_state_dict_round_trip_through_file(cls):
    layer = cls.from_linear(torch.nn.Linear(50, 20), act_bits=8).freeze()
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = cls(50, 20, act_bits=8)  # training layer: takes the frozen layout on load
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.frozen
    x = torch.randn(4, 50)
    assert torch.equal(fresh(x), layer(x))
    frozen_fresh = cls(50, 20, act_bits=8).freeze()
    frozen_fresh.load_state_dict(layer.state_dict())
    assert torch.equal(frozen_fresh(x), layer(x))


def test_state_dict_mismatch_is_refused():
    sd = bitops.BinaryLinear(50, 20).freeze().state_dict()
    with pytest.raises(ValueError, match=r"saved from a packed layer with format='sign1'; this one has format='ternary2'"):
        bitops.TernaryLinear(50, 20).load_state_dict(sd)
    sd["_extra_state"] = dict(sd["_extra_state"], version=99)
    with pytest.raises(ValueError, match=r"packed layer state version 99; expected 1"):
        bitops.BinaryLinear(50, 20).load_state_dict(sd)


def test_frozen_layer_passes_input_gradients():
    layer = bitops.BinaryLinear(32, 8).freeze()
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.bias.grad is not None


def test_bf16_input_and_meta_device():
    layer = bitops.BinaryLinear(64, 16)
    y = layer(torch.randn(3, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    moved = layer.freeze().to("meta")
    assert moved.packed_weight.device.type == "meta"


def test_extra_repr_names_bits_and_format():
    r = repr(bitops.TernaryLinear(8, 4, granularity="group", group_size=4, act_bits=4))
    assert "weight=ternary2 (2-bit, per group of 4)" in r and "act=int4 dynamic" in r


def test_quantize_swaps_linears_in_place():
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)),
    )
    x = torch.randn(5, 8)
    out = bitops.quantize_(model, bitops.BinaryConfig(act_bits=8), filter_fn=lambda m, fqn: fqn != "2.1")
    assert out is model
    assert isinstance(model[0], bitops.BinaryLinear) and isinstance(model[2][0], bitops.BinaryLinear)
    assert type(model[2][1]) is torch.nn.Linear and isinstance(model[1], torch.nn.ReLU)
    assert model(x).shape == (5, 4)
    bitops.quantize_(model, bitops.TernaryConfig(freeze=True))
    assert isinstance(model[2][1], bitops.TernaryLinear) and model[2][1].frozen
    assert isinstance(model[0], bitops.BinaryLinear)  # already swapped layers are left alone


def _small_bert(hidden_act="gelu"):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=24, hidden_act=hidden_act, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertModel(cfg).eval()


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "training"])
def test_fuse_gelu(frozen):
    model = bitops.quantize_(_small_bert(), bitops.BinaryConfig(act_bits=8, freeze=frozen))
    fused = copy.deepcopy(model)
    assert bitops.fuse_gelu_(fused) == 2
    ffn2 = fused.encoder.layer[0].output.dense
    assert fused.encoder.layer[0].intermediate.intermediate_act_fn.__class__ is torch.nn.Identity
    assert ffn2.input_activation == "gelu" and "input_activation=gelu" in repr(ffn2)
    assert bitops.fuse_gelu_(fused) == 0  # already fused
    # Structure only: the tensors, and so every saved file, are the same.
    a, b = model.state_dict(), fused.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    ids = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(1))
    if frozen:
        with torch.inference_mode():
            want, got = model(ids).last_hidden_state, fused(ids).last_hidden_state
        # The fused GELU is bitops' own (~1e-7 from torch's): at most a rare int8 code moves by one.
        torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
        assert (got - want).abs().mean() < 1e-4
    else:
        # Training runs torch's GELU before the usual quantizer: forward and gradients are unchanged.
        want, got = model(ids).last_hidden_state, fused(ids).last_hidden_state
        assert torch.equal(got, want)
        want.square().sum().backward()
        got.square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), fused.parameters()):
            assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name  # None: the pooler


QKV_CONFIGS = {
    "W1A8": bitops.BinaryConfig(act_bits=8, freeze=True),
    "W2A8": bitops.TernaryConfig(act_bits=8, freeze=True),
    "W1A4 per tensor": bitops.BinaryConfig(act_bits=4, granularity="tensor", freeze=True),
    "W1A8 groups of 16": bitops.BinaryConfig(act_bits=8, granularity="group", group_size=16, freeze=True),
}


def _ids(shape, seed=1):
    return torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", list(QKV_CONFIGS.values()), ids=list(QKV_CONFIGS))
def test_fuse_qkv_equals_separate_layers(config):
    model = bitops.quantize_(_small_bert(), config)
    bitops.fuse_gelu_(model)  # independent of the grouping; what the exported models run
    fused = copy.deepcopy(model)
    assert bitops.fuse_qkv_(fused) == 2
    assert bitops.fuse_qkv_(fused) == 0  # already grouped
    a, b = model.state_dict(), fused.state_dict()  # structure only
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    # 60 rows: the GEMM kernels; 5 and 1 rows: the GEMV paths (the lookup GEMV for 1-bit rows).
    for shape in ((3, 20), (1, 5), (1, 1)):
        ids = _ids(shape)
        with torch.inference_mode():
            want = model(ids).last_hidden_state
            assert torch.equal(fused(ids).last_hidden_state, want), shape
        with torch.no_grad():
            assert torch.equal(fused(ids).last_hidden_state, want), shape
    # Grad enabled: each layer runs on its own (autograd through the packed layers to the embeddings).
    ids = _ids((2, 7))
    ya, yb = model(ids).last_hidden_state, fused(ids).last_hidden_state
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


def test_fuse_qkv_any_call_pattern_and_weight_changes():
    model = bitops.quantize_(_small_bert(), QKV_CONFIGS["W1A8"])
    att = copy.deepcopy(model.encoder.layer[0].attention.self)
    bitops.fuse_qkv_(model)
    fused = model.encoder.layer[0].attention.self
    x, other, y = torch.randn(2, 9, 32), torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    own = {n: getattr(att, n)(x) for n in ("query", "key", "value")}
    with torch.inference_mode():
        q = fused.query(x)  # a column view of the (2, 9, 96) fused output: split into heads as BERT does
        assert q.stride() == (9 * 96, 96, 1) and torch.equal(q.view(2, 9, 2, 16), own["query"].view(2, 9, 2, 16))
        fused.key(x), fused.value(x)
        # value first, a member twice, a member on another tensor in between: each output is its own.
        for name, inp in (("value", x), ("value", x), ("query", x), ("key", other), ("key", x), ("query", x)):
            want = own[name] if inp is x else getattr(att, name)(inp)
            assert torch.equal(getattr(fused, name)(inp), want), name
        # The same tensor written in place between the calls (y was made outside inference mode, so
        # it has a version counter): the output follows the new values.
        fused.query(y)
        y.mul_(2)
        assert torch.equal(fused.key(y), att.key(y))
    # New weights for the members (load_state_dict writes in place; assignment swaps the tensor).
    donor = bitops.quantize_(_small_bert(), QKV_CONFIGS["W1A8"])
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = _ids((3, 20))
    with torch.inference_mode():
        model(ids)
        model.load_state_dict(donor.state_dict())
        assert torch.equal(model(ids).last_hidden_state, donor(ids).last_hidden_state)
        fused.value.packed_weight = torch.zeros_like(fused.value.packed_weight)  # every code -1
        ref = copy.deepcopy(att.value)
        ref.load_state_dict(fused.value.state_dict())
        assert torch.equal(fused.value(x), ref(x)) and not torch.equal(ref(x), att.value(x))


def test_fuse_qkv_deepcopy_and_threads():
    model = bitops.quantize_(_small_bert(), QKV_CONFIGS["W2A8"])
    bitops.fuse_qkv_(model)
    twin = copy.deepcopy(model)  # its groups hold its own layers
    group = twin.encoder.layer[1].attention.self.key.__dict__["_input_group"][0]
    assert group.layers[1] is twin.encoder.layer[1].attention.self.key
    inputs = [_ids((2, 5 + 3 * t), seed=t) for t in range(4)]
    with torch.inference_mode():
        want = [twin(i).last_hidden_state for i in inputs]
        for p in model.parameters():  # the original changes; the copy does not
            p.data.zero_()
        assert torch.equal(twin(inputs[0]).last_hidden_state, want[0])
    results = {}

    def worker(t):  # threads share the groups: each keeps its own pending output
        with torch.inference_mode():
            for rep in range(6):
                i = (t + rep) % len(inputs)
                results[(t, rep)] = (i, twin(inputs[i]).last_hidden_state)

    run_in_threads(worker, 4)
    assert len(results) == 24
    assert all(torch.equal(y, want[i]) for i, y in results.values())


def test_fuse_qkv_only_what_it_can():
    from transformers import BertConfig, BertModel

    # Training layers, static (PACT) activation clips, float activations: nothing to group.
    for config in (bitops.BinaryConfig(), bitops.BinaryConfig(act_quant="pact", freeze=True),
                   bitops.BinaryConfig(act_bits=None, freeze=True)):
        assert bitops.fuse_qkv_(bitops.quantize_(_small_bert(), config)) == 0
    assert bitops.fuse_qkv_(_small_bert()) == 0  # nn.Linear
    mixed = bitops.quantize_(_small_bert(), QKV_CONFIGS["W1A8"], filter_fn=lambda m, n: not n.endswith("value"))
    bitops.quantize_(mixed, QKV_CONFIGS["W2A8"])
    assert bitops.fuse_qkv_(mixed) == 0  # 1-bit query and key, 2-bit value
    # A decoder's cross-attention reads its query from another input: only key and value are grouped.
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     is_decoder=True, add_cross_attention=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = bitops.quantize_(BertModel(cfg).eval(), QKV_CONFIGS["W1A8"])
    fused = copy.deepcopy(model)
    assert bitops.fuse_qkv_(fused) == 2
    cross = fused.encoder.layer[0].crossattention.self
    assert "_input_group" not in cross.query.__dict__ and "_input_group" in cross.key.__dict__
    ids, memory = _ids((2, 6)), torch.randn(2, 4, 32)
    with torch.inference_mode():
        want = model(ids, encoder_hidden_states=memory).last_hidden_state
        assert torch.equal(fused(ids, encoder_hidden_states=memory).last_hidden_state, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_frozen_model_casts_keep_float32_scales(dtype):
    # model.half() and friends cast the float rest; the packed words and float32 scales are what the
    # kernels read, so they stay as they are (and a grouped, GELU-fused model casts too).
    model = bitops.quantize_(_small_bert(), QKV_CONFIGS["W1A8"])
    bitops.quantize_(model, QKV_CONFIGS["W2A8"], filter_fn=lambda m, n: n.endswith("output.dense"))
    model.embeddings.word_embeddings = bitops.BinaryEmbedding.from_embedding(model.embeddings.word_embeddings).freeze()
    bitops.fuse_gelu_(model)
    bitops.fuse_qkv_(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("weight_scale", "packed_weight"))}
    ids = _ids((2, 9))
    with torch.inference_mode():
        want = model(ids).last_hidden_state
    cast = copy.deepcopy(model).to(dtype)
    after = cast.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert cast.embeddings.position_embeddings.weight.dtype == dtype
    with torch.inference_mode():
        got = cast(ids).last_hidden_state
    assert got.dtype == dtype
    # The float parts (embeddings, LayerNorm, attention) now run in dtype: close, not equal (measured
    # 0.0044, 0.026 and 7e-7 against outputs up to ~3).
    tol = {torch.float16: 0.03, torch.bfloat16: 0.15, torch.float64: 1e-5}[dtype]
    assert (got.float() - want).abs().max() < tol


def test_freezing_a_half_model():
    # Frozen from half latent weights: float32 scales (the kernels' dtype), outputs in half as before.
    model = bitops.quantize_(_small_bert(), QKV_CONFIGS["W1A8"]).half()
    model.embeddings.word_embeddings = bitops.BinaryEmbedding.from_embedding(model.embeddings.word_embeddings)
    ids = _ids((2, 9))
    with torch.no_grad():
        before = model(ids).last_hidden_state
    for m in model.modules():
        if isinstance(m, (bitops.BinaryLinear, bitops.BinaryEmbedding)):
            m.freeze()
            assert m.weight_scale.dtype == torch.float32
    with torch.inference_mode():
        after = model(ids).last_hidden_state
    assert after.dtype == torch.float16 and model.embeddings.word_embeddings(ids).dtype == torch.float16
    assert torch.equal(after, before)


def test_fuse_gelu_leaves_other_activations():
    for act in ("gelu_new", "relu"):  # tanh GELU and ReLU are not the erf GELU the kernel computes
        model = bitops.quantize_(_small_bert(act), bitops.BinaryConfig(act_bits=8, freeze=True))
        assert bitops.fuse_gelu_(model) == 0
        assert model.encoder.layer[0].output.dense.input_activation is None
    assert bitops.fuse_gelu_(_small_bert()) == 0  # no packed layer to fuse into


def test_weight_quantizers():
    w = torch.tensor([[0.5, -1.0, 0.0, 2.5], [0.1, 0.1, -0.1, -0.1]])
    codes, scale, gs = bitops.quantizers.quantize_weight(w, 1, "row")
    assert codes.tolist() == [[1, -1, 1, 1], [1, 1, -1, -1]] and gs == 4
    torch.testing.assert_close(scale, torch.tensor([[1.0], [0.1]]))
    codes, scale, _ = bitops.quantizers.quantize_weight(w, 2, "row")
    # row 0: mean|w| = 1.0, threshold 0.7 -> keep -1.0 and 2.5, scale 1.75; row 1: all kept.
    assert codes.tolist() == [[0, -1, 0, 1], [1, 1, -1, -1]]
    torch.testing.assert_close(scale, torch.tensor([[1.75], [0.1]]))
    codes, scale, _ = bitops.quantizers.quantize_weight(w, 1, "tensor")
    torch.testing.assert_close(scale, torch.full((2, 1), 4.4 / 8))
    codes, scale, gs = bitops.quantizers.quantize_weight(w, 1, "group", 3)
    assert scale.shape == (2, 2) and gs == 3
    torch.testing.assert_close(scale[0], torch.tensor([0.5, 2.5]))
    zeros = bitops.quantizers.quantize_weight(torch.zeros(2, 5), 2)
    assert zeros[0].abs().sum() == 0 and zeros[1].abs().sum() == 0


def test_activation_quantizer_zero_rows_and_range():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, s = bitops.quantizers.quantize_per_token_symmetric(x, 8)
    assert s.tolist()[0] == 1.0 and q[0].abs().sum() == 0
    assert q[1].tolist() == [64, -127, 32]
    x_hat, q4, s4 = PerTokenSymmetricSTE.apply(x, 4)
    assert q4.abs().max() <= 8 and torch.isfinite(x_hat).all()
    asym = bitops.quantizers.PerTokenAsymmetricSTE.apply(torch.tensor([[0.0, 0.3, 1.0]]), 8)
    torch.testing.assert_close(asym, torch.tensor([[0.0, 0.3, 1.0]]), atol=1 / 255, rtol=0)


def test_weight_gradient_uses_quantized_input_when_input_needs_no_grad():
    # The first layer of a model often gets an input without requires_grad; grad_weight must still
    # be grad_y^T @ x_hat with the fake-quantized input, not the raw one.
    layer = bitops.BinaryLinear(64, 8, act_bits=4)
    x = torch.randn(6, 64)
    layer(x).sum().backward()
    x_hat = PerTokenSymmetricSTE.apply(x, 4)[0]
    torch.testing.assert_close(layer.weight.grad, torch.ones(6, 8).t() @ x_hat)


@pytest.mark.parametrize("variant", [dict(act_bits=8), dict(act_bits=4), dict(act_bits=8, granularity="tensor"),
                                     dict(act_bits=8, act_quant="pact")], ids=vid)
@pytest.mark.parametrize("rows", [1, 2, bitops.nn.GEMV_MAX_ROWS, bitops.nn.GEMV_MAX_ROWS + 1])
def test_frozen_binary_layer_runs_the_gemv_layout_at_few_rows(isa, rows, variant):
    # At up to GEMV_MAX_ROWS rows a frozen 1-bit CPU layer serves the call with packed_gemv_int8 on
    # its GEMV layout; the result is the training layer's, bit for bit, on either side of the rule.
    layer = bitops.BinaryLinear.from_linear(torch.nn.Linear(100, 70), **variant)
    x = torch.randn(rows, 100)
    with torch.no_grad():
        want = layer(x)
        layer.freeze()
        got = layer(x)
    assert torch.equal(got, want)
    assert ("_gemv_cache" in layer.__dict__) == (rows <= bitops.nn.GEMV_MAX_ROWS)
    assert "gemv" not in "".join(layer.state_dict())  # never saved


def test_gemv_layout_follows_the_packed_weights():
    # Loaded, assigned or in-place changed weights are never served from a stale GEMV layout.
    a = bitops.BinaryLinear.from_linear(torch.nn.Linear(64, 40)).freeze()
    b = bitops.BinaryLinear.from_linear(torch.nn.Linear(64, 40)).freeze()
    x = torch.randn(1, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        assert not torch.equal(ya, yb)
        a.load_state_dict(b.state_dict())  # in-place copy into a's buffers
        assert torch.equal(a(x), yb)
        a.packed_weight = torch.zeros_like(a.packed_weight)  # a new tensor
        all_minus = bitops.reference.packed_linear_int8(*bitops.quantizers.quantize_per_token_symmetric(x, 8),
                                                        a.packed_weight, a.weight_scale, a.bias, 1, 64, 64)
        assert torch.equal(a(x), all_minus)
        a.packed_weight.fill_(-1)  # in place: every code +1
        assert torch.equal(a(x), bitops.reference.packed_linear_int8(
            *bitops.quantizers.quantize_per_token_symmetric(x, 8), a.packed_weight, a.weight_scale, a.bias, 1, 64, 64))


@pytest.mark.parametrize("kind", ["ternary", "group scales", "float activations", "not frozen"])
def test_gemv_layout_only_where_it_applies(kind):
    make = {
        "ternary": lambda: bitops.TernaryLinear(64, 8).freeze(),
        "group scales": lambda: bitops.BinaryLinear(64, 8, granularity="group", group_size=32).freeze(),
        "float activations": lambda: bitops.BinaryLinear(64, 8, act_bits=None).freeze(),
        "not frozen": lambda: bitops.BinaryLinear(64, 8),
    }[kind]
    layer = make()
    assert layer.gemv_layout() is None
    with torch.no_grad():
        layer(torch.randn(1, 64))
    assert "_gemv_cache" not in layer.__dict__


def test_gemv_layout_follows_loads_under_inference_mode():
    # Inference tensors have no version counter: load_state_dict drops the cached layout itself.
    with torch.inference_mode():
        a = bitops.BinaryLinear.from_linear(torch.nn.Linear(64, 40)).freeze()
        b = bitops.BinaryLinear.from_linear(torch.nn.Linear(64, 40)).freeze()
        x = torch.randn(1, 64)
        ya, yb = a(x), b(x)
        assert not torch.equal(ya, yb)
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), yb)
