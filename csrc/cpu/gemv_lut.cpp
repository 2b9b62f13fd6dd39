// packed_gemv_int8 on CPU: few int8 activation rows times 1-bit weights in the GEMV layout
// (bitops/formats.py, "GEMV layout of SIGN1"), by table lookup.
//
// Why a layout of its own: a lookup kernel needs, in one register, the weight bits of many rows at the
// same K positions. The canonical layout stores each row's bits along K, so the M=128 lookup kernel
// (linear_int8_lut.cpp) transposes them per call and amortizes that over the activation rows; at M=1
// nothing amortizes it. Here the transpose is done once, when a layer freezes, into a layout of the
// same size (1 bit per weight): 16-byte lanes of 4-bit indices, one per (row, group of 4 K positions).
//
// Exact arithmetic with byte tables: for a group of 4 activations x_t and a row's 4 signs s_t = +-1
// (index j, bit t = 1 for +1), the dot is sum_t s_t x_t, in [-512, 508]: no byte holds it. Split
// every activation into nibbles, x = 16 * xh + xl with xl = x & 15 in [0, 15] and xh = x >> 4 in
// [-8, 7]; then
//     TL[j] = sum_t s_t(j) xl_t in [-60, 60],   TH[j] = sum_t s_t(j) xh_t in [-32, 32]
// are int8 tables of 16 entries, one 128-bit lane each, and sum_t s_t x_t = TL[j] + 16 * TH[j]. One
// vpshufb looks up 32 rows in TL (lane 0: group 2q, lane 1: group 2q+1), another the same rows in TH;
// vpunpck{l,h}bw pairs (TL, TH) per row and vpmaddubsw with (1, 16) gives the exact int16 dot of the
// group: 512 multiply-adds per ~36 vector instructions, against 32 per 3-4 for the byte kernel.
// Two group pairs are summed in bytes before widening; int16 accumulators are widened to int32 every
// kFlushPairs group pairs.
// The signed dot is computed directly (no sum(x) correction), then the float epilogue of
// bitops/reference.py, operation by operation.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#if BITOPS_X86
#include <immintrin.h>
#endif

#include "../checks.h"
#include "isa.h"
#include "linear_int8.h"

namespace bitops::cpu {

namespace {

constexpr int64_t kBlockRows = 32;   // weight rows per block: 16 rows x 2 nibbles per 16-byte lane
constexpr int64_t kPairCodes = 8;    // K positions per group pair (one 32-byte vector of indices)
constexpr int64_t kTableBytes = 64;  // per group pair and activation row: TL (32 bytes), then TH (32 bytes)
constexpr int64_t kFlushPairs = 56;  // group pairs per int16 flush: 28 adds of <= 1144 (see dot_block_avx2) < 32767

// Signed dot of weight row `row` (its block starts at `wb`, (Q, 32) bytes) with activation row x over
// q_count group pairs: the portable definition of what the AVX2 path computes.
int32_t dot_portable(const uint8_t* wb, int64_t row, const int8_t* x, int64_t q_count) {
  const int64_t lane_row = row % 16, shift = row < 16 ? 0 : 4;
  int32_t acc = 0;
  for (int64_t q = 0; q < q_count; ++q)
    for (int64_t half = 0; half < 2; ++half) {
      const int nib = (wb[q * 32 + 16 * half + lane_row] >> shift) & 15;
      for (int t = 0; t < 4; ++t) {
        const int32_t v = x[q * kPairCodes + 4 * half + t];
        acc += (nib >> t) & 1 ? v : -v;
      }
    }
  return acc;
}

#if BITOPS_X86
// The TL and TH tables of one activation row (x zero-padded to q_count * 8), (q_count, 64) bytes.
BITOPS_TARGET_AVX2 void build_tables_avx2(const int8_t* x, int64_t q_count, int8_t* tab) {
  __m256i pick[4], sign[4];  // pick[t]: byte t of each group (lane 0: group 2q, lane 1: 2q+1)
  for (int t = 0; t < 4; ++t) {
    alignas(32) int8_t p[32], s[32];
    for (int b = 0; b < 32; ++b) {
      p[b] = static_cast<int8_t>((b < 16 ? 0 : 4) + t);
      s[b] = ((b % 16) >> t) & 1 ? 1 : -1;
    }
    pick[t] = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    sign[t] = _mm256_load_si256(reinterpret_cast<const __m256i*>(s));
  }
  const __m256i low4 = _mm256_set1_epi8(15), flip = _mm256_set1_epi8(-128), eight = _mm256_set1_epi8(8);
  for (int64_t q = 0; q < q_count; ++q) {
    int64_t eight_x;
    std::memcpy(&eight_x, x + q * kPairCodes, 8);
    const __m256i v = _mm256_set1_epi64x(eight_x);
    const __m256i lo = _mm256_and_si256(v, low4);
    // x >> 4 for signed bytes: ((x + 128) >> 4 as unsigned) - 8.
    const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(_mm256_xor_si256(v, flip), 4), low4), eight);
    __m256i tl = _mm256_setzero_si256(), th = tl;
    for (int t = 0; t < 4; ++t) {
      tl = _mm256_add_epi8(tl, _mm256_sign_epi8(_mm256_shuffle_epi8(lo, pick[t]), sign[t]));
      th = _mm256_add_epi8(th, _mm256_sign_epi8(_mm256_shuffle_epi8(hi, pick[t]), sign[t]));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + q * kTableBytes), tl);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + q * kTableBytes + 32), th);
  }
}

BITOPS_TARGET_AVX2 inline __m256i widen_lanes(__m256i acc16) {  // int32 sums of the two lanes' int16 rows
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc16)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc16, 1)));
}

// The TL and TH lookups of group pair q for rows 0-15 (l0, h0) and rows 16-31 (l1, h1) of a block.
struct PairLookups {
  __m256i l0, h0, l1, h1;
};
BITOPS_TARGET_AVX2 inline PairLookups lookup_pair(const uint8_t* wb, const int8_t* tab, int64_t q) {
  const __m256i low4 = _mm256_set1_epi8(15);
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * 32));
  const __m256i rows_lo = _mm256_and_si256(w, low4);                         // rows 0-15
  const __m256i rows_hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);  // rows 16-31
  const __m256i tl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + q * kTableBytes));
  const __m256i th = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + q * kTableBytes + 32));
  return {_mm256_shuffle_epi8(tl, rows_lo), _mm256_shuffle_epi8(th, rows_lo), _mm256_shuffle_epi8(tl, rows_hi),
          _mm256_shuffle_epi8(th, rows_hi)};
}

// Signed dots of the 32 rows of one weight block with one activation row (tables `tab`).
// Two group pairs are added in bytes before widening (TL sums stay in [-120, 120], TH in [-64, 64]),
// which halves the unpack / vpmaddubsw work; each int16 add is then at most 120 + 16 * 64 = 1144.
BITOPS_TARGET_AVX2 void dot_block_avx2(const uint8_t* wb, const int8_t* tab, int64_t q_count, int32_t out[32]) {
  const __m256i one_sixteen = _mm256_set1_epi16(0x1001);  // bytes (1, 16)
  __m256i t0 = _mm256_setzero_si256(), t1 = t0, t2 = t0, t3 = t0;
  for (int64_t qb = 0; qb < q_count; qb += kFlushPairs) {
    const int64_t qe = std::min(q_count, qb + kFlushPairs);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t q = qb; q < qe; q += 2) {
      PairLookups s = lookup_pair(wb, tab, q);
      if (q + 1 < qe) {
        const PairLookups u = lookup_pair(wb, tab, q + 1);
        s.l0 = _mm256_add_epi8(s.l0, u.l0), s.h0 = _mm256_add_epi8(s.h0, u.h0);
        s.l1 = _mm256_add_epi8(s.l1, u.l1), s.h1 = _mm256_add_epi8(s.h1, u.h1);
      }
      a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(one_sixteen, _mm256_unpacklo_epi8(s.l0, s.h0)));  // rows 0-7
      a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(one_sixteen, _mm256_unpackhi_epi8(s.l0, s.h0)));  // rows 8-15
      a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(one_sixteen, _mm256_unpacklo_epi8(s.l1, s.h1)));  // rows 16-23
      a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(one_sixteen, _mm256_unpackhi_epi8(s.l1, s.h1)));  // rows 24-31
    }
    // Lane 0 holds the even groups of a row, lane 1 the odd ones: widening adds them.
    t0 = _mm256_add_epi32(t0, widen_lanes(a0));
    t1 = _mm256_add_epi32(t1, widen_lanes(a1));
    t2 = _mm256_add_epi32(t2, widen_lanes(a2));
    t3 = _mm256_add_epi32(t3, widen_lanes(a3));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), t0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), t1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), t2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), t3);
}
#endif

at::Tensor packed_gemv_int8_cpu(const at::Tensor& x_in, const at::Tensor& x_scale_in, const at::Tensor& w_in,
                                const at::Tensor& w_scale_in, const std::optional<at::Tensor>& bias_in,
                                int64_t in_features) {
  const int64_t n = check_gemv_int8_args(x_in, x_scale_in, w_in, w_scale_in, bias_in, in_features);
  const int64_t m = x_in.size(0), q_count = w_in.size(1), kp = q_count * kPairCodes;
  at::Tensor y = at::empty({m, n}, x_in.options().dtype(at::kFloat));
  if (m == 0 || n == 0) return y;

  // Activations past K must read as 0 (pads of the layout hold -1 signs); skip the copy when none are.
  const at::Tensor x_pad = kp == in_features ? x_in.contiguous() : at::constant_pad_nd(x_in, {0, kp - in_features}, 0).contiguous();
  const at::Tensor w = w_in.contiguous(), w_scale = w_scale_in.contiguous(), x_scale = x_scale_in.contiguous();
  std::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->to(at::kFloat).contiguous();
  Problem p{x_pad.data_ptr<int8_t>(), nullptr, x_scale.data_ptr<float>(), nullptr, w_scale.data_ptr<float>(),
            bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), m, n, in_features, kp, 0, 1, in_features, 1};
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const int64_t blocks = w.size(0);
  auto epilogue = [&](int64_t i, int64_t b, const int32_t* dots) {
    for (int64_t r = 0, j = b * kBlockRows; r < kBlockRows && j < n; ++r, ++j)
      p.y[i * n + j] = finish(p, add_group(0.f, 0, dots[r], p.w_scale[j]), i, j);
  };

#if BITOPS_X86
  if (use_avx2()) {
    std::vector<int8_t> tables(static_cast<size_t>(m * q_count * kTableBytes));
    for (int64_t i = 0; i < m; ++i) build_tables_avx2(p.x + i * kp, q_count, tables.data() + i * q_count * kTableBytes);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      alignas(32) int32_t dots[kBlockRows];
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t i = 0; i < m; ++i) {  // the block's weights stay in L1 for the next activation row
          dot_block_avx2(wp + b * q_count * 32, tables.data() + i * q_count * kTableBytes, q_count, dots);
          epilogue(i, b, dots);
        }
    });
    return y;
  }
#endif
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    int32_t dots[kBlockRows];
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < kBlockRows; ++r) dots[r] = dot_portable(wp + b * q_count * 32, r, p.x + i * kp, q_count);
        epilogue(i, b, dots);
      }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) { m.impl("packed_gemv_int8", &packed_gemv_int8_cpu); }

}  // namespace bitops::cpu
