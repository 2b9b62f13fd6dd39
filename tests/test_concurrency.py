"""The ops are safe to call from several Python threads at once, and repeated calls do not leak."""
import gc
import os
import resource

import torch

import bitops
from bitops.quantizers import quantize_per_token_symmetric, quantize_weight
from conftest import run_in_threads, torch_threads

ops = torch.ops.bitops


def make_problem(seed, m=33, k=200, n=57, bits=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    codes, scale, gs = quantize_weight(w, bits)
    x = torch.randn(m, k, generator=g)
    q, s = quantize_per_token_symmetric(x)
    return dict(x=x, q=q, s=s, packed=bitops.pack(codes, bits), scale=scale, gs=gs, bits=bits, k=k, codes=codes)


def run_all(p):
    return (
        ops.packed_linear_int8(p["q"], p["s"], p["packed"], p["scale"], None, p["bits"], p["k"], p["gs"]),
        ops.packed_linear_float(p["x"], p["packed"], p["scale"], None, p["bits"], p["k"], p["gs"]),
        ops.unpack_bits(ops.pack_bits(p["codes"], p["bits"]), p["bits"], p["k"]),
    )


def test_ops_from_many_threads_equal_single_thread():
    problems = [make_problem(i, m=1 + 17 * i, bits=1 + i % 2) for i in range(6)]
    expected = [run_all(p) for p in problems]
    results = {}

    def worker(t):
        for rep in range(5):
            i = (t + rep) % len(problems)
            results[(t, rep)] = (i, run_all(problems[i]))

    run_in_threads(worker, 6)
    assert len(results) == 30
    for i, outs in results.values():
        for got, want in zip(outs, expected[i]):
            assert torch.equal(got, want)


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_repeated_calls_leave_rss_flat():
    p = make_problem(0, m=4, k=64, n=16)
    layer = bitops.BinaryLinear(64, 16).freeze()
    for _ in range(500):  # warm-up: allocator caches, lazy init
        run_all(p)
        layer(p["x"])
    gc.collect()
    before = rss_kib()
    for _ in range(10_000):
        run_all(p)
        layer(p["x"])
    gc.collect()
    grown = rss_kib() - before
    # A leak of even one small buffer per call would add > 10,000 x 256 B = 2.5 MiB here.
    assert grown < 2048, f"RSS grew by {grown} KiB over 10,000 calls of each op"


def test_kernel_threads_follow_torch_set_num_threads():
    """The kernels parallelize with at::parallel_for compiled into the extension: with OpenMP missing
    from its build flags they ran on one thread whatever torch said (a bug this guards against)."""
    for n in sorted({1, 2, min(4, os.cpu_count() or 1)}):
        with torch_threads(n):
            assert bitops._ops._C.parallel_threads_used(64) == n


def test_results_do_not_depend_on_the_thread_count():
    p = make_problem(7, m=130, k=777, n=300)
    with torch_threads(1):
        one = run_all(p)
    with torch_threads(2):
        two = run_all(p)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
