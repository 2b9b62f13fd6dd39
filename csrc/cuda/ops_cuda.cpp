// CUDA kernels of the bitops ops (schemas: csrc/ops.cpp), built when torch is a CUDA build and nvcc
// is found (setup.py). Argument checks are those of every device (csrc/checks.h); then the tensors
// are brought to the layouts the kernels read, which never rejects a shape:
//   * int8 activations are zero-padded to a multiple of 16 columns (and made contiguous / 16-byte
//     aligned) when they are not already, for the kernels' 16-byte loads;
//   * bias is read as fp32, packed weights and scales contiguous.
// Only c10/cuda headers are included: ATen/cuda/CUDAContext.h needs cuSPARSE headers that a plain
// CUDA toolkit may lack. Which of these kernels or the Triton ones a CUDA tensor runs is decided in
// bitops/triton/__init__.py (BITOPS_CUDA_BACKEND).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <string_view>

#include "../checks.h"
#include "../schemas.h"
#include "launch.h"

namespace bitops::cuda {

namespace {

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// Sizes reach the kernels as int: 2^31 - 1 rows, columns or codes per row at most.
int to_int(const char* what, int64_t v) {
  TORCH_CHECK_VALUE(v <= INT_MAX, what, "=", v, " is larger than the CUDA kernels support; expected at most ", INT_MAX);
  return static_cast<int>(v);
}

// A group at least K long is one group per row: the same scales, and it fits an int.
int group_size_int(int64_t group_size, int64_t k) { return static_cast<int>(std::min(group_size, k)); }

std::optional<at::Tensor> float_bias(const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return std::nullopt;
  return bias->to(at::kFloat).contiguous();
}

const float* ptr_or_null(const std::optional<at::Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; }

at::Tensor pack_bits_cuda(const at::Tensor& codes_in, int64_t bits) {
  check_pack_args(codes_in, bits);
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t k = codes.size(-1), rows = codes.numel() / k;
  auto shape = codes.sizes().vec();
  shape.back() = words_per_row(k, bits);
  at::Tensor out = at::empty(shape, codes.options().dtype(at::kInt));
  if (rows == 0) return out;
  at::Tensor bad = at::zeros({2}, codes.options().dtype(at::kInt));
  C10_CUDA_CHECK(launch_pack(codes.data_ptr<int8_t>(), out.data_ptr<int32_t>(), rows, to_int("k", k),
                             static_cast<int>(bits), bad.data_ptr<int32_t>(), stream_of(codes)));
  const at::Tensor b = bad.cpu();  // synchronizes: a bad code must raise here, like on CPU
  if (b[0].item<int32_t>() != 0) fail_bad_code(b[1].item<int32_t>(), bits);
  return out;
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed_in, int64_t bits, int64_t k) {
  check_unpack_args(packed_in, bits, k);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  const int64_t rows = packed.numel() / packed.size(-1);
  auto shape = packed.sizes().vec();
  shape.back() = k;
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kChar));
  if (rows == 0) return out;
  C10_CUDA_CHECK(launch_unpack(packed.data_ptr<int32_t>(), out.data_ptr<int8_t>(), rows, to_int("k", k),
                               static_cast<int>(bits), stream_of(packed)));
  return out;
}

at::Tensor packed_linear_int8_cuda(const at::Tensor& x_in, const at::Tensor& x_scale_in, const at::Tensor& w_in,
                                   const at::Tensor& w_scale_in, const std::optional<at::Tensor>& bias_in,
                                   int64_t bits, int64_t in_features, int64_t group_size) {
  const int64_t n = check_linear_int8_args(x_in, x_scale_in, w_in, w_scale_in, bias_in, bits, in_features, group_size);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t m = x_in.size(0), k = in_features;
  at::Tensor y = at::empty({m, n}, x_in.options().dtype(at::kFloat));
  if (m == 0 || n == 0) return y;
  const int64_t lda = (k + 15) / 16 * 16;
  at::Tensor x = x_in;
  if (lda != k || !x.is_contiguous() || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0)
    x = at::constant_pad_nd(x_in, {0, lda - k}, 0).contiguous();  // a fresh, aligned, zero-padded copy
  const at::Tensor x_scale = x_scale_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const auto bias = float_bias(bias_in);
  C10_CUDA_CHECK(launch_linear_int8(x.data_ptr<int8_t>(), to_int("in_features", lda), x_scale.data_ptr<float>(),
                                    w.data_ptr<int32_t>(), w_scale.data_ptr<float>(), ptr_or_null(bias),
                                    y.data_ptr<float>(), to_int("M", m), to_int("out_features", n), static_cast<int>(k),
                                    group_size_int(group_size, k), static_cast<int>(bits), stream_of(x)));
  return y;
}

FloatType float_type(at::ScalarType t) {
  return t == at::kHalf ? FloatType::f16 : t == at::kBFloat16 ? FloatType::bf16 : FloatType::f32;
}

at::Tensor packed_linear_float_cuda(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& w_scale_in,
                                    const std::optional<at::Tensor>& bias_in, int64_t bits, int64_t in_features,
                                    int64_t group_size) {
  const int64_t n = check_linear_float_args(x_in, w_in, w_scale_in, bias_in, bits, in_features, group_size);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  if (y.numel() == 0) return y;
  const auto bias = float_bias(bias_in);
  C10_CUDA_CHECK(launch_linear_float(float_type(x.scalar_type()), false, x.data_ptr(), w.data_ptr<int32_t>(),
                                     w_scale.data_ptr<float>(), ptr_or_null(bias), y.data_ptr(),
                                     to_int("M", x.size(0)), to_int("out_features", n),
                                     to_int("in_features", in_features), group_size_int(group_size, in_features),
                                     static_cast<int>(bits), stream_of(x)));
  return y;
}

at::Tensor packed_linear_grad_input_cuda(const at::Tensor& go_in, const at::Tensor& w_in,
                                         const at::Tensor& w_scale_in, int64_t bits, int64_t in_features,
                                         int64_t group_size) {
  const int64_t n = check_grad_input_args(go_in, w_in, w_scale_in, bits, in_features, group_size);
  const c10::cuda::CUDAGuard guard(go_in.device());
  const at::Tensor go = go_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  at::Tensor gi = at::empty({go.size(0), in_features}, go.options());
  if (gi.numel() == 0) return gi;
  C10_CUDA_CHECK(launch_linear_float(float_type(go.scalar_type()), true, go.data_ptr(), w.data_ptr<int32_t>(),
                                     w_scale.data_ptr<float>(), nullptr, gi.data_ptr(), to_int("M", go.size(0)),
                                     to_int("out_features", n), to_int("in_features", in_features),
                                     group_size_int(group_size, in_features), static_cast<int>(bits), stream_of(go)));
  return gi;
}

}  // namespace

#define BITOPS_CUDA_IMPLS(m)                                          \
  m.impl("pack_bits", &pack_bits_cuda);                               \
  m.impl("unpack_bits", &unpack_bits_cuda);                           \
  m.impl("packed_linear_int8", &packed_linear_int8_cuda);             \
  m.impl("packed_linear_float", &packed_linear_float_cuda);           \
  m.impl("packed_linear_grad_input", &packed_linear_grad_input_cuda)

TORCH_LIBRARY_IMPL(bitops, CUDA, m) { BITOPS_CUDA_IMPLS(m); }

// The same kernels under bitops_cuda::<op>, whatever BITOPS_CUDA_BACKEND registers for bitops::<op>:
// tests and benchmarks call them side by side with bitops.triton.ops.<op>.
TORCH_LIBRARY(bitops_cuda, m) {
  for (const char* schema : kSchemas) {
    const std::string_view s(schema);
    const bool no_cuda_kernel = s.rfind("quantize_rows_int8", 0) == 0 || s.rfind("packed_gemv_int8", 0) == 0 ||
                          s.rfind("attention", 0) == 0 || s.rfind("add_layer_norm_int8", 0) == 0 ||
                          s.rfind("encoder_layer_int8", 0) == 0;
    if (!no_cuda_kernel) m.def(schema);
  }
}
TORCH_LIBRARY_IMPL(bitops_cuda, CUDA, m) { BITOPS_CUDA_IMPLS(m); }

}  // namespace bitops::cuda
