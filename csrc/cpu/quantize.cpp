// quantize_rows_int8 on CPU: dynamic symmetric per-row quantization of float activations, fused into
// one pass for the max and one for the codes (the torch reference takes five passes). Arithmetic is
// the reference's, in float32: scale = amax / hi, q = round-half-even(x / scale), clamped.
// activation="gelu" applies the erf GELU to each row first, into an L1-resident row buffer, so the
// FFN's GELU output (4x the hidden size, fp32) is never written to memory and read back.
// add_layer_norm_int8 (below) puts a residual add and a LayerNorm in front of the same row quantizer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "isa.h"

#if BITOPS_X86
#include <immintrin.h>
#endif

namespace bitops::cpu {

namespace {

// GELU, erf form: x * 0.5 * (1 + erf(x / sqrt(2))). The portable path computes it as ATen's scalar
// kernel does (std::erf). torch's own float GELU on x86 is oneDNN's JIT code, which nothing outside
// it reproduces bit for bit, so the AVX2 path does not try: its erf is a rational function of x,
//   erf(x / sqrt(2)) = x P(x^2) / Q(x^2), P and Q of degree 5 (q0 = 1),
// fitted for |erf| error on [0, 5.544] by tools/fit_gelu_erf.py: 1.6e-8 in float64. Past |x| = 5.544
// (erf(5.544 / sqrt 2) = 1 - 9e-9) x is clamped there, where the rational evaluates to 1, so GELU
// gives x and 0 exactly. GELU = hx + hx erf with hx = x / 2, one FMA. Its error, <= 2.0e-7 of
// max(1, |x|) in float32, is far below one int8 step of any row whose max passes ~0.01, so codes
// differ from quantizing torch's GELU only where a value sits within that error of a rounding boundary
// (136 of 37.7 M codes of all-MiniLM-L6-v2's FFNs at 32 x 128 tokens). 17 vector operations with one
// division. The previous form (the same fit in z = x / sqrt 2, a blend for |z| >= 3.92, 1 + erf and
// two multiplies: 22 operations) took 0.51 ns per value over an L1-resident row, this one 0.375; GELU +
// quantization of 128 x 1536 162 -> 134 us; the model (W1A8 fused layers, interleaved) 1.007x at
// 1 x 128 tokens, 1.012x at 32 x 128. (Piecewise polynomials, 8 intervals through vpermps: 0.61 ns.)
float gelu_portable(float x) { return x * 0.5f * (1.f + std::erf(x * static_cast<float>(M_SQRT1_2))); }

#if BITOPS_X86
__attribute__((target("avx2,fma"), always_inline)) inline __m256 gelu_avx2(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.f), one = _mm256_set1_ps(1.f);
  const __m256 sign = _mm256_and_ps(sign_bit, x);
  // |x| clamped to the fit's range (no overflow in P, Q for huge x; a nan stays in hx below)
  const __m256 a = _mm256_min_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(5.544f));
  const __m256 w = _mm256_mul_ps(a, a);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(4.49581634e-08f), w, _mm256_set1_ps(1.27049798e-05f));
  p = _mm256_fmadd_ps(p, w, _mm256_set1_ps(3.41946812e-04f));
  p = _mm256_fmadd_ps(p, w, _mm256_set1_ps(9.38004628e-03f));
  p = _mm256_fmadd_ps(p, w, _mm256_set1_ps(6.81556538e-02f));
  p = _mm256_fmadd_ps(p, w, _mm256_set1_ps(7.97884464e-01f));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(1.18965818e-06f), w, _mm256_set1_ps(7.42618940e-05f));
  q = _mm256_fmadd_ps(q, w, _mm256_set1_ps(1.89662701e-03f));
  q = _mm256_fmadd_ps(q, w, _mm256_set1_ps(2.87720766e-02f));
  q = _mm256_fmadd_ps(q, w, _mm256_set1_ps(2.52086282e-01f));
  q = _mm256_fmadd_ps(q, w, one);
  const __m256 erf = _mm256_xor_ps(_mm256_min_ps(_mm256_div_ps(_mm256_mul_ps(a, p), q), one), sign);
  const __m256 hx = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
  return _mm256_fmadd_ps(hx, erf, hx);
}

// GELU of one row into out; the last k % 8 values go through the same vector arithmetic on a
// zero-padded copy, so every element takes one formula whatever its column.
__attribute__((target("avx2,fma"))) void gelu_row_avx2(const float* row, int64_t k, float* out) {
  int64_t c = 0;
  // One vector per step: the steps are independent, and out-of-order execution overlaps them (four
  // per step measured 7% slower, 1.00 against 0.93 ns per value over an L1-resident row).
  for (; c + 8 <= k; c += 8) _mm256_storeu_ps(out + c, gelu_avx2(_mm256_loadu_ps(row + c)));
  if (c < k) {
    alignas(32) float tail[8] = {};
    for (int64_t i = c; i < k; ++i) tail[i - c] = row[i];
    _mm256_store_ps(tail, gelu_avx2(_mm256_load_ps(tail)));
    for (int64_t i = c; i < k; ++i) out[i] = tail[i - c];
  }
}
#endif

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

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x_in, int64_t bits,
                                                          const std::string& activation) {
  check_activation_bits(bits);
  TORCH_CHECK_VALUE(activation == "none" || activation == "gelu", "activation='", activation,
                    "' is not supported; expected 'none' or 'gelu'");
  const bool gelu = activation == "gelu";
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
    // The GELU of a row lands here (L1: 12 KiB at K=3072) and is quantized from here. A non-finite
    // input stays non-finite through GELU (inf -> inf, -inf and nan -> nan), so the check below holds.
    std::vector<float> activated(gelu ? k : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * k;
      if (gelu) {
#if BITOPS_X86
        if (avx2) {
          gelu_row_avx2(row, k, activated.data());
        } else
#endif
          for (int64_t c = 0; c < k; ++c) activated[c] = gelu_portable(row[c]);
        row = activated.data();
      }
#if BITOPS_X86
      const bool finite = avx2 ? quantize_row_avx2(row, k, hi, lo, qp + r * k, sp + r)
                               : quantize_row_portable(row, k, hi, lo, qp + r * k, sp + r);
#else
      const bool finite = quantize_row_portable(row, k, hi, lo, qp + r * k, sp + r);
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

// --- add_layer_norm_int8: a BERT layer's add & norm, and the quantization of its output, one row at a time.
// The row of x + residual is written to out, normalized there in place (it stays in L1: 1.5 KiB at K =
// 384, 3 KiB at 768) and quantized from there with the row quantizer above, so the codes are exactly
// quantize_rows_int8(out)'s. The statistics are the two-pass ones (mean, then the mean of squared
// deviations), as torch's reference computes them; float rounding and summation order differ from
// ATen's LayerNorm kernel by ~1e-7 relative, so out matches torch's to float rounding, not bit for bit.

// Each step of a row's passes, on 8 columns (one ymm) or, in the portable loops, on one.
struct RowNorm {
  const float *w, *b;
  float mean, rstd;
};

void add_layer_norm_row_portable(const float* x, const float* r, int64_t k, float eps, RowNorm& n, float* out) {
  float sum = 0.f;
  for (int64_t c = 0; c < k; ++c) sum += out[c] = r ? x[c] + r[c] : x[c];
  n.mean = sum / static_cast<float>(k);
  float sq = 0.f;
  for (int64_t c = 0; c < k; ++c) sq += (out[c] - n.mean) * (out[c] - n.mean);
  n.rstd = 1.f / std::sqrt(sq / static_cast<float>(k) + eps);
  for (int64_t c = 0; c < k; ++c) {
    float y = (out[c] - n.mean) * n.rstd;
    if (n.w) y = y * n.w[c];
    if (n.b) y = y + n.b[c];
    out[c] = y;
  }
}

#if BITOPS_X86
BITOPS_TARGET_AVX2 inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// x[c..c+7] + r[c..c+7], or x's alone without a residual.
BITOPS_TARGET_AVX2 inline __m256 load_sum(const float* x, const float* r, int64_t c) {
  const __m256 v = _mm256_loadu_ps(x + c);
  return r ? _mm256_add_ps(v, _mm256_loadu_ps(r + c)) : v;
}

// The same passes 16 columns (two ymm, one accumulator each: an add's latency, not its throughput,
// bounds one chain) at a time, then 8, then the last k % 8 columns in scalar code.
BITOPS_TARGET_AVX2 void add_layer_norm_row_avx2(const float* x, const float* r, int64_t k, float eps, RowNorm& n, float* out) {
  const int64_t k16 = k / 16 * 16, k8 = k / 8 * 8;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t c = 0;
  for (; c < k16; c += 16) {
    const __m256 h0 = load_sum(x, r, c), h1 = load_sum(x, r, c + 8);
    _mm256_storeu_ps(out + c, h0), _mm256_storeu_ps(out + c + 8, h1);
    s0 = _mm256_add_ps(s0, h0), s1 = _mm256_add_ps(s1, h1);
  }
  for (; c < k8; c += 8) {
    const __m256 h = load_sum(x, r, c);
    _mm256_storeu_ps(out + c, h);
    s0 = _mm256_add_ps(s0, h);
  }
  float sum = hsum_ps(_mm256_add_ps(s0, s1));
  for (; c < k; ++c) sum += out[c] = r ? x[c] + r[c] : x[c];
  n.mean = sum / static_cast<float>(k);
  const __m256 mean = _mm256_set1_ps(n.mean);
  s0 = _mm256_setzero_ps(), s1 = s0;
  for (c = 0; c < k16; c += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(out + c), mean), d1 = _mm256_sub_ps(_mm256_loadu_ps(out + c + 8), mean);
    s0 = _mm256_add_ps(s0, _mm256_mul_ps(d0, d0)), s1 = _mm256_add_ps(s1, _mm256_mul_ps(d1, d1));
  }
  for (; c < k8; c += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(out + c), mean);
    s0 = _mm256_add_ps(s0, _mm256_mul_ps(d, d));
  }
  float sq = hsum_ps(_mm256_add_ps(s0, s1));
  for (; c < k; ++c) sq += (out[c] - n.mean) * (out[c] - n.mean);
  n.rstd = 1.f / std::sqrt(sq / static_cast<float>(k) + eps);
  const __m256 rstd = _mm256_set1_ps(n.rstd);
  for (c = 0; c < k8; c += 8) {
    __m256 y = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(out + c), mean), rstd);
    if (n.w) y = _mm256_mul_ps(y, _mm256_loadu_ps(n.w + c));
    if (n.b) y = _mm256_add_ps(y, _mm256_loadu_ps(n.b + c));
    _mm256_storeu_ps(out + c, y);
  }
  for (; c < k; ++c) {
    float y = (out[c] - n.mean) * n.rstd;
    if (n.w) y = y * n.w[c];
    if (n.b) y = y + n.b[c];
    out[c] = y;
  }
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_layer_norm_int8_cpu(const at::Tensor& x_in,
                                                                      const std::optional<at::Tensor>& residual_in,
                                                                      const std::optional<at::Tensor>& weight_in,
                                                                      const std::optional<at::Tensor>& bias_in,
                                                                      double eps, int64_t bits) {
  check_add_layer_norm_args(x_in, residual_in, weight_in, bias_in, eps, bits);
  const auto as_float = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->to(at::kFloat).contiguous() : at::Tensor();
  };
  const at::Tensor x = x_in.to(at::kFloat).contiguous(), residual = as_float(residual_in);
  const at::Tensor weight = as_float(weight_in), bias = as_float(bias_in);
  const int64_t m = x.size(0), k = x.size(1);
  at::Tensor out = at::empty({m, k}, x.options());
  at::Tensor q = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({m}, x.options());
  const float hi = static_cast<float>((1 << (bits - 1)) - 1), lo = -hi - 1.f;
  const float* xp = x.data_ptr<float>();
  const float* rp = residual.defined() ? residual.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  std::atomic<int64_t> bad_row{-1};
  const bool avx2 = use_avx2();
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
    RowNorm n{weight.defined() ? weight.data_ptr<float>() : nullptr, bias.defined() ? bias.data_ptr<float>() : nullptr,
              0.f, 0.f};
    for (int64_t r = r0; r < r1; ++r) {
      const float* res = rp ? rp + r * k : nullptr;
#if BITOPS_X86
      const bool finite =
          avx2 ? (add_layer_norm_row_avx2(xp + r * k, res, k, static_cast<float>(eps), n, op + r * k),
                  quantize_row_avx2(op + r * k, k, hi, lo, qp + r * k, sp + r))
               : (add_layer_norm_row_portable(xp + r * k, res, k, static_cast<float>(eps), n, op + r * k),
                  quantize_row_portable(op + r * k, k, hi, lo, qp + r * k, sp + r));
#else
      add_layer_norm_row_portable(xp + r * k, res, k, static_cast<float>(eps), n, op + r * k);
      const bool finite = quantize_row_portable(op + r * k, k, hi, lo, qp + r * k, sp + r);
#endif
      if (!finite) {
        int64_t none = -1;
        bad_row.compare_exchange_strong(none, r);
      }
    }
  });
  (void)avx2;
  TORCH_CHECK_VALUE(bad_row.load() < 0, "layer_norm(x + residual) holds non-finite values (nan or inf) in row ",
                    bad_row.load(), "; expected finite x, residual, weight and bias");
  return {out, q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8_cpu);
  m.impl("add_layer_norm_int8", &add_layer_norm_int8_cpu);
}

}  // namespace bitops::cpu
