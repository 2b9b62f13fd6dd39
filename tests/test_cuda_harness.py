"""The CUDA kernels of csrc/cuda run on the CPU through the host harness (tests/cuda_harness): same
source, compiled with g++, one std::thread per CUDA thread, PTX wrappers emulated from the ISA tables.

Integer paths (pack, unpack, the int8 GEMM with its float epilogue, both the dp4a GEMV kernel and the
mma.sync tile kernel) must equal bitops.reference bit for bit; float paths (forward and grad_input in
fp32 / fp16 / bf16) stay within the bound of tests/kernel_cases.check_close. Shapes cover M, N, K
around 1-130 with edges that cut tiles, warps, words and scale groups. The kernels run in a spawned
worker process so that a harness abort or a barrier deadlock fails a test instead of pytest.
"""
import concurrent.futures
import multiprocessing
import os
import sys

import numpy as np
import pytest
import torch

from bitops import reference as R
from kernel_cases import check_close, codes, weights

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_harness import runner  # noqa: E402

pytestmark = pytest.mark.skipif(not runner.compiler_available(), reason=f"needs a C++20 compiler ({runner.CXX})")
TIMEOUT = 300  # seconds for one kernel call in the worker: only a deadlock comes near it


@pytest.fixture(scope="module")
def harness():
    path = runner.library_path()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:

        def call(fn, *args):
            return pool.submit(fn, path, *args).result(timeout=TIMEOUT)

        yield call


@pytest.mark.parametrize("bits", [1, 2])
def test_pack_unpack_exact(harness, bits):
    gen = torch.Generator().manual_seed(bits)
    for rows, k in [(1, 1), (3, 15), (2, 16), (5, 31), (4, 32), (2, 33), (7, 130), (300, 97)]:
        c = codes((rows, k), bits, gen)
        packed, bad = harness(runner.run_pack, c.numpy(), bits)
        assert not bad.any()
        assert torch.equal(torch.from_numpy(packed), R.pack_bits(c, bits)), (rows, k)
        assert torch.equal(torch.from_numpy(harness(runner.run_unpack, packed, bits, k)), c), (rows, k)


@pytest.mark.parametrize("bits,value", [(1, 0), (1, 2), (2, -3), (2, 2)])
def test_pack_reports_a_bad_code(harness, bits, value):
    c = codes((3, 40), bits, torch.Generator().manual_seed(0))
    c[2, 37] = value
    _, bad = harness(runner.run_pack, c.numpy(), bits)
    assert bad.tolist() == [1, value]


# (M, K, N): tile edges of the mma kernel (64 x 64, K tiles of 64), GEMV rows (4) and warps (4 per
# block), words (32 / 16 codes) and whole-group / straddling scale groups.
INT8_SHAPES = [(1, 1, 1), (1, 33, 7), (3, 64, 5), (4, 100, 9), (5, 130, 64), (8, 32, 65), (16, 97, 3),
               (17, 128, 70), (64, 64, 64), (65, 129, 33), (130, 47, 130)]


@pytest.mark.parametrize("kernel", ["gemv", "mma"])
@pytest.mark.parametrize("bits", [1, 2])
def test_linear_int8_exact(harness, kernel, bits):
    gen = torch.Generator().manual_seed(10 + bits)
    # The GEMV kernel serves M <= 8 (kGemvMaxM in csrc/cuda/launch.h): larger M would only make its
    # warp shuffles (a barrier each here) slow to emulate.
    shapes = [s for s in INT8_SHAPES if kernel == "mma" or s[0] <= 8]
    for i, (m, k, n) in enumerate(shapes):
        for gs in (k, 32, 48, 17):  # one scale per row; groups aligned to words; straddling tiles; odd
            packed, scale = weights(n, k, bits, gs, gen)
            x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
            xs = torch.rand(m, generator=gen) * 0.02
            bias = torch.randn(n, generator=gen) if i % 2 == 0 else None
            y = harness(runner.run_linear_int8, kernel, x.numpy(), xs.numpy(), packed.numpy(), scale.numpy(),
                        None if bias is None else bias.numpy(), bits, k, gs)
            ref = R.packed_linear_int8(x, xs, packed, scale, bias, bits, k, gs)
            assert torch.equal(torch.from_numpy(y), ref), (kernel, m, k, n, gs)


def _to_np(t):
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _from_np(a, dtype):
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if dtype == torch.bfloat16 else torch.from_numpy(a)


FLOAT_SHAPES = [(1, 1, 1), (3, 33, 7), (17, 64, 65), (64, 130, 16), (130, 47, 129)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2])
def test_linear_float_and_grad_input(harness, dtype, bits):
    gen = torch.Generator().manual_seed(20 + bits)
    name = str(dtype).split(".")[1]
    for m, k, n in FLOAT_SHAPES:
        for gs in (k, 17):
            packed, scale = weights(n, k, bits, gs, gen)
            w = R.dequantize_weight(packed, scale, bits, k, gs)
            bias = torch.randn(n, generator=gen)
            x = torch.randn(m, k, generator=gen).to(dtype)
            y = _from_np(harness(runner.run_linear_float, name, False, _to_np(x), packed.numpy(), scale.numpy(),
                                 bias.numpy(), bits, k, gs), dtype)
            same = (x.float() @ w.T + bias).to(dtype)
            check_close(y, same, x.double() @ w.double().T + bias.double(), f"fwd {dtype} {m, k, n, gs}")
            go = torch.randn(m, n, generator=gen).to(dtype)
            gi = _from_np(harness(runner.run_linear_float, name, True, _to_np(go), packed.numpy(), scale.numpy(),
                                  None, bits, k, gs), dtype)
            check_close(gi, (go.float() @ w).to(dtype), go.double() @ w.double(), f"grad {dtype} {m, k, n, gs}")
