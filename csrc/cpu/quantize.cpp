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
#include "isa.h"

#if BITOPS_X86
#include <immintrin.h>
#endif

namespace bitops::cpu {

namespace {

// One row, portable: returns false if the row holds a nan or inf.
bool quantize_row_portable(const float* row, int64_t k, float hi, float lo, int8_t* out, float* scale) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t c = 0; c < k; ++c) {
    finite &= std::isfinite(row[c]);
    amax = std::fmax(amax, std::fabs(row[c]));
  }
  const float s = amax > 0.f ? amax / hi : 1.f;
  *scale = s;
  for (int64_t c = 0; c < k; ++c) {
    // nearbyint rounds half to even in the default rounding mode, as torch.round does.
    const float v = std::nearbyint(row[c] / s);
    out[c] = static_cast<int8_t>(std::fmin(std::fmax(v, lo), hi));
  }
  return finite;
}

#if BITOPS_X86
// The same arithmetic 8 floats at a time: a true division (no reciprocal), vroundps to nearest-even,
// clamp, then the exact integer conversion; without SSE4.1 in the baseline build, the portable loop
// calls nearbyint once per element and costs ~20x more.
BITOPS_TARGET_AVX2 bool quantize_row_avx2(const float* row, int64_t k, float hi, float lo, int8_t* out, float* scale) {
  const __m256 sign = _mm256_set1_ps(-0.f), inf = _mm256_set1_ps(INFINITY);
  __m256 vmax = _mm256_setzero_ps();
  int finite_mask = 0xFF;
  int64_t c = 0;
  for (; c + 8 <= k; c += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(row + c));
    finite_mask &= _mm256_movemask_ps(_mm256_cmp_ps(a, inf, _CMP_LT_OQ));  // false for inf and nan
    vmax = _mm256_max_ps(vmax, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0.f;
  for (float v : lanes) amax = std::fmax(amax, v);
  bool finite = finite_mask == 0xFF;
  for (; c < k; ++c) {
    finite &= std::isfinite(row[c]);
    amax = std::fmax(amax, std::fabs(row[c]));
  }
  const float s = amax > 0.f ? amax / hi : 1.f;
  *scale = s;
  const __m256 vs = _mm256_set1_ps(s), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  c = 0;
  for (; c + 8 <= k; c += 8) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(row + c), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(v, vlo), vhi);
    const __m128i i32lo = _mm256_castsi256_si128(_mm256_cvtps_epi32(v));
    const __m128i i32hi = _mm256_extracti128_si256(_mm256_cvtps_epi32(v), 1);
    const __m128i i16 = _mm_packs_epi32(i32lo, i32hi);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + c), _mm_packs_epi16(i16, i16));
  }
  for (; c < k; ++c) out[c] = static_cast<int8_t>(std::fmin(std::fmax(std::nearbyint(row[c] / s), lo), hi));
  return finite;
}
#endif

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
  const bool avx2 = use_avx2();
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
#if BITOPS_X86
      const bool finite = avx2 ? quantize_row_avx2(xp + r * k, k, hi, lo, qp + r * k, sp + r)
                               : quantize_row_portable(xp + r * k, k, hi, lo, qp + r * k, sp + r);
#else
      const bool finite = quantize_row_portable(xp + r * k, k, hi, lo, qp + r * k, sp + r);
#endif
      if (!finite) {
        int64_t none = -1;
        bad_row.compare_exchange_strong(none, r);
      }
    }
  });
  (void)avx2;
  TORCH_CHECK_VALUE(bad_row.load() < 0, "x holds non-finite values (nan or inf) in row ", bad_row.load(),
                    "; expected finite activations");
  return {q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) { m.impl("quantize_rows_int8", &quantize_rows_int8_cpu); }

}  // namespace bitops::cpu
