// packed_linear_float and packed_linear_grad_input on CPU: float activations times packed weights.
//
// These serve training (grad_input of every packed layer) and float-activation layers, so they
// favour throughput at large M: weights are decoded to fp32 (value * scale, exact) one block of
// kRowsPerBlock rows at a time and multiplied with torch's sgemm. Only one block of decoded weights
// exists at any moment (at most kRowsPerBlock x K floats), never the whole dense matrix.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "decode.h"

namespace bitops::cpu {

namespace {

constexpr int64_t kRowsPerBlock = 128;

// Rows [n0, n0 + rows) of the dequantized weight as a (rows, K) fp32 tensor.
at::Tensor dequantize_rows(const at::Tensor& w, const at::Tensor& w_scale, int64_t bits, int64_t k,
                           int64_t group_size, int64_t n0, int64_t rows) {
  const int64_t nw = w.size(1), groups = w_scale.size(1);
  at::Tensor out = at::empty({rows, k}, w_scale.options());
  const int32_t* wp = w.data_ptr<int32_t>();
  const float* sp = w_scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<int8_t> codes(nw * (32 / bits));
    for (int64_t r = r0; r < r1; ++r) {
      expand_words(wp + (n0 + r) * nw, nw, static_cast<int>(bits), /*to_values=*/true,
                   reinterpret_cast<uint8_t*>(codes.data()));
      const float* s = sp + (n0 + r) * groups;
      float* o = op + r * k;
      // Group by group, so the inner loop has no division and vectorizes.
      for (int64_t g = 0, c0 = 0; c0 < k; ++g, c0 += group_size) {
        const int64_t c1 = std::min(k, c0 + group_size);
        const float sg = s[g];
        for (int64_t c = c0; c < c1; ++c) o[c] = static_cast<float>(codes[c]) * sg;
      }
    }
  });
  return out;
}

at::Tensor packed_linear_float_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_scale_in,
                                   const std::optional<at::Tensor>& bias, int64_t bits, int64_t in_features,
                                   int64_t group_size) {
  const int64_t n = check_linear_float_args(x, w_in, w_scale_in, bias, bits, in_features, group_size);

  const at::Tensor w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({x.size(0), n}, xf.options());
  for (int64_t n0 = 0; n0 < n; n0 += kRowsPerBlock) {
    const int64_t rows = std::min(kRowsPerBlock, n - n0);
    const at::Tensor wb = dequantize_rows(w, w_scale, bits, in_features, group_size, n0, rows);
    y.narrow(1, n0, rows).copy_(at::mm(xf, wb.t()));
  }
  if (bias.has_value()) y.add_(bias->to(at::kFloat));
  return y.to(x.scalar_type());
}

at::Tensor packed_linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& w_in,
                                        const at::Tensor& w_scale_in, int64_t bits, int64_t in_features,
                                        int64_t group_size) {
  const int64_t n = check_grad_input_args(grad_output, w_in, w_scale_in, bits, in_features, group_size);

  const at::Tensor w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const at::Tensor g = grad_output.to(at::kFloat).contiguous();
  at::Tensor gi = at::zeros({g.size(0), in_features}, g.options());
  for (int64_t n0 = 0; n0 < n; n0 += kRowsPerBlock) {
    const int64_t rows = std::min(kRowsPerBlock, n - n0);
    const at::Tensor wb = dequantize_rows(w, w_scale, bits, in_features, group_size, n0, rows);
    gi.addmm_(g.narrow(1, n0, rows), wb);
  }
  return gi.to(grad_output.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) {
  m.impl("packed_linear_float", &packed_linear_float_cpu);
  m.impl("packed_linear_grad_input", &packed_linear_grad_input_cpu);
}

}  // namespace bitops::cpu
