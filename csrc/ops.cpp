// The bitops op namespace: every op's schema, stated once. Devices register kernels for these
// schemas (csrc/cpu/*.cpp for CPU; the CUDA and Triton issues add CUDA); the fake (meta)
// implementations used by torch.compile live in bitops/_ops.py, the pure-torch reference in
// bitops/reference.py. Layouts of the packed tensors: bitops/formats.py.
#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/linear_int8.h"

TORCH_LIBRARY(bitops, m) {
  // codes int8 (..., K) -> packed int32 (..., ceil(K*bits/32)), packed along the last dimension.
  m.def("pack_bits(Tensor codes, int bits) -> Tensor");
  // packed int32 (..., W) -> codes int8 (..., k); exact inverse of pack_bits.
  m.def("unpack_bits(Tensor packed, int bits, int k) -> Tensor");
  // y (M, N) float32 = x_q (M, K) int8 times packed W (N, K); int32 accumulation per group, then the
  // float epilogue of bitops/reference.py (weight_scale (N, G), x_scale (M,), bias (N,)).
  m.def(
      "packed_linear_int8(Tensor x, Tensor x_scale, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "int bits, int in_features, int group_size) -> Tensor");
  // y (M, N) = x (M, K) float32/bf16/fp16 times dequantized W.T + bias; fp32 accumulation, x's dtype.
  m.def(
      "packed_linear_float(Tensor x, Tensor packed_weight, Tensor weight_scale, Tensor? bias, int bits, "
      "int in_features, int group_size) -> Tensor");
  // Dynamic symmetric per-row int8 quantization of float activations (M, K): (codes int8 (M, K),
  // scales float32 (M,)), scale = max|row| / (2^(bits-1) - 1), 1 for an all-zero row.
  m.def("quantize_rows_int8(Tensor x, int bits) -> (Tensor, Tensor)");
  // grad_input (M, K) = grad_output (M, N) times dequantized W (N, K): the backward of the two above.
  m.def(
      "packed_linear_grad_input(Tensor grad_output, Tensor packed_weight, Tensor weight_scale, int bits, "
      "int in_features, int group_size) -> Tensor");
}

// Python-side knobs of the CPU backend, not ops: which instruction set the CPU kernels use. Tests
// pin each path in turn; users leave it on "auto" (AVX2 where the CPU has it).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.def("set_cpu_isa", &bitops::cpu::set_isa, "Select the CPU kernels: 'auto', 'avx2' or 'portable'.");
  m.def("cpu_isa", &bitops::cpu::active_isa, "The CPU kernel path in use now: 'avx2' or 'portable'.");
  m.def("cpu_has_avx2", &bitops::cpu::cpu_has_avx2, "Whether this CPU supports AVX2.");
  m.def("int8_kernel_path", &bitops::cpu::int8_kernel_path, "m"_a, "bits"_a, "groups"_a, "group_size"_a,
        "The CPU kernel packed_linear_int8 runs for such a call now: 'gemv', 'lut', 'bytes' or 'portable'.");
}
