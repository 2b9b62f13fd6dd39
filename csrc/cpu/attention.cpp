// attention on CPU: out = softmax(query key^T * scale + mask) value in float32, the float part of a
// packed BERT's attention (the projections around it are the packed GEMMs). At BERT's sizes (head
// dim 32-64, 128 tokens) torch's SDPA spends most of its time outside the multiplies (~20 GMAC/s
// here); this kernel keeps each tile's scores in L1 and never writes the (Lq, Lk) matrix out.
//
// One task per (batch, head, block of query rows). A task packs its head's key transposed (D, Lk),
// zero padded (its value rows are read in place, or packed when Dv is not a multiple of 16), then,
// per tile of kTileRows query rows: scores = q K^T (a register-blocked multiply, kTileRows x 16 sums
// per step), scaled and masked, their softmax (max, exp, sum), and out = (p V) / sum. Keys that a
// boolean mask hides from every row of the tile are skipped. The output is written as (B, Lq, H, Dv)
// memory and returned as its (B, H, Lq, Dv) view, so merging the heads after it (BERT's transpose +
// reshape) is free. A row whose keys are all masked gives zeros, as torch's SDPA on CPU does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "isa.h"

#if BITOPS_X86
#include <immintrin.h>
#endif

namespace bitops::cpu {

namespace {

constexpr int64_t kTileRows = 6;   // query rows per tile: 6 x 2 accumulators, 12 FMAs per 8 loads
constexpr int64_t kTileCols = 16;  // key columns of q K^T, value columns of p V per step: two vectors
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Pointers and element strides of the operands of one call (last dimensions contiguous).
struct Attention {
  int64_t batch, heads, lq, lk, d, dv;
  const float *q, *k, *v;
  int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl;
  const float* float_mask = nullptr;  // added to the scaled scores
  const bool* bool_mask = nullptr;    // false: masked out
  int64_t m_sb = 0, m_sh = 0, m_sl = 0;  // 0 along broadcast dimensions
  float scale;
  float* out;  // (B, Lq, H, Dv)

  const float* q_row(int64_t b, int64_t h, int64_t i) const { return q + b * q_sb + h * q_sh + i * q_sl; }
  const float* k_row(int64_t b, int64_t h, int64_t j) const { return k + b * k_sb + h * k_sh + j * k_sl; }
  const float* v_row(int64_t b, int64_t h, int64_t j) const { return v + b * v_sb + h * v_sh + j * v_sl; }
  int64_t mask_offset(int64_t b, int64_t h, int64_t i) const { return b * m_sb + h * m_sh + i * m_sl; }
  float* out_row(int64_t b, int64_t h, int64_t i) const { return out + ((b * lq + i) * heads + h) * dv; }
};

// ---------------------------------------------------------------------------------------------
// Portable path: the same steps one row and one value at a time, std::exp.

void attend_rows_portable(const Attention& a, int64_t b, int64_t h, int64_t i0, int64_t i1, std::vector<float>& s) {
  s.resize(a.lk);
  for (int64_t i = i0; i < i1; ++i) {
    const float* q = a.q_row(b, h, i);
    const int64_t mo = a.mask_offset(b, h, i);
    float mx = kNegInf;
    for (int64_t j = 0; j < a.lk; ++j) {
      const float* k = a.k_row(b, h, j);
      float dot = 0.f;
      for (int64_t c = 0; c < a.d; ++c) dot += q[c] * k[c];
      float x = dot * a.scale;
      if (a.float_mask) x += a.float_mask[mo + j];
      if (a.bool_mask && !a.bool_mask[mo + j]) x = kNegInf;
      s[j] = x;
      mx = std::isnan(x) || std::isnan(mx) ? NAN : std::max(mx, x);  // a nan score makes the row nan
    }
    float* o = a.out_row(b, h, i);
    std::fill(o, o + a.dv, 0.f);
    if (mx == kNegInf) continue;  // every key masked (or none): zeros
    float sum = 0.f;
    for (int64_t j = 0; j < a.lk; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int64_t j = 0; j < a.lk; ++j) {
      const float* v = a.v_row(b, h, j);
      for (int64_t c = 0; c < a.dv; ++c) o[c] += s[j] * v[c];
    }
    const float inv = 1.f / sum;
    for (int64_t c = 0; c < a.dv; ++c) o[c] *= inv;
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 path.

#if BITOPS_X86
#define BITOPS_TARGET_FMA __attribute__((target("avx2,fma")))

// One head's operands: kt (D, lk_pad) = key transposed, zero padded; value rows read at v + j * v_stride,
// in place when Dv is a multiple of 16 (BERT's 32 and 64), else from vp (Lk, dv_pad), zero padded.
struct PackedHead {
  int64_t lk_pad = 0, dv_pad = 0, v_stride = 0;
  const float* v = nullptr;
  std::vector<float> kt, vp, scores;  // scores: (kTileRows, lk_pad), the tile's scores, then its exps
};

// dst[c * ld + j] = rows[j][c] for an 8 x 8 block: eight rows of 8 floats in, eight columns out.
__attribute__((target("avx2,fma"), always_inline)) inline void transpose8x8(const float* const* rows, float* dst, int64_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i]);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// `count` rows of `floats` floats, `stride` floats apart from `row`, into L1. A head's rows are pieces of
// 128 bytes (BERT's head size 32) a row stride apart (4.5 KiB in the QKV GEMM's output), each on a page
// of its own, which the hardware prefetchers do not follow.
BITOPS_TARGET_FMA inline void prefetch_rows(const float* row, int64_t stride, int64_t count, int64_t floats) {
  for (int64_t r = 0; r < count; ++r, row += stride) {
    const char* bytes = reinterpret_cast<const char*>(row);
    const int64_t size = floats * static_cast<int64_t>(sizeof(float));
    for (int64_t off = 0; off < size; off += 64) _mm_prefetch(bytes + off, _MM_HINT_T0);
    if (size > 0) _mm_prefetch(bytes + size - 1, _MM_HINT_T0);  // the last line when the row starts mid-line
  }
}

BITOPS_TARGET_FMA void pack_head(const Attention& a, int64_t b, int64_t h, PackedHead& p) {
  p.lk_pad = round_up(std::max<int64_t>(a.lk, 1), kTileCols);
  p.dv_pad = round_up(a.dv, kTileCols);
  p.kt.resize(a.d * p.lk_pad);
  p.scores.resize(kTileRows * p.lk_pad);
  // key transposed, 8 x 8 blocks through registers (element by element it took ~1/5 of the kernel).
  const int64_t lk8 = a.lk / 8 * 8, d8 = a.d / 8 * 8;
  // The value rows are read in place when Dv is a multiple of 16 (below): fetched here with their key
  // rows, not one by one in the first tile's p V (at 32 x 128 tokens 3-5% of attention, in the model).
  const bool values_in_place = a.dv == p.dv_pad;
  for (int64_t j = 0; j < lk8; j += 8) {
    const float* rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = a.k_row(b, h, j + i);
    if (values_in_place) prefetch_rows(a.v_row(b, h, j), a.v_sl, 8, a.dv);
    for (int64_t c = 0; c < d8; c += 8) {
      transpose8x8(rows, p.kt.data() + c * p.lk_pad + j, p.lk_pad);
      for (auto& row : rows) row += 8;
    }
  }
  for (int64_t j = 0; j < a.lk; ++j) {  // what the blocks left: the last lk % 8 keys, the last d % 8 dims
    const float* k = a.k_row(b, h, j);
    for (int64_t c = j < lk8 ? d8 : 0; c < a.d; ++c) p.kt[c * p.lk_pad + j] = k[c];
  }
  for (int64_t c = 0; c < a.d; ++c) std::fill(p.kt.begin() + c * p.lk_pad + a.lk, p.kt.begin() + (c + 1) * p.lk_pad, 0.f);
  if (a.dv == p.dv_pad) {  // copying the value rows took ~3% of the kernel
    p.v = a.v_row(b, h, 0), p.v_stride = a.v_sl;
    return;
  }
  p.vp.resize(a.lk * p.dv_pad);
  for (int64_t j = 0; j < a.lk; ++j) {
    float* row = p.vp.data() + j * p.dv_pad;
    std::memcpy(row, a.v_row(b, h, j), a.dv * sizeof(float));
    std::fill(row + a.dv, row + p.dv_pad, 0.f);
  }
  p.v = p.vp.data(), p.v_stride = p.dv_pad;
}

// scores[:, j0:j1] (R rows of lk_pad) = q (R rows of D) times kt: R x 16 sums in registers per step.
template <int R>
BITOPS_TARGET_FMA void tile_scores(const float* const* q, int64_t d, const PackedHead& p, int64_t j0, int64_t j1,
                                   float* scores) {
  const int64_t lk_pad = p.lk_pad;
  for (int64_t j = j0; j < j1; j += kTileCols) {  // j0 a multiple of 16; the last step may pass j1 (padding)
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float* kc = p.kt.data() + j;
    for (int64_t c = 0; c < d; ++c, kc += lk_pad) {
      const __m256 k0 = _mm256_loadu_ps(kc), k1 = _mm256_loadu_ps(kc + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 qb = _mm256_broadcast_ss(q[r] + c);
        acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(scores + r * lk_pad + j, acc[r][0]);
      _mm256_storeu_ps(scores + r * lk_pad + j + 8, acc[r][1]);
    }
  }
}

BITOPS_TARGET_FMA float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

BITOPS_TARGET_FMA float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x - mx) of 8 scores, 0 where x - mx < -86.6 (a masked score is -inf; nan stays nan).
// x - mx = n ln2 + r with |r| <= ln2/2 (ln2 split in two for exactness, Cody & Waite), exp(r) =
// 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3), fitted for relative error (1.8e-7 evaluated in float32;
// a Taylor series to r^7 made the kernel 5% slower at 1 x 128), times 2^n by adding n to its exponent
// bits. n is rounded by adding 1.5 * 2^23 in the FMA that divides by ln2 (round-to-nearest-even then
// happens in that addition) and subtracting it again: with the integer add, 2 operations fewer than
// vroundps and a float multiply by 2^n, attention 1.1-1.5% faster at 1 x 128 and 32 x 128, outputs the
// same. No clamp: below -86.6, where p 2^n would leave float's normal range, the result is masked to 0.
BITOPS_TARGET_FMA inline __m256 softmax_exp(__m256 x, __m256 mx) {
  const __m256 a = _mm256_sub_ps(x, mx);
  const __m256 magic = _mm256_set1_ps(12582912.f);  // 1.5 * 2^23
  const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(a, _mm256_set1_ps(1.44269504088896341f), magic), magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), a);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.008312525f), r, _mm256_set1_ps(0.041890115f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.16667114f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.49999231f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  // p (in [0.7, 1.42]) times 2^n, n >= -125: a normal float. A nan n converts to 0x80000000, which
  // the shift turns into 0: a nan p stays as it is.
  const __m256i e = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23));
  return _mm256_andnot_ps(_mm256_cmp_ps(a, _mm256_set1_ps(-86.6f), _CMP_LT_OQ), _mm256_castsi256_ps(e));
}

// Scales and masks one row of raw scores x[j0:j1] in place, replaces them with exp(x - max); returns
// 1 / sum of the exps, or 0 when every key is masked (the row's exps are then all 0). Keys outside
// [j0, j1) are masked ones (see key_span): their exps would be 0.
BITOPS_TARGET_FMA float softmax_row(const Attention& a, int64_t mask_offset, float* x, int64_t j0, int64_t j1) {
  const __m256 scale = _mm256_set1_ps(a.scale), neg_inf = _mm256_set1_ps(kNegInf);
  const float* fm = a.float_mask ? a.float_mask + mask_offset : nullptr;
  const bool* bm = a.bool_mask ? a.bool_mask + mask_offset : nullptr;
  const int64_t full = j0 + (j1 - j0) / 8 * 8;
  __m256 vmax = neg_inf, vnan = _mm256_setzero_ps();
  for (int64_t j = j0; j < full; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), scale);
    if (fm) v = _mm256_add_ps(v, _mm256_loadu_ps(fm + j));
    if (bm) {
      const __m256i keep = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bm + j)));
      v = _mm256_blendv_ps(v, neg_inf, _mm256_castsi256_ps(_mm256_cmpeq_epi32(keep, _mm256_setzero_si256())));
    }
    _mm256_storeu_ps(x + j, v);
    vmax = _mm256_max_ps(vmax, v);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // vmaxps drops nans: tracked apart
  }
  float mx = _mm256_movemask_ps(vnan) ? NAN : hmax8(vmax);  // a nan score makes the row nan
  for (int64_t j = full; j < j1; ++j) {
    float v = x[j] * a.scale;
    if (fm) v += fm[j];
    if (bm && !bm[j]) v = kNegInf;
    x[j] = v;
    mx = std::isnan(v) || std::isnan(mx) ? NAN : std::max(mx, v);
  }
  if (mx == kNegInf) {
    std::fill(x + j0, x + j1, 0.f);
    return 0.f;
  }
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = j0; j < full; j += 8) {
    const __m256 e = softmax_exp(_mm256_loadu_ps(x + j), vmx);
    _mm256_storeu_ps(x + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (full < j1) {  // the tail through the same vector arithmetic, padded with -inf (exp 0)
    alignas(32) float tail[8];
    std::fill(tail, tail + 8, kNegInf);
    std::copy(x + full, x + j1, tail);
    const __m256 e = softmax_exp(_mm256_load_ps(tail), vmx);
    _mm256_store_ps(tail, e);
    std::copy(tail, tail + (j1 - full), x + full);
    vsum = _mm256_add_ps(vsum, e);
  }
  return 1.f / hsum8(vsum);
}

// out rows (R, Dv) = (exps[:, j0:j1] times value rows [j0, j1)) * inv: R x 16 sums in registers per step.
template <int R>
BITOPS_TARGET_FMA void tile_output(const float* exps, int64_t j0, int64_t j1, const PackedHead& p, const float* inv,
                                   float* const* out, int64_t dv) {
  const int64_t lk_pad = p.lk_pad, dv_pad = p.dv_pad, v_stride = p.v_stride;
  const float* e[R];  // hoisted: indexing exps + r * lk_pad in the loop cost ~2x in address arithmetic
  for (int r = 0; r < R; ++r) e[r] = exps + r * lk_pad;
  for (int64_t c0 = 0; c0 < dv_pad; c0 += kTileCols) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float* vr = p.v + j0 * v_stride + c0;
    for (int64_t j = j0; j < j1; ++j, vr += v_stride) {
      const __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 eb = _mm256_broadcast_ss(e[r] + j);
        acc[r][0] = _mm256_fmadd_ps(eb, v0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(eb, v1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 s = _mm256_set1_ps(inv[r]);
      const __m256 o0 = _mm256_mul_ps(acc[r][0], s), o1 = _mm256_mul_ps(acc[r][1], s);
      if (c0 + kTileCols <= dv) {
        _mm256_storeu_ps(out[r] + c0, o0);
        _mm256_storeu_ps(out[r] + c0 + 8, o1);
      } else {  // the last columns of a Dv that is not a multiple of 16
        alignas(32) float row[kTileCols];
        _mm256_store_ps(row, o0);
        _mm256_store_ps(row + 8, o1);
        std::copy(row, row + (dv - c0), out[r] + c0);
      }
    }
  }
}

// Bit t set: bytes[t] is nonzero, for 32 bytes.
BITOPS_TARGET_FMA inline uint32_t nonzero_bits(const bool* bytes) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  return ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_setzero_si256())));
}

// [first, last + 1) of the true entries of a boolean mask row ({0, 0} when none).
BITOPS_TARGET_FMA std::pair<int64_t, int64_t> true_span(const bool* row, int64_t n) {
  const int64_t n32 = n / 32 * 32;
  int64_t first = -1;
  for (int64_t j = 0; j < n32 && first < 0; j += 32) {
    if (const uint32_t bits = nonzero_bits(row + j)) first = j + __builtin_ctz(bits);
  }
  for (int64_t j = n32; j < n && first < 0; ++j) {
    if (row[j]) first = j;
  }
  if (first < 0) return {0, 0};
  for (int64_t j = n - 1; j >= n32; --j) {
    if (row[j]) return {first, j + 1};
  }
  for (int64_t j = n32 - 32; j >= 0; j -= 32) {
    if (const uint32_t bits = nonzero_bits(row + j)) return {first, j + 32 - __builtin_clz(bits)};
  }
  return {first, first + 1};  // not reached: row[first] is true
}

template <int R>
void attend_tile_avx2(const Attention& a, int64_t b, int64_t h, int64_t i, PackedHead& p) {
  const float* q[R];
  float* out[R];
  float inv[R];
  for (int r = 0; r < R; ++r) {
    q[r] = a.q_row(b, h, i + r);
    out[r] = a.out_row(b, h, i + r);
  }
  // Keys that a boolean mask hides from every row of the tile are skipped, not computed and masked:
  // a batch padded to its longest sequence does its shorter sequences' attention over their own
  // length only. Other masks (and none) span all keys.
  int64_t j0 = 0, j1 = a.lk;
  if (a.bool_mask) {
    j0 = a.lk, j1 = 0;
    for (int r = 0; r < R; ++r) {
      const auto [first, end] = true_span(a.bool_mask + a.mask_offset(b, h, i + r), a.lk);
      if (first < end) j0 = std::min(j0, first), j1 = std::max(j1, end);
    }
    if (j0 >= j1) {  // every key masked for every row: zeros
      for (int r = 0; r < R; ++r) std::fill(out[r], out[r] + a.dv, 0.f);
      return;
    }
    j0 = j0 / kTileCols * kTileCols;
  }
  tile_scores<R>(q, a.d, p, j0, j1, p.scores.data());
  for (int r = 0; r < R; ++r) {
    inv[r] = softmax_row(a, a.mask_offset(b, h, i + r), p.scores.data() + r * p.lk_pad, j0, j1);
  }
  tile_output<R>(p.scores.data(), j0, j1, p, inv, out, a.dv);
}

// The query rows [r0, r1) into L1, for the next tile. At 32 x 128 tokens the QKV GEMM's output (19 MB)
// comes from memory: with the next tile's rows fetched while a tile computes, attention took 15.2 ms a
// layer instead of 16.1 (in the model, interleaved; at 1 x 128 tokens, where the output is cached, no
// change). Prefetching the next head's keys and values too (48 KiB, more than L1) did not help.
BITOPS_TARGET_FMA inline void prefetch_query_rows(const Attention& a, int64_t b, int64_t h, int64_t r0, int64_t r1) {
  if (r0 < r1) prefetch_rows(a.q_row(b, h, r0), a.q_sl, r1 - r0, a.d);
}

void attend_rows_avx2(const Attention& a, int64_t b, int64_t h, int64_t i0, int64_t i1, PackedHead& p) {
  prefetch_query_rows(a, b, h, i0, std::min(i1, i0 + kTileRows));  // the first tile's, while the head is packed
  pack_head(a, b, h, p);
  for (int64_t i = i0; i < i1; i += kTileRows) {
    prefetch_query_rows(a, b, h, i + kTileRows, std::min(i1, i + 2 * kTileRows));
    switch (std::min(kTileRows, i1 - i)) {
      case 6: attend_tile_avx2<6>(a, b, h, i, p); break;
      case 5: attend_tile_avx2<5>(a, b, h, i, p); break;
      case 4: attend_tile_avx2<4>(a, b, h, i, p); break;
      case 3: attend_tile_avx2<3>(a, b, h, i, p); break;
      case 2: attend_tile_avx2<2>(a, b, h, i, p); break;
      default: attend_tile_avx2<1>(a, b, h, i, p); break;
    }
  }
}
#endif

// A float operand as float32 with a contiguous last dimension (no copy when it already is one).
at::Tensor as_rows(const at::Tensor& t) {
  at::Tensor f = t.to(at::kFloat);
  return f.stride(-1) == 1 || f.size(-1) <= 1 ? f : f.contiguous();
}

at::Tensor attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const std::optional<at::Tensor>& attn_mask, std::optional<double> scale) {
  check_attention_args(query, key, value, attn_mask);
  const at::Tensor q = as_rows(query), k = as_rows(key), v = as_rows(value);
  Attention a{};
  a.batch = q.size(0), a.heads = q.size(1), a.lq = q.size(2), a.lk = k.size(2), a.d = q.size(3), a.dv = v.size(3);
  a.q = q.data_ptr<float>(), a.k = k.data_ptr<float>(), a.v = v.data_ptr<float>();
  a.q_sb = q.stride(0), a.q_sh = q.stride(1), a.q_sl = q.stride(2);
  a.k_sb = k.stride(0), a.k_sh = k.stride(1), a.k_sl = k.stride(2);
  a.v_sb = v.stride(0), a.v_sh = v.stride(1), a.v_sl = v.stride(2);
  a.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(a.d)));
  at::Tensor mask;
  if (attn_mask.has_value()) {
    mask = attn_mask->scalar_type() == at::kBool ? *attn_mask : attn_mask->to(at::kFloat);
    mask = mask.expand({a.batch, a.heads, a.lq, a.lk});
    if (mask.stride(3) != 1 && a.lk > 1) mask = mask.contiguous();
    a.m_sb = mask.stride(0), a.m_sh = mask.stride(1), a.m_sl = mask.stride(2);
    if (mask.scalar_type() == at::kBool) {
      a.bool_mask = mask.data_ptr<bool>();
    } else {
      a.float_mask = mask.data_ptr<float>();
    }
  }
  at::Tensor out = at::empty({a.batch, a.lq, a.heads, a.dv}, q.options());
  a.out = out.data_ptr<float>();

  // Tasks: (batch x head) pairs, each split into query blocks only when there are too few pairs to
  // keep every thread busy (each block packs its head's K and V again: 1/Lq of its work per row).
  const int64_t pairs = a.batch * a.heads;
  const int64_t tiles = std::max<int64_t>(1, (a.lq + kTileRows - 1) / kTileRows);
  const int64_t splits = pairs == 0 ? 1 : std::clamp<int64_t>((4 * at::get_num_threads() + pairs - 1) / pairs, 1, tiles);
  const int64_t rows_per_split = (tiles + splits - 1) / splits * kTileRows;
  const bool avx2 = use_avx2();
  at::parallel_for(0, pairs * splits, 1, [&](int64_t t0, int64_t t1) {
#if BITOPS_X86
    PackedHead packed;
#endif
    std::vector<float> scores;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / splits, i0 = (t % splits) * rows_per_split, i1 = std::min(a.lq, i0 + rows_per_split);
      if (i0 >= i1) continue;
#if BITOPS_X86
      if (avx2) {
        attend_rows_avx2(a, bh / a.heads, bh % a.heads, i0, i1, packed);
        continue;
      }
#endif
      attend_rows_portable(a, bh / a.heads, bh % a.heads, i0, i1, scores);
    }
  });
  (void)avx2;
  return out.transpose(1, 2).to(query.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) { m.impl("attention", &attention_cpu); }

}  // namespace bitops::cpu
