"""bitops.ops.encoder_layer_int8 as an op: its arguments' checks (the kernel's and the reference's, one
wording), meta tensors and opcheck. That it is the fused layers' Python sequence bit for bit, and its
reference within float rounding: tests/test_fuse_layers.py."""
import pytest
import torch

import bitops
from bitops import reference
from test_fuse_layers import CONFIGS, packed_bert

OP = bitops.ops.encoder_layer_int8.default


@pytest.fixture(scope="module")
def layer_args():
    model = packed_bert(CONFIGS["W1A8"])
    bitops.fuse_gelu_(model)
    bitops.fuse_encoder_layers_(model)
    plan = model.encoder.layer[0].forward
    return plan.layer_op_args(torch.randn(2, 5, 32), None, None, 8)


def with_(args, **changes):
    return {**args, **changes}


BAD = [
    (lambda a: with_(a, x=a["x"][0]), r"x has 2 dimensions \(shape \(5, 32\)\); expected 3: \(batch, tokens, hidden\) float32 activations"),
    (lambda a: with_(a, x=a["x"].double()), r"x has dtype torch.float64; expected torch.float32"),
    (lambda a: with_(a, num_heads=3), r"num_heads=3; expected a positive divisor of x's hidden size 32"),
    (lambda a: with_(a, num_heads=0), r"num_heads=0; expected a positive divisor of x's hidden size 32"),
    (lambda a: with_(a, scale=float("nan")), r"scale=nan; expected a finite float > 0"),
    (lambda a: with_(a, x_codes=torch.zeros(10, 32, dtype=torch.int8)), r"x_codes and x_scales: got one without the other; expected both or neither"),
    (lambda a: with_(a, x_codes=torch.zeros(9, 32, dtype=torch.int8), x_scales=torch.ones(9)),
     r"x_codes has shape \(9, 32\); expected \(10, 32\): x's rows, each of its hidden size"),
    (lambda a: with_(a, x_codes=torch.zeros(10, 32, dtype=torch.int8), x_scales=torch.ones(9)),
     r"x_scales has shape \(9,\); expected \(10,\): one per row of x_codes"),
    (lambda a: with_(a, packed_weights=a["packed_weights"][:3]),
     r"packed_weights has 3 entries; expected 4: the query/key/value, attention output, intermediate and output layers"),
    (lambda a: with_(a, act_bits=a["act_bits"] + [8]), r"act_bits has 5 entries; expected 4"),
    (lambda a: with_(a, gemv_weights=[None] * 2), r"gemv_weights has 2 entries; expected 4"),
    (lambda a: with_(a, out_bits=2), r"out_bits=2; expected 8 or 4 \(codes for a next packed layer\) or 0 \(none\)"),
    # The first packed layer must give query, key and value of x's width.
    (lambda a: with_(a, packed_weights=[a["packed_weights"][1]] + a["packed_weights"][1:],
                     weight_scales=[a["weight_scales"][1]] + a["weight_scales"][1:], biases=[a["biases"][1]] + a["biases"][1:]),
     r"packed_weights\[0\] has 32 output rows; expected 96: query, key and value of x's hidden size 32"),
    # What the ops it calls check, in their words: here the attention output layer's bias.
    (lambda a: with_(a, biases=[a["biases"][0], torch.zeros(31)] + a["biases"][2:]), r"bias has shape \(31,\)"),
]


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_are_named(layer_args, impl, case):
    change, message = BAD[case]
    fn = OP if impl == "op" else reference.encoder_layer_int8
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        fn(**change(layer_args))


def map_tensors(args, fn):
    """args with fn applied to every tensor, in lists too."""
    one = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
    return {k: [one(t) for t in v] if isinstance(v, list) else one(v) for k, v in args.items()}


def test_meta_and_opcheck(layer_args):
    with torch.no_grad():
        out, codes, scales = OP(**layer_args)
        assert out.shape == (2, 5, 32) and codes.shape == (10, 32) and codes.dtype == torch.int8 and scales.shape == (10,)
        m_out, m_codes, m_scales = OP(**map_tensors(layer_args, lambda t: t.to("meta")))
        assert (m_out.shape, m_codes.shape, m_scales.shape) == (out.shape, codes.shape, scales.shape)
        last = OP(**with_(layer_args, out_bits=0))  # no next packed layer: torch's LayerNorm, no codes
        assert last[1].numel() == 0 and last[2].numel() == 0
        torch.testing.assert_close(last[0], out, rtol=0, atol=1e-5)
    # Detached: the layer's float parameters require gradients, and no op of the layer has a backward.
    torch.library.opcheck(OP, tuple(map_tensors(layer_args, torch.Tensor.detach).values()))
