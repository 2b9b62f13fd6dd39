"""Bad input: every case raises an error whose message names the argument, the value and what was
expected. Each case runs against the C++ kernels (torch.ops.bitops) and the reference."""
import pytest
import torch

import bitops
from bitops import reference as R

ops = torch.ops.bitops
K, N = 40, 6


def good():
    codes = torch.ones(N, K, dtype=torch.int8)
    return dict(
        x=torch.zeros(3, K, dtype=torch.int8), x_scale=torch.ones(3), packed_weight=bitops.pack(codes, 1),
        weight_scale=torch.ones(N, 1), bias=torch.zeros(N), bits=1, in_features=K, group_size=K,
    )


def with_(**changes):
    a = good()
    a.update(changes)
    return a


INT8_CASES = [
    ("x float", with_(x=torch.zeros(3, K)), r"x has dtype torch.float32; expected torch.int8"),
    ("x 3-D", with_(x=torch.zeros(1, 3, K, dtype=torch.int8)), r"x has 3 dimensions .*expected 2"),
    ("K mismatch", with_(x=torch.zeros(3, K + 1, dtype=torch.int8)), r"x has 41 columns .*expected in_features=40"),
    ("bits=3", with_(bits=3), r"bits=3 is not supported; expected 1 .* or 2"),
    ("weight 3-D", with_(packed_weight=torch.zeros(1, N, 2, dtype=torch.int32)),
     r"packed_weight has 3 dimensions .*expected 2"),
    ("weight wrong dtype", with_(packed_weight=torch.zeros(N, 2, dtype=torch.int64)),
     r"packed_weight has dtype torch.int64; expected torch.int32"),
    ("weight words vs K", with_(in_features=100), r"packed_weight has 2 words per row .*expected 4 for in_features=100"),
    ("x_scale shape", with_(x_scale=torch.ones(4)), r"x_scale has shape \(4,\); expected \(3,\)"),
    ("x_scale nan", with_(x_scale=torch.tensor([1.0, float("nan"), 1.0])), r"x_scale holds non-finite values"),
    ("weight_scale inf", with_(weight_scale=torch.full((N, 1), float("inf"))), r"weight_scale holds non-finite"),
    ("weight_scale shape", with_(weight_scale=torch.ones(N, 2)), r"weight_scale has shape \(6, 2\); expected \(6, 1\)"),
    ("group_size 0", with_(group_size=0), r"group_size=0; expected a positive int"),
    ("bias shape", with_(bias=torch.zeros(N + 1)), r"bias has shape \(7,\); expected \(6,\)"),
    ("bias int", with_(bias=torch.zeros(N, dtype=torch.int32)), r"bias has dtype torch.int32; expected a floating"),
    ("device mix", with_(bias=torch.zeros(N, device="meta")), r"bias is on meta but .* expected all tensors on one device"),
]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("case", INT8_CASES, ids=[c[0] for c in INT8_CASES])
def test_linear_int8_bad_input(case, impl):
    _, args, msg = case
    fn = ops.packed_linear_int8 if impl == "kernel" else R.packed_linear_int8
    with pytest.raises(ValueError, match=msg):
        fn(**args) if impl == "reference" else fn(*args.values())


FLOAT_CASES = [
    ("x int8", lambda a: dict(a, x=torch.zeros(3, K, dtype=torch.int8)), r"x has dtype torch.int8; expected torch.float32"),
    ("x K mismatch", lambda a: dict(a, x=torch.zeros(3, 7)), r"x has 7 columns .*expected in_features=40"),
    ("bits=0", lambda a: dict(a, bits=0), r"bits=0 is not supported"),
    ("scale nan", lambda a: dict(a, weight_scale=torch.full((N, 1), float("nan"))), r"weight_scale holds non-finite"),
]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("case", FLOAT_CASES, ids=[c[0] for c in FLOAT_CASES])
def test_linear_float_bad_input(case, impl):
    _, change, msg = case
    a = good()
    a = change(dict(x=torch.zeros(3, K), packed_weight=a["packed_weight"], weight_scale=a["weight_scale"],
                    bias=a["bias"], bits=a["bits"], in_features=K, group_size=K))
    fn = ops.packed_linear_float if impl == "kernel" else R.packed_linear_float
    with pytest.raises(ValueError, match=msg):
        fn(**a) if impl == "reference" else fn(*a.values())


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_grad_input_bad_input(impl):
    a = good()
    fn = ops.packed_linear_grad_input if impl == "kernel" else R.packed_linear_grad_input
    with pytest.raises(ValueError, match=r"grad_output has 5 columns .*expected out_features=6"):
        fn(torch.zeros(2, 5), a["packed_weight"], a["weight_scale"], 1, K, K)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "codes,bits,msg",
    [
        (torch.zeros(2, 5, dtype=torch.int8), 1, r"codes holds the value 0; expected codes in \{-1, \+1\} for bits=1"),
        (torch.full((2, 5), 2, dtype=torch.int8), 2, r"codes holds the value 2; expected codes in \[-2, 1\]"),
        (torch.ones(2, 5, dtype=torch.int32), 1, r"codes has dtype torch.int32; expected torch.int8"),
        (torch.ones(2, 5, dtype=torch.int8), 3, r"bits=3 is not supported"),
        (torch.ones(2, 0, dtype=torch.int8), 1, r"codes has shape \(2, 0\); expected .*K >= 1"),
    ],
    ids=["sign-zero", "2bit-range", "dtype", "bits3", "K0"],
)
def test_pack_bad_input(codes, bits, msg, impl):
    fn = ops.pack_bits if impl == "kernel" else R.pack_bits
    with pytest.raises(ValueError, match=msg):
        fn(codes, bits)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_unpack_bad_input(impl):
    fn = ops.unpack_bits if impl == "kernel" else R.unpack_bits
    with pytest.raises(ValueError, match=r"packed has 3 words in its last dimension; expected 2 for k=40 at bits=1"):
        fn(torch.zeros(4, 3, dtype=torch.int32), 1, 40)
    with pytest.raises(ValueError, match=r"k=0; expected a positive int"):
        fn(torch.zeros(4, 3, dtype=torch.int32), 1, 0)


def test_layer_bad_input():
    with pytest.raises(ValueError, match=r"act_bits=6; expected 8, 4 or None"):
        bitops.BinaryLinear(8, 4, act_bits=6)
    with pytest.raises(ValueError, match=r"granularity='col'; expected one of"):
        bitops.BinaryLinear(8, 4, granularity="col")
    with pytest.raises(ValueError, match=r"group_size=None; expected a positive int with granularity='group'"):
        bitops.TernaryLinear(8, 4, granularity="group")
    with pytest.raises(ValueError, match=r"in_features=0; expected a positive int"):
        bitops.BinaryLinear(0, 4)
    layer = bitops.BinaryLinear(8, 4)
    with pytest.raises(ValueError, match=r"input has 9 features .*expected in_features=8"):
        layer(torch.randn(2, 9))
    with pytest.raises(TypeError, match=r"linear is a Conv1d; expected torch.nn.Linear"):
        bitops.BinaryLinear.from_linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match=r"config is a dict; expected bitops.BinaryConfig"):
        bitops.quantize_(torch.nn.Sequential(torch.nn.Linear(2, 2)), {"act_bits": 8})
