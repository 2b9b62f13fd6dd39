"""Property tests: random shapes (M, N from 0 to 300, K from 1 to 300, K rarely a multiple of the
word), random codes and extreme values; every kernel path equals the reference, exactly on the
integer paths: the CPU kernels (portable and AVX2; packed_linear_int8, and packed_gemv_int8 on the
GEMV layout), the Triton kernels in the Triton interpreter and the CUDA kernels through the host
harness (both the dp4a GEMV and the mma.sync tile kernel).

The default profile is bounded for CI; BITOPS_FUZZ_EXAMPLES=N runs N cases per CPU property and N/4
per emulated GPU property (see tests/kernel_cases.py)."""
import concurrent.futures
import multiprocessing
import os
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitops
from bitops import reference as R
from conftest import cpu_isa, cpu_isas
from kernel_cases import FUZZ_EXAMPLES, assert_bitwise_equal, codes, draw_int8_case, fuzz_settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_harness import runner  # noqa: E402

EMULATED_EXAMPLES = max(4, FUZZ_EXAMPLES // 4)


def draw_codes(data, shape, bits):
    return codes(shape, bits, torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed")))


@fuzz_settings()
@given(data=st.data(), bits=st.sampled_from([1, 2]), rows=st.integers(0, 9), k=st.integers(1, 300))
def test_pack_unpack_round_trip(data, bits, rows, k):
    c = draw_codes(data, (rows, k), bits)
    for isa in cpu_isas():
        with cpu_isa(isa):
            packed = bitops.pack(c, bits)
            assert torch.equal(packed, R.pack_bits(c, bits))
            assert torch.equal(bitops.unpack(packed, bits, k), c)


@fuzz_settings()
@given(data=st.data())
def test_linear_int8_equals_reference(data):
    case = draw_int8_case(data)
    want = R.packed_linear_int8(*case.args())
    for isa in cpu_isas():
        with cpu_isa(isa):
            got = torch.ops.bitops.packed_linear_int8(*case.args())
            assert_bitwise_equal(got, want, f"{isa}: {case}")


@fuzz_settings()
@given(data=st.data())
def test_gemv_layout_kernel_equals_reference(data):
    # packed_gemv_int8 takes 1-bit weights with one scale per row, in the GEMV layout.
    case = draw_int8_case(data, max_m=9, bits=(1,), groupings=("row",))
    n = case.packed.shape[0]
    gemv = R.to_gemv_layout(case.packed, case.k)
    assert torch.equal(R.from_gemv_layout(gemv, n, case.k), R.unpack_bits(case.packed, 1, case.k)), str(case)
    want = R.packed_linear_int8(*case.args())
    args = (case.x, case.x_scale, gemv, case.w_scale, case.bias, case.k)
    assert_bitwise_equal(R.packed_gemv_int8(*args), want, f"reference: {case}")
    for isa in cpu_isas():
        with cpu_isa(isa):
            assert_bitwise_equal(torch.ops.bitops.packed_gemv_int8(*args), want, f"{isa}: {case}")


@pytest.fixture(scope="module")
def triton_ops():
    pytest.importorskip("triton")
    from bitops.triton import interpreter, ops

    with interpreter(True):
        yield ops


# Scales of 1e30 overflow to inf on purpose; numpy (the interpreter's arithmetic) warns about it.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@fuzz_settings(EMULATED_EXAMPLES)
@given(data=st.data())
def test_triton_interpreted_equals_reference(triton_ops, data):
    case = draw_int8_case(data)
    assert_bitwise_equal(triton_ops.packed_linear_int8(*case.args()), R.packed_linear_int8(*case.args()), f"triton: {case}")
    c = R.unpack_bits(case.packed, case.bits, case.k)
    assert torch.equal(triton_ops.pack_bits(c, case.bits), case.packed), f"triton pack: {case}"
    assert torch.equal(triton_ops.unpack_bits(case.packed, case.bits, case.k), c), f"triton unpack: {case}"


@pytest.fixture(scope="module")
def harness():
    if not runner.compiler_available():
        pytest.skip(f"needs a C++20 compiler ({runner.CXX})")
    path = runner.library_path()
    # A spawned worker: a harness abort or deadlock fails the test instead of killing pytest.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, *args: pool.submit(fn, path, *args).result(timeout=600)


@fuzz_settings(EMULATED_EXAMPLES)
@given(data=st.data(), kernel=st.sampled_from(["gemv", "mma"]))
def test_cuda_harness_equals_reference(harness, data, kernel):
    # The GEMV kernel serves M <= 8 (kGemvMaxM in csrc/cuda/launch.h); the mma kernel any M.
    case = draw_int8_case(data, max_m=8 if kernel == "gemv" else 300)
    bias = None if case.bias is None else case.bias.numpy()
    y = harness(runner.run_linear_int8, kernel, case.x.numpy(), case.x_scale.numpy(), case.packed.numpy(),
                case.w_scale.numpy(), bias, case.bits, case.k, case.group_size)
    assert_bitwise_equal(torch.from_numpy(y), R.packed_linear_int8(*case.args()), f"cuda {kernel}: {case}")
    c = R.unpack_bits(case.packed, case.bits, case.k)
    packed, bad = harness(runner.run_pack, c.numpy(), case.bits)
    assert not bad.any() and torch.equal(torch.from_numpy(packed), case.packed), f"cuda pack: {case}"
