"""bitops.attention: the CPU kernel (both ISA paths) against its torch reference and against float64,
every mask form, padding skips, layouts, threads, errors; and kd's BERT attention calling it."""
import pytest
import torch

import bitops
from bitops import reference as R

from conftest import torch_threads

ops = bitops.ops


def qkv(b, h, lq, lk, d, dv, hf_layout=False, dtype=torch.float32, gen=None):
    """Random query/key/value; hf_layout: (B, L, H, D) memory viewed as (B, H, L, D), what BERT passes."""
    def make(length, dim):
        if hf_layout:
            return torch.randn(b, length, h, dim, generator=gen).transpose(1, 2).to(dtype)
        return torch.randn(b, h, length, dim, generator=gen).to(dtype)
    return make(lq, d) * 2, make(lk, d), make(lk, dv)


def exact(q, k, v, mask, scale=None):
    """float64 softmax(q k^T * scale + mask) v, zeros where every key is masked."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    p = torch.where((s == float("-inf")).all(-1, keepdim=True), 0.0, s.softmax(-1))
    return p @ v.double()


def key_padding(b, lq, lk, lengths, leading=False):
    """(B, 1, Lq, Lk) bool: batch row i attends to its first lengths[i] keys (last, if leading)."""
    keys = torch.arange(lk)
    keep = torch.stack([(keys >= lk - n) if leading else (keys < n) for n in lengths])
    return keep[:, None, None, :].expand(b, 1, lq, lk).contiguous()


def masks(b, h, lq, lk, gen):
    full_bool = torch.rand(b, 1, lq, lk, generator=gen) > 0.3
    full_bool[..., 0, :] = False  # a fully masked row
    additive = torch.randn(b, h, lq, lk, generator=gen)
    additive[..., 1 % max(lq, 1), : lk // 2] = float("-inf")
    hf_min = torch.zeros(b, 1, lq, lk)
    hf_min[..., lk // 3:] = torch.finfo(torch.float32).min  # transformers' eager form of padding
    lengths = [max(1, lk - 3 * i) for i in range(b)]
    return {
        "none": None,
        "bool": full_bool,
        "bool-keys": torch.rand(b, 1, 1, lk, generator=gen) > 0.5,  # broadcast over heads and rows
        "bool-2d": torch.rand(lq, lk, generator=gen) > 0.5,
        "float": additive,
        "float-finfo-min": hf_min,
        "padding": key_padding(b, lq, lk, lengths),
        "padding-left": key_padding(b, lq, lk, lengths, leading=True),
        "padding-one-key": key_padding(b, lq, lk, [1] * b),
    }


SHAPES = [  # b, h, lq, lk, d, dv
    (2, 12, 128, 128, 32, 32),  # MiniLM
    (1, 2, 7, 9, 5, 3),
    (2, 3, 13, 130, 33, 40),  # tails everywhere
    (1, 1, 1, 1, 1, 1),
    (1, 2, 65, 47, 64, 64),  # BERT-base head dim
    (3, 1, 6, 250, 16, 24),
]


@pytest.mark.parametrize("mask_kind", list(masks(1, 1, 2, 2, torch.Generator()).keys()))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_and_reference(isa, shape, mask_kind):
    gen = torch.Generator().manual_seed(hash((shape, mask_kind)) % 2**31)
    b, h, lq, lk, d, dv = shape
    q, k, v = qkv(b, h, lq, lk, d, dv, hf_layout=True, gen=gen)
    mask = masks(b, h, lq, lk, gen)[mask_kind]
    got = ops.attention(q, k, v, mask)
    ref = R.attention(q, k, v, mask)
    want = exact(q, k, v, mask)
    assert got.shape == ref.shape == (b, h, lq, dv) and got.dtype == torch.float32
    # Both carry float32 rounding; the kernel may differ from float64 by a few times what the
    # reference does (its exp is a polynomial, its sums run in another order).
    bound = 4 * (ref.double() - want).abs().max().item() + 1e-6 * want.abs().max().item() + 1e-7
    assert (got.double() - want).abs().max().item() <= bound
    assert got.transpose(1, 2).is_contiguous() and ref.transpose(1, 2).is_contiguous()


def test_fully_masked_rows_are_zero_as_in_torch_sdpa(isa):
    q, k, v = qkv(2, 3, 5, 6, 8, 8)
    mask = torch.rand(2, 3, 5, 6) > 0.5
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    got = ops.attention(q, k, v, mask)
    assert got[0, 1, 2].abs().max() == 0 and got[1, :, 4].abs().max() == 0
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, sdpa, rtol=1e-5, atol=1e-6)
    every = ops.attention(q, k, v, torch.zeros(2, 3, 5, 6, dtype=torch.bool))
    assert every.abs().max() == 0


def test_nan_propagates_as_in_torch(isa):
    q, k, v = qkv(1, 2, 4, 19, 8, 8)
    q[0, 0, 1, 3] = float("nan")
    k[0, 1, 17, 0] = float("nan")
    got = ops.attention(q, k, v)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(got.isnan(), sdpa.isnan()) and got[0, 0, 1].isnan().all() and got[0, 1].isnan().all()
    # a nan key that the mask hides changes nothing; a nan query row stays nan beside masked keys
    mask = torch.ones(1, 1, 4, 19, dtype=torch.bool)
    mask[..., 17] = False
    mask[..., ::3] = False
    got = ops.attention(q, k, v, mask)
    assert not got[0, 1].isnan().any() and got[0, 0, 1].isnan().all()


def test_padding_skip_gives_the_unpadded_result(isa):
    # A sequence padded to the batch's length gives what it gives alone: exactly, since its masked
    # keys are skipped (their exps would be 0) and the rest runs in the same order.
    q, k, v = qkv(3, 4, 40, 40, 32, 32, hf_layout=True)
    lengths = [40, 17, 3]
    got = ops.attention(q, k, v, key_padding(3, 40, 40, lengths))
    for i, n in enumerate(lengths):
        alone = ops.attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n])
        torch.testing.assert_close(got[i:i + 1], alone, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_dtypes_compute_in_float32(isa, dtype):
    q, k, v = qkv(2, 2, 9, 11, 16, 8, dtype=dtype)
    mask = (torch.randn(2, 1, 9, 11) * 3).to(dtype)
    got = ops.attention(q, k, v, mask, 0.3)
    assert got.dtype == dtype
    want = exact(q, k, v, mask, 0.3)
    assert (got.double() - want).abs().max().item() <= 2 * want.abs().max().item() * 2**-8 + 1e-6


def test_scale_and_layouts(isa):
    q, k, v = qkv(2, 3, 10, 12, 8, 8)
    for scale in (None, 0.0, 1.0, 2.5):
        torch.testing.assert_close(ops.attention(q, k, v, None, scale), exact(q, k, v, None, scale).float(),
                                   rtol=1e-5, atol=1e-6)
    # Any strides: sliced heads, a non-unit last stride (copied), a broadcast (stride 0) mask.
    qs, ks, vs = q[:, ::2], k[:, ::2], v[..., ::2]
    mask = (torch.rand(1, 1, 1, 12) > 0.3).expand(2, 2, 10, 12)
    torch.testing.assert_close(ops.attention(qs, ks, vs[:, ::2], mask),
                               exact(qs, ks, vs[:, ::2], mask).float(), rtol=1e-5, atol=1e-6)


def test_empty_lengths(isa):
    q, k, v = qkv(2, 3, 0, 5, 4, 6)
    assert ops.attention(q, k, v).shape == (2, 3, 0, 6)
    q, k, v = qkv(2, 3, 4, 0, 4, 6)
    out = ops.attention(q, k, v)
    assert out.shape == (2, 3, 4, 6) and out.abs().max() == 0


def test_results_independent_of_thread_count():
    q, k, v = qkv(1, 3, 200, 64, 32, 32, hf_layout=True)  # few heads: rows are split between threads
    mask = key_padding(1, 200, 64, [50])
    with torch_threads(1):
        one = ops.attention(q, k, v, mask)
    with torch_threads(2):
        two = ops.attention(q, k, v, mask)
    assert torch.equal(one, two)


def test_opcheck():
    q, k, v = qkv(2, 3, 5, 7, 8, 4)
    torch.library.opcheck(ops.attention.default, (q, k, v, torch.rand(2, 1, 5, 7) > 0.5, 0.5))
    torch.library.opcheck(ops.attention.default, (q, k, v, None, None))


def test_compile_fullgraph():
    q, k, v = qkv(2, 3, 5, 7, 8, 4, hf_layout=True)
    mask = torch.rand(2, 1, 5, 7) > 0.3

    def f(q, k, v, mask):
        return bitops.attention(q, k, v, mask).transpose(1, 2).reshape(2, 5, 12) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v, mask), f(q, k, v, mask))


def test_gradients_go_through_the_reference():
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 5, 6, 4, 4))
    mask = torch.rand(2, 1, 5, 6) > 0.3
    mask[..., 0] = True
    bitops.attention(q, k, v, mask).square().sum().backward()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask).square().sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_bad_input(impl):
    f = ops.attention if impl == "kernel" else R.attention
    q, k, v = qkv(2, 3, 5, 7, 8, 4)
    with pytest.raises(ValueError, match=r"query has 3 dimensions \(shape \(3, 5, 8\)\); expected 4: \(batch, heads, length, head_dim\)"):
        f(q[0], k, v)
    with pytest.raises(ValueError, match=r"query has dtype torch.int64; expected torch.float32 or torch.bfloat16 or torch.float16"):
        f(q.long(), k, v)
    with pytest.raises(ValueError, match=r"value has dtype torch.float64; expected torch.float32 \(query's dtype\)"):
        f(q, k, v.double())
    with pytest.raises(ValueError, match=r"key has shape \(2, 3, 7, 9\); expected \(2, 3, Lk, 8\): query's batch, heads and head_dim"):
        f(q, torch.randn(2, 3, 7, 9), v)
    with pytest.raises(ValueError, match=r"value has shape \(2, 3, 6, 4\); expected \(2, 3, 7, Dv\): key's batch, heads and length"):
        f(q, k, v[:, :, :6])
    with pytest.raises(ValueError, match=r"attn_mask has dtype torch.int64; expected torch.bool or torch.float32 \(query's dtype\)"):
        f(q, k, v, torch.ones(2, 1, 5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 1, 5, 6\); expected a shape broadcastable to \(2, 3, 5, 7\): \(batch, heads, Lq, Lk\)"):
        f(q, k, v, torch.ones(2, 1, 5, 6, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# kd's BERT attention


def test_kd_attention_uses_the_kernel_in_eval_only(monkeypatch):
    from kd import models
    from kd_helpers import tiny_config

    cfg = tiny_config(2, 0.0)
    cfg._attn_implementation = models.ATTN_IMPLEMENTATION
    model = __import__("transformers").BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, 5:] = 0
    calls = []
    real = bitops.attention
    monkeypatch.setattr(bitops, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask).logits
        assert len(calls) == 2  # one per layer
        with models.capture_attention_scores():  # eager (it records the scores)
            eager = model(input_ids=ids, attention_mask=mask).logits
        assert len(calls) == 2
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert len(calls) == 2 and len(out.attentions) == 2
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)
    model.train()
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert len(calls) == 2


def tiny_bert(**kw):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    return BertModel(cfg).eval()


def test_use_attention_kernel_on_a_transformers_model(monkeypatch):
    model = tiny_bert()
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.int64)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state  # transformers' SDPA
    assert bitops.use_attention_kernel_(model) is model and model.config._attn_implementation == "bitops"
    calls = []
    real = bitops.attention
    monkeypatch.setattr(bitops, "attention", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model(input_ids=ids[1:2, :6]).last_hidden_state
    assert len(calls) == 4 and calls[0].dtype == torch.bool and calls[2] is None  # the padding mask reached it
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, :6], alone[0], rtol=1e-5, atol=1e-5)
    model.train()  # training: transformers' SDPA, with gradients
    model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert len(calls) == 4
    with pytest.raises(TypeError, match=r"model is a Linear; expected a transformers PreTrainedModel"):
        bitops.use_attention_kernel_(torch.nn.Linear(2, 2))


def test_attention_kernel_applies_only_where_it_can():
    from bitops.api import attention_kernel_applies

    encoder = tiny_bert().encoder.layer[0].attention.self
    q = torch.randn(1, 4, 5, 16)
    assert attention_kernel_applies(encoder, q, None, {})
    assert not attention_kernel_applies(encoder, q, None, {"output_attentions": True})
    assert not attention_kernel_applies(encoder.train(), q, None, {})
    decoder = tiny_bert(is_decoder=True).encoder.layer[0].attention.self
    assert not attention_kernel_applies(decoder, q, None, {})  # causal with no mask: SDPA makes the mask
    assert attention_kernel_applies(decoder, q, torch.ones(1, 1, 5, 5, dtype=torch.bool), {})
    assert attention_kernel_applies(decoder, q[:, :, :1], None, {})  # one query row: nothing to hide
