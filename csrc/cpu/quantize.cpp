// quantize_rows_int8 on CPU: dynamic symmetric per-row quantization of float activations, fused into
// one pass for the max and one for the codes (the torch reference takes five passes). Arithmetic is
// the reference's, in float32: scale = amax / hi, q = round-half-even(x / scale), clamped.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <tuple>

#include "../checks.h"

namespace bitops::cpu {

namespace {

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x_in, int64_t bits) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 4, "bits=", bits, " is not supported for activations; expected 8 or 4");
  check_float_activation("x", x_in);
  TORCH_CHECK_VALUE(x_in.dim() == 2, "x has ", x_in.dim(), " dimensions (shape ", shape_str(x_in),
                    "); expected 2: (M, K) float activations");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  at::Tensor q = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({m}, x.options());
  const float hi = static_cast<float>((1 << (bits - 1)) - 1), lo = -hi - 1.f;
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  // A nan or inf would give garbage codes silently; the first bad row is reported after the loop.
  std::atomic<int64_t> bad_row{-1};
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * k;
      float amax = 0.f;
      bool finite = true;
      for (int64_t c = 0; c < k; ++c) {
        finite &= std::isfinite(row[c]);
        amax = std::fmax(amax, std::fabs(row[c]));
      }
      if (!finite) {
        int64_t none = -1;
        bad_row.compare_exchange_strong(none, r);
      }
      const float s = amax > 0.f ? amax / hi : 1.f;
      sp[r] = s;
      int8_t* out = qp + r * k;
      for (int64_t c = 0; c < k; ++c) {
        // nearbyint rounds half to even in the default rounding mode, as torch.round does.
        const float v = std::nearbyint(row[c] / s);
        out[c] = static_cast<int8_t>(std::fmin(std::fmax(v, lo), hi));
      }
    }
  });
  TORCH_CHECK_VALUE(bad_row.load() < 0, "x holds non-finite values (nan or inf) in row ", bad_row.load(),
                    "; expected finite activations");
  return {q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) { m.impl("quantize_rows_int8", &quantize_rows_int8_cpu); }

}  // namespace bitops::cpu
