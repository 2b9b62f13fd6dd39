"""pytest-benchmark microbenchmarks of the hot CPU ops at BERT-base shapes (`make bench` runs them
with --benchmark-only). Figures, never assertions: the results go to the benchmark table and, with
--benchmark-json, to a file."""
import pytest
import torch

import bitops
from bitops import reference as R

ops = torch.ops.bitops
SHAPES = [(1, 768, 3072), (128, 768, 3072), (128, 3072, 768)]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def weights(n, k, bits):
    torch.manual_seed(0)
    codes = torch.randint(0, 2, (n, k), dtype=torch.int8) * 2 - 1
    return R.pack_bits(codes, bits), torch.rand(n, 1)


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("m,k,n", SHAPES, ids=lambda v: str(v))
def test_packed_linear_int8(benchmark, m, k, n, bits):
    w, ws = weights(n, k, bits)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    benchmark.extra_info["path"] = bitops._ops._C.int8_kernel_path(m, bits, 1, k)
    benchmark(ops.packed_linear_int8, x, torch.rand(m), w, ws, None, bits, k, k)


@pytest.mark.parametrize("m,k,n", SHAPES, ids=lambda v: str(v))
def test_packed_linear_float(benchmark, m, k, n):
    w, ws = weights(n, k, 1)
    benchmark(ops.packed_linear_float, torch.randn(m, k), w, ws, None, 1, k, k)


@pytest.mark.parametrize("m,k,n", SHAPES, ids=lambda v: str(v))
def test_packed_linear_grad_input(benchmark, m, k, n):
    w, ws = weights(n, k, 1)
    benchmark(ops.packed_linear_grad_input, torch.randn(m, n), w, ws, 1, k, k)


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("m,k", [(128, 768), (128, 3072)])
def test_quantize_rows_int8(benchmark, m, k, activation):
    benchmark(ops.quantize_rows_int8, torch.randn(m, k), 8, activation)


@pytest.mark.parametrize("m,k", [(128, 3072)])
def test_torch_gelu_then_quantize(benchmark, m, k):  # what activation="gelu" replaces
    benchmark(lambda x: ops.quantize_rows_int8(torch.nn.functional.gelu(x), 8), torch.randn(m, k))


@pytest.mark.parametrize("impl", ["bitops", "torch"])
@pytest.mark.parametrize("m,k", [(128, 768), (4096, 384)])
def test_add_layer_norm_int8(benchmark, impl, m, k):  # a BERT layer's add & norm, quantized for the next GEMM
    x, r, w, b = torch.randn(m, k), torch.randn(m, k), torch.randn(k), torch.randn(k)
    if impl == "bitops":
        benchmark(ops.add_layer_norm_int8, x, r, w, b, 1e-12, 8)
    else:  # what it replaces: torch's add and LayerNorm, then bitops' quantization
        benchmark(lambda: ops.quantize_rows_int8(torch.nn.functional.layer_norm(x + r, (k,), w, b, 1e-12), 8))


@pytest.mark.parametrize("impl", ["bitops", "sdpa"])
def test_attention(benchmark, impl):  # MiniLM's: 12 heads of 32, 128 tokens, head views of (1, 128, 12, 32)
    q, k, v = (torch.randn(1, 128, 12, 32).transpose(1, 2) for _ in range(3))
    fn = bitops.attention if impl == "bitops" else torch.nn.functional.scaled_dot_product_attention
    benchmark(lambda: fn(q, k, v).transpose(1, 2).reshape(1, 128, 384))


@pytest.mark.parametrize("bits", [1, 2])
def test_pack_unpack(benchmark, bits):
    codes = torch.randint(-1, 2, (3072, 768), dtype=torch.int8) if bits == 2 else \
        torch.randint(0, 2, (3072, 768), dtype=torch.int8) * 2 - 1
    benchmark(lambda: ops.unpack_bits(ops.pack_bits(codes, bits), bits, 768))
