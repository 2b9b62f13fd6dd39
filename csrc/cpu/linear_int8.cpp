// packed_linear_int8 on CPU: int8 activations (M, K) times 1- or 2-bit packed weights (N, K).
//
// Both paths compute the same exact integers and the same float epilogue (bitops/reference.py):
//   1 bit:  dot = 2 * sum(x[k] where bit=1) - sum(x)        (bits as u in {0, 1})
//   2 bits: dot = sum(u[k] * x[k]) - 2 * sum(x),  u = field ^ 2 in {0..3}
// so the weights only ever appear in the unsigned form u, which is what vpmaddubsw (u8 x s8)
// multiplies, and sum(x) per row and group is computed once per call.
//
// Work split: weight rows are decoded to u bytes one block of kRowsPerBlock rows at a time (a block
// stays in L1/L2 and is reused by every activation row); blocks are shared out with at::parallel_for,
// which is OpenMP in torch's CPU builds and follows torch.set_num_threads.
// The AVX2 path here expands weights to bytes and so sits at the int8 roof at best; the lookup-table
// kernels that go past it are the CPU-speed issue's work.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if BITOPS_X86
#include <immintrin.h>
#endif

#include "../checks.h"
#include "decode.h"
#include "isa.h"
#include "linear_int8.h"

namespace bitops::cpu {

namespace {

constexpr int64_t kRowsPerBlock = 16;  // weight rows decoded together: 16 x 3072 B = 48 KiB at BERT's largest K
constexpr int64_t kStep = 32;          // codes per AVX2 step (one 256-bit register of bytes)
// int16 partial sums are widened to int32 every kFlushSteps steps: a vpmaddubsw pair sum is at most
// 2 * 3 * 128 = 768 in magnitude (2-bit u <= 3), and 32 * 768 = 24576 < 32767.
constexpr int64_t kFlushSteps = 32;
constexpr int64_t kGemvMaxM = 4;  // up to this many activation rows, expand weights in registers (AVX2)

void decode_block(const Problem& p, int64_t n0, int64_t rows, uint8_t* u) {
  const int64_t filled = p.nw * (32 / p.bits);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = u + r * p.kp;
    expand_words(p.w + (n0 + r) * p.nw, p.nw, p.bits, /*to_values=*/false, dst);
    std::fill(dst + filled, dst + p.kp, 0);
  }
}

// Activation rows [i0, i1) times the decoded weight rows [n0, n0 + rows).
void block_portable(const Problem& p, int64_t i0, int64_t i1, int64_t n0, int64_t rows, const uint8_t* u) {
  for (int64_t i = i0; i < i1; ++i) {
    const int8_t* xr = p.x + i * p.kp;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t j = n0 + r;
      const uint8_t* ur = u + r * p.kp;
      float y = 0.f;
      for (int64_t g = 0; g < p.groups; ++g) {
        int32_t s = 0;
        for (int64_t c = group_begin(p, g); c < group_end(p, g); ++c) s += static_cast<int32_t>(ur[c]) * xr[c];
        y = add_group(y, g, signed_dot(p, s, p.xsum[i * p.groups + g]), p.w_scale[j * p.groups + g]);
      }
      p.y[i * p.n + j] = finish(p, y, i, j);
    }
  }
}

#if BITOPS_X86
BITOPS_TARGET_AVX2 inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Lane k of the result = the sum of the 8 int32 lanes of a[k].
BITOPS_TARGET_AVX2 inline __m256i hsum8_epi32(const __m256i a[8]) {
  // Per 128-bit lane, hadd(a, b) = (a0+a1, a2+a3, b0+b1, b2+b3): two rounds leave, in the low lane of g0,
  // the low-lane sums of vectors 0-3 and in its high lane their high-lane sums (g1: vectors 4-7).
  const __m256i h0 = _mm256_hadd_epi32(a[0], a[1]), h1 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i h2 = _mm256_hadd_epi32(a[4], a[5]), h3 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i g0 = _mm256_hadd_epi32(h0, h1), g1 = _mm256_hadd_epi32(h2, h3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}
// The same over 8 vectors in memory (32-byte aligned).
BITOPS_TARGET_AVX2 inline __m256i hsum8_epi32(const int32_t* v) {
  const __m256i* m = reinterpret_cast<const __m256i*>(v);
  const __m256i a[8] = {_mm256_load_si256(m), _mm256_load_si256(m + 1), _mm256_load_si256(m + 2), _mm256_load_si256(m + 3),
                        _mm256_load_si256(m + 4), _mm256_load_si256(m + 5), _mm256_load_si256(m + 6), _mm256_load_si256(m + 7)};
  return hsum8_epi32(a);
}

// The 4x2 inner loop written out with named accumulators: with arrays GCC rotated the accumulators
// through extra registers and spilled activation vectors to the stack on every step.
BITOPS_TARGET_AVX2 inline void dot_4x2(const int8_t* const* xr, const uint8_t* const* ur, int64_t kb, int64_t ke,
                                       __m256i acc[4][2]) {
  __m256i a00 = acc[0][0], a01 = acc[0][1], a10 = acc[1][0], a11 = acc[1][1];
  __m256i a20 = acc[2][0], a21 = acc[2][1], a30 = acc[3][0], a31 = acc[3][1];
  const int8_t *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3];
  const uint8_t *u0 = ur[0], *u1 = ur[1];
  for (int64_t c = kb; c < ke; c += kStep) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u0 + c));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u1 + c));
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + c));
    a00 = _mm256_add_epi16(a00, _mm256_maddubs_epi16(w0, xv));
    a01 = _mm256_add_epi16(a01, _mm256_maddubs_epi16(w1, xv));
    keep_in_register(a00), keep_in_register(a01);
    xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1 + c));
    a10 = _mm256_add_epi16(a10, _mm256_maddubs_epi16(w0, xv));
    a11 = _mm256_add_epi16(a11, _mm256_maddubs_epi16(w1, xv));
    keep_in_register(a10), keep_in_register(a11);
    xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x2 + c));
    a20 = _mm256_add_epi16(a20, _mm256_maddubs_epi16(w0, xv));
    a21 = _mm256_add_epi16(a21, _mm256_maddubs_epi16(w1, xv));
    keep_in_register(a20), keep_in_register(a21);
    xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x3 + c));
    a30 = _mm256_add_epi16(a30, _mm256_maddubs_epi16(w0, xv));
    a31 = _mm256_add_epi16(a31, _mm256_maddubs_epi16(w1, xv));
    keep_in_register(a30), keep_in_register(a31);
  }
  acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11;
  acc[2][0] = a20, acc[2][1] = a21, acc[3][0] = a30, acc[3][1] = a31;
}

// sum(u * x) over [k0, k1) for an MR x NR tile of activation rows x weight rows; k0, k1 multiples of 32.
// Only the MR*NR int16 accumulators live in registers through the inner loop (8 of 16 ymm for 4x2);
// the int32 totals sit in memory and are touched once per flush. Keeping those in registers too made
// the compiler spill the activation vectors inside the loop.
template <int MR, int NR>
BITOPS_TARGET_AVX2 void dot_tile(const int8_t* x, const uint8_t* u, int64_t ld, int64_t k0, int64_t k1,
                                 int32_t out[MR][NR]) {
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) int32_t total[MR][NR][8] = {};
  const int8_t* xr[MR];
  const uint8_t* ur[NR];
  for (int i = 0; i < MR; ++i) xr[i] = x + i * ld;
  for (int j = 0; j < NR; ++j) ur[j] = u + j * ld;
  for (int64_t kb = k0; kb < k1; kb += kStep * kFlushSteps) {
    const int64_t ke = std::min(k1, kb + kStep * kFlushSteps);
    __m256i acc16[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc16[i][j] = _mm256_setzero_si256();
    if constexpr (MR == 4 && NR == 2) {
      dot_4x2(xr, ur, kb, ke, acc16);
    } else {
      for (int64_t c = kb; c < ke; c += kStep) {
        __m256i wv[NR];
        for (int j = 0; j < NR; ++j) wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ur[j] + c));
        for (int i = 0; i < MR; ++i) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[i] + c));
          for (int j = 0; j < NR; ++j) acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(wv[j], xv));
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        __m256i* t = reinterpret_cast<__m256i*>(total[i][j]);
        _mm256_store_si256(t, _mm256_add_epi32(_mm256_load_si256(t), _mm256_madd_epi16(acc16[i][j], ones)));
      }
  }
  if constexpr (MR * NR == 8) {  // all eight sums in one transposing reduction, 17 instructions instead of 56
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[0][0]), hsum8_epi32(&total[0][0][0]));
  } else {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) out[i][j] = hsum_epi32(_mm256_load_si256(reinterpret_cast<__m256i*>(total[i][j])));
  }
}

// (f[0], f[1]) repeated 4 times: the two weight rows' scales (or biases) of a tile sit next to each other.
BITOPS_TARGET_AVX2 inline __m256 broadcast_pair(const float* f) {
  int64_t both;
  std::memcpy(&both, f, sizeof both);
  return _mm256_castsi256_ps(_mm256_set1_epi64x(both));
}

// The epilogue of a 4x2 tile with one scale group, as one vector of the 8 results (lane 2i + j: activation
// row i0 + i, weight row n0 + r0 + j): signed_dot, add_group and finish with the same float operations in
// the same order (convert, * weight scale, * activation scale, + bias; no FMA), so bit for bit the scalar
// epilogue's results, at about a third of its instructions.
BITOPS_TARGET_AVX2 void store_tile_4x2(const Problem& p, int64_t i0, int64_t j0, const int32_t s[4][2], float* out, int64_t ld) {
  const int32_t* xs = p.xsum + i0;  // one group: xsum is (m, 1)
  const __m256i xsum = _mm256_setr_epi32(xs[0], xs[0], xs[1], xs[1], xs[2], xs[2], xs[3], xs[3]);
  const __m256i u_dot_x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&s[0][0]));
  const __m256i acc = p.bits == 1 ? _mm256_sub_epi32(_mm256_slli_epi32(u_dot_x, 1), xsum)
                                  : _mm256_sub_epi32(u_dot_x, _mm256_slli_epi32(xsum, 1));
  const float* xsc = p.x_scale + i0;
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), broadcast_pair(p.w_scale + j0));
  y = _mm256_mul_ps(y, _mm256_setr_ps(xsc[0], xsc[0], xsc[1], xsc[1], xsc[2], xsc[2], xsc[3], xsc[3]));
  if (p.bias) y = _mm256_add_ps(y, broadcast_pair(p.bias + j0));
  const __m128 lo = _mm256_castps256_ps128(y), hi = _mm256_extractf128_ps(y, 1);
  _mm_storel_pi(reinterpret_cast<__m64*>(out), lo);
  _mm_storeh_pi(reinterpret_cast<__m64*>(out + ld), lo);
  _mm_storel_pi(reinterpret_cast<__m64*>(out + 2 * ld), hi);
  _mm_storeh_pi(reinterpret_cast<__m64*>(out + 3 * ld), hi);
}

// The epilogue of activation row i against 8 consecutive weight rows j..j+7 with one scale group, from
// their 8 sums u . x: signed_dot, add_group and finish as vector operations in the scalar order (convert,
// * weight scale, * activation scale, + bias), so bit for bit the scalar results.
BITOPS_TARGET_AVX2 inline __m256 epilogue_8(const Problem& p, int64_t i, int64_t j, __m256i u_dot_x) {
  const __m256i xsum = _mm256_set1_epi32(p.xsum[i]);
  const __m256i acc = p.bits == 1 ? _mm256_sub_epi32(_mm256_slli_epi32(u_dot_x, 1), xsum)
                                  : _mm256_sub_epi32(u_dot_x, _mm256_slli_epi32(xsum, 1));
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(p.w_scale + j));
  y = _mm256_mul_ps(y, _mm256_set1_ps(p.x_scale[i]));
  if (p.bias) y = _mm256_add_ps(y, _mm256_loadu_ps(p.bias + j));
  return y;
}

template <int MR, int NR>
BITOPS_TARGET_AVX2 void tile_avx2(const Problem& p, int64_t i0, int64_t n0, int64_t r0, const uint8_t* u) {
  if constexpr (MR == 4 && NR == 2) {
    if (p.groups == 1) {
      alignas(32) int32_t s[4][2];
      dot_tile<4, 2>(p.x + i0 * p.kp, u + r0 * p.kp, p.kp, 0, p.kp, s);
      store_tile_4x2(p, i0, n0 + r0, s, p.y + i0 * p.n + n0 + r0, p.n);
      return;
    }
  }
  float y[MR][NR] = {};
  for (int64_t g = 0; g < p.groups; ++g) {
    int32_t s[MR][NR];
    dot_tile<MR, NR>(p.x + i0 * p.kp, u + r0 * p.kp, p.kp, group_begin(p, g), group_end(p, g), s);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        const int32_t acc = signed_dot(p, s[i][j], p.xsum[(i0 + i) * p.groups + g]);
        y[i][j] = add_group(y[i][j], g, acc, p.w_scale[(n0 + r0 + j) * p.groups + g]);
      }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) p.y[(i0 + i) * p.n + n0 + r0 + j] = finish(p, y[i][j], i0 + i, n0 + r0 + j);
}

template <int MR>
BITOPS_TARGET_AVX2 void rows_avx2(const Problem& p, int64_t i0, int64_t n0, int64_t rows, const uint8_t* u) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) tile_avx2<MR, 2>(p, i0, n0, r, u);
  if (r < rows) tile_avx2<MR, 1>(p, i0, n0, r, u);
}

// --- Small M (GEMV): weights are expanded in registers, chunk by chunk, and never written out, so a
// call costs one pass over the packed words instead of a decode of the whole matrix.

// u bytes (0/1) of the 32 one-bit codes of one word.
BITOPS_TARGET_AVX2 inline __m256i expand_chunk_1bit(int32_t word) {
  const __m256i byte_of_code = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit_of_code = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,  //
                                               1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word), byte_of_code);
  return _mm256_min_epu8(_mm256_and_si256(bytes, bit_of_code), _mm256_set1_epi8(1));
}

// u bytes (field ^ 2, in 0..3) of the 32 two-bit codes of two consecutive words.
BITOPS_TARGET_AVX2 inline __m256i expand_chunk_2bit(int64_t two_words) {
  const __m256i byte_of_code = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,  //
                                                4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  // Codes 2 and 3 of a byte sit in its high nibble: shift them down (the bits shifted in from the
  // next byte land above the field and are masked off below).
  const __m256i high_nibble = _mm256_setr_epi8(0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1,  //
                                               0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1);
  const __m256i field_mask = _mm256_setr_epi8(3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12,  //
                                              3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12);
  // Masked field t is f (t < 4) or 4f (t in {4, 8, 12}); the table gives u = f ^ 2 for both.
  const __m256i to_u = _mm256_setr_epi8(2, 3, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,  //
                                        2, 3, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0);
  __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi64x(two_words), byte_of_code);
  b = _mm256_blendv_epi8(b, _mm256_srli_epi16(b, 4), high_nibble);
  return _mm256_shuffle_epi8(to_u, _mm256_and_si256(b, field_mask));
}

BITOPS_TARGET_AVX2 inline __m256i expand_chunk(const Problem& p, const int32_t* row, int64_t chunk) {
  if (p.bits == 1) return expand_chunk_1bit(row[chunk]);
  const int64_t w0 = 2 * chunk;
  // An odd word count leaves the last chunk one word short: its missing half meets zero activations.
  const uint32_t lo = static_cast<uint32_t>(row[w0]);
  const uint32_t hi = w0 + 1 < p.nw ? static_cast<uint32_t>(row[w0 + 1]) : 0u;
  return expand_chunk_2bit(static_cast<int64_t>((static_cast<uint64_t>(hi) << 32) | lo));
}

template <int MR>
BITOPS_TARGET_AVX2 void gemv_rows(const Problem& p, int64_t n0, int64_t n1) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t j = n0; j < n1; ++j) {
    const int32_t* row = p.w + j * p.nw;
    float y[MR] = {};
    for (int64_t g = 0; g < p.groups; ++g) {
      __m256i acc32[MR];
      for (int i = 0; i < MR; ++i) acc32[i] = _mm256_setzero_si256();
      const int64_t c0 = group_begin(p, g) / kStep, c1 = group_end(p, g) / kStep;
      for (int64_t cb = c0; cb < c1; cb += kFlushSteps) {
        const int64_t ce = std::min(c1, cb + kFlushSteps);
        __m256i acc16[MR];
        for (int i = 0; i < MR; ++i) acc16[i] = _mm256_setzero_si256();
        for (int64_t c = cb; c < ce; ++c) {
          const __m256i u = expand_chunk(p, row, c);
          for (int i = 0; i < MR; ++i) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.x + i * p.kp + c * kStep));
            acc16[i] = _mm256_add_epi16(acc16[i], _mm256_maddubs_epi16(u, xv));
          }
        }
        for (int i = 0; i < MR; ++i) acc32[i] = _mm256_add_epi32(acc32[i], _mm256_madd_epi16(acc16[i], ones));
      }
      for (int i = 0; i < MR; ++i) {
        const int32_t acc = signed_dot(p, hsum_epi32(acc32[i]), p.xsum[i * p.groups + g]);
        y[i] = add_group(y[i], g, acc, p.w_scale[j * p.groups + g]);
      }
    }
    for (int i = 0; i < MR; ++i) p.y[i * p.n + j] = finish(p, y[i], i, j);
  }
}

BITOPS_TARGET_AVX2 void gemv_avx2(const Problem& p, int64_t n0, int64_t n1) {
  switch (p.m) {
    case 1: return gemv_rows<1>(p, n0, n1);
    case 2: return gemv_rows<2>(p, n0, n1);
    case 3: return gemv_rows<3>(p, n0, n1);
    default: return gemv_rows<4>(p, n0, n1);
  }
}

// --- 2-bit GEMV on field planes. A 32-byte run of 2-bit packed words holds 128 codes: byte b holds
// codes 4b .. 4b+3 of the run, code 4b + f in bits 2f, 2f+1 (bitops/formats.py). So (run >> 2f) & 3 puts
// code 4b + f in byte b: four shifts and masks expand 128 codes, where expand_chunk_2bit takes a
// broadcast, two shuffles and a blend per 32. The activations are permuted to match instead of the
// weights, once per call (M <= 4 rows of K bytes): plane f of a 128-code block holds x[4b + f] at
// byte b. XOR with 0xAA flips the high bit of every field first, giving u = field ^ 2 directly.
constexpr int64_t kPlaneBlock = 128;  // codes per 32-byte run of 2-bit words
constexpr int64_t kPlaneBlocksPerFlush = 8;  // 8 blocks x 4 planes of vpmaddubsw pairs <= 768: 24576 < 32767

// The 128-code blocks that lie in kp and are backed by 8 whole words each: the ones the plane paths take.
int64_t plane_blocks(const Problem& p) { return std::min(p.kp / kPlaneBlock, p.nw / 8); }

// One 128-byte block in plane order, AVX2: a 4-way byte deinterleave, out[32 f + b] = x[4 b + f]. Within
// each 128-bit lane a byte shuffle gathers the lane's bytes by f into four dwords; a dword permute pairs
// the two lanes' dwords of each f into one qword; then a 4 x 4 transpose of qwords across the four
// vectors (unpacks, lane permutes) leaves plane f in vector f. 24 instructions per block where the scalar
// loop took ~500: a 2-bit call at M=128 got 1.5-2.5% faster (ab_kernel.sh bytes, 128 x 384 x 1536,
// 768 x 768, 1536 x 384), and M=1 GEMV at 768 x 768 1.2%.
BITOPS_TARGET_AVX2 inline void split_block_avx2(const int8_t* x, int8_t* out) {
  const __m256i by_field = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i pair_lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i v[4];
  for (int k = 0; k < 4; ++k) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * k));
    v[k] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(b, by_field), pair_lanes);  // qwords: f = 0, 1 | 2, 3
  }
  const __m256i lo01 = _mm256_unpacklo_epi64(v[0], v[1]), hi01 = _mm256_unpackhi_epi64(v[0], v[1]);  // f 0|2, 1|3
  const __m256i lo23 = _mm256_unpacklo_epi64(v[2], v[3]), hi23 = _mm256_unpackhi_epi64(v[2], v[3]);
  __m256i* o = reinterpret_cast<__m256i*>(out);
  _mm256_storeu_si256(o, _mm256_permute2x128_si256(lo01, lo23, 0x20));
  _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(hi01, hi23, 0x20));
  _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(lo01, lo23, 0x31));
  _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(hi01, hi23, 0x31));
}

// The plane blocks of the (m, kp) activations in plane order; the tail past them stays as it is.
BITOPS_TARGET_AVX2 void split_planes(const Problem& p, int8_t* planes) {
  const int64_t whole = plane_blocks(p) * kPlaneBlock;
  for (int64_t i = 0; i < p.m; ++i) {
    const int8_t* x = p.x + i * p.kp;
    int8_t* out = planes + i * p.kp;
    for (int64_t c0 = 0; c0 < whole; c0 += kPlaneBlock) split_block_avx2(x + c0, out + c0);
    std::copy(x + whole, x + p.kp, out + whole);
  }
}

// sum(u * x) of weight row j against MR activation rows (in plane order), as MR vectors of 8 int32
// partial sums.
template <int MR>
BITOPS_TARGET_AVX2 inline void row_dot_planes(const Problem& p, const int8_t* planes, int64_t j, __m256i acc32[MR]) {
  const __m256i ones = _mm256_set1_epi16(1), low_field = _mm256_set1_epi8(3), to_u = _mm256_set1_epi8(static_cast<char>(0xAA));
  // Plane blocks; the rest (a partial block, an odd word count) in 32-code chunks.
  const int64_t blocks = plane_blocks(p), chunks = p.kp / kStep;
  const int32_t* row = p.w + j * p.nw;
  for (int i = 0; i < MR; ++i) acc32[i] = _mm256_setzero_si256();
  for (int64_t bb = 0; bb < blocks; bb += kPlaneBlocksPerFlush) {
    __m256i acc16[MR];
    for (int i = 0; i < MR; ++i) acc16[i] = _mm256_setzero_si256();
    for (int64_t blk = bb; blk < std::min(blocks, bb + kPlaneBlocksPerFlush); ++blk) {
      const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 8 * blk)), to_u);
      const __m256i u0 = _mm256_and_si256(q, low_field), u1 = _mm256_and_si256(_mm256_srli_epi16(q, 2), low_field);
      const __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(q, 4), low_field), u3 = _mm256_and_si256(_mm256_srli_epi16(q, 6), low_field);
      for (int i = 0; i < MR; ++i) {
        const __m256i* x = reinterpret_cast<const __m256i*>(planes + i * p.kp + blk * kPlaneBlock);
        const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(u0, _mm256_loadu_si256(x)),
                                             _mm256_maddubs_epi16(u1, _mm256_loadu_si256(x + 1)));
        const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(u2, _mm256_loadu_si256(x + 2)),
                                             _mm256_maddubs_epi16(u3, _mm256_loadu_si256(x + 3)));
        acc16[i] = _mm256_add_epi16(acc16[i], _mm256_add_epi16(s01, s23));
      }
    }
    for (int i = 0; i < MR; ++i) acc32[i] = _mm256_add_epi32(acc32[i], _mm256_madd_epi16(acc16[i], ones));
  }
  // The tail: at most 3 chunks plus an odd word's half, each sum <= 768 per pair: no int16 overflow.
  __m256i tail16[MR];
  for (int i = 0; i < MR; ++i) tail16[i] = _mm256_setzero_si256();
  for (int64_t c = blocks * (kPlaneBlock / kStep); c < chunks; ++c) {
    const __m256i u = expand_chunk(p, row, c);
    for (int i = 0; i < MR; ++i)
      tail16[i] = _mm256_add_epi16(tail16[i], _mm256_maddubs_epi16(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.x + i * p.kp + c * kStep))));
  }
  for (int i = 0; i < MR; ++i) acc32[i] = _mm256_add_epi32(acc32[i], _mm256_madd_epi16(tail16[i], ones));
}

// Weight rows [n0, n1) against all M (<= 4) activation rows, one scale group. Rows by eights: the eight
// rows' partial sums reduced together (hsum8_epi32) and the epilogue done on a vector of 8 results, with
// the scalar epilogue's operations in its order (convert, * weight scale, * activation scale, + bias), so
// bit for bit its results. Row by row, the per-row reduction and scalar epilogue were about 45% of a
// 768 x 768 call at M = 1 (perf). The last n % 8 rows go one at a time.
template <int MR>
BITOPS_TARGET_AVX2 void gemv_rows_planes(const Problem& p, const int8_t* planes, int64_t n0, int64_t n1) {
  int64_t j = n0;
  for (; j + 8 <= n1; j += 8) {
    alignas(32) __m256i sums[MR][8];
    for (int r = 0; r < 8; ++r) {
      __m256i acc32[MR];
      row_dot_planes<MR>(p, planes, j + r, acc32);
      for (int i = 0; i < MR; ++i) sums[i][r] = acc32[i];
    }
    for (int i = 0; i < MR; ++i)
      _mm256_storeu_ps(p.y + i * p.n + j, epilogue_8(p, i, j, hsum8_epi32(reinterpret_cast<const int32_t*>(sums[i]))));
  }
  for (; j < n1; ++j) {
    __m256i acc32[MR];
    row_dot_planes<MR>(p, planes, j, acc32);
    for (int i = 0; i < MR; ++i) {
      const int32_t acc = signed_dot(p, hsum_epi32(acc32[i]), p.xsum[i]);
      p.y[i * p.n + j] = finish(p, add_group(0.f, 0, acc, p.w_scale[j]), i, j);
    }
  }
}

BITOPS_TARGET_AVX2 void gemv_planes_avx2(const Problem& p, const int8_t* planes, int64_t n0, int64_t n1) {
  switch (p.m) {
    case 1: return gemv_rows_planes<1>(p, planes, n0, n1);
    case 2: return gemv_rows_planes<2>(p, planes, n0, n1);
    case 3: return gemv_rows_planes<3>(p, planes, n0, n1);
    default: return gemv_rows_planes<4>(p, planes, n0, n1);
  }
}

// decode_block with the GEMV path's register expansion, 32 codes per vector store where decode_block
// stores 4 or 8 per table lookup: 5-10% of a 2-bit call at BERT-base shapes, M = 128 (per-call interleaved
// timing). With `planes` (2-bit codes; the activations split_planes'd to match) whole 128-code blocks are
// decoded in field-plane order instead, 4 shifts and masks per 128 codes. The chunks past the whole words
// (an odd word count's last half chunk, the zero padding to kp) go through the portable decoder.
BITOPS_TARGET_AVX2 void decode_block_avx2(const Problem& p, int64_t n0, int64_t rows, uint8_t* u, bool planes) {
  const int64_t words_per_chunk = kStep * p.bits / 32, whole = std::min(p.nw / words_per_chunk, p.kp / kStep);
  const int64_t blocks = planes ? plane_blocks(p) : 0;
  const __m256i low_field = _mm256_set1_epi8(3), to_u = _mm256_set1_epi8(static_cast<char>(0xAA));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = p.w + (n0 + r) * p.nw;
    uint8_t* dst = u + r * p.kp;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 8 * blk)), to_u);
      __m256i* out = reinterpret_cast<__m256i*>(dst + blk * kPlaneBlock);
      _mm256_storeu_si256(out, _mm256_and_si256(q, low_field));
      _mm256_storeu_si256(out + 1, _mm256_and_si256(_mm256_srli_epi16(q, 2), low_field));
      _mm256_storeu_si256(out + 2, _mm256_and_si256(_mm256_srli_epi16(q, 4), low_field));
      _mm256_storeu_si256(out + 3, _mm256_and_si256(_mm256_srli_epi16(q, 6), low_field));
    }
    for (int64_t c = blocks * (kPlaneBlock / kStep); c < whole; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c * kStep), expand_chunk(p, row, c));
    const int64_t w0 = whole * words_per_chunk;
    expand_words(row + w0, p.nw - w0, p.bits, /*to_values=*/false, dst + whole * kStep);
    std::fill(dst + p.nw * (32 / p.bits), dst + p.kp, 0);
  }
}

// Four activation rows times a whole block of kRowsPerBlock weight rows (one scale group). The eight 4x2
// tiles' sums are kept as vectors and transposed in registers into one vector per activation row and 8
// weight rows, whose epilogue is then vector code (epilogue_8); each activation row's 16 results, one
// 64-byte line, go out as two stores back to back. Measured per call, interleaved (ab_kernel.sh bytes,
// 2-bit, M = 128):
//   - the 4x2 tiles' 8-byte stores straight into y were slower (768 x 768 10%, 3072 x 768 3%) than
//     gathering a 4 x 16 tile on the stack and writing whole lines;
//   - vector epilogues from transposed sums beat the per-tile epilogue into that stack tile by 6-10% at
//     768 x 3072 and 768 x 768, 7% at 384 x 1536, 1% at 3072 x 768 (and 11% at 4096 x 384 x 1536);
//   - reducing each int16 flush interval's sums into the 8 totals in registers (hsum8_epi32), not into
//     dot_tile's int32 totals in memory, gained 7-11% at K <= 1024 (384 x 1536, 768 x 768, 768 x 3072,
//     4096 x 384 x 1536); K = 1536 and 3072 unchanged.
// The lines go through the caches, also where the output outgrows L2 (the lookup kernel streams it
// there: streams_output). Streaming helped the stack-tile version (768 x 3072 14-24%), but with the
// vector epilogue it costs: through the torch op, fresh output per call and 64 MiB written between
// calls to flush the caches, non-temporal lines took 4% longer at 128 x 768 x 3072, 8% at 128 x 384 x
// 1536, 9-10% at 4096 x 384 x 1536 and 4096 x 768 x 3072 (median of per-round ratios, 40 rounds).
BITOPS_TARGET_AVX2 void rows4_block(const Problem& p, int64_t i0, int64_t n0, const uint8_t* u) {
  // sums[q]: the 4x2 tile of weight rows n0 + 2q, 2q + 1, lane 2i + j = activation row i0 + i, weight
  // row n0 + 2q + j. Read back as whole 32-byte vectors, so every load is forwarded from one store.
  alignas(32) __m256i sums[kRowsPerBlock / 2];
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xr[4] = {p.x + i0 * p.kp, p.x + (i0 + 1) * p.kp, p.x + (i0 + 2) * p.kp, p.x + (i0 + 3) * p.kp};
  for (int q = 0; q < kRowsPerBlock / 2; ++q) {
    const uint8_t* ur[2] = {u + 2 * q * p.kp, u + (2 * q + 1) * p.kp};
    sums[q] = _mm256_setzero_si256();
    // Each int16 flush interval's sums are widened and reduced to the tile's 8 totals in registers, and
    // added to them there: no int32 totals in memory (dot_tile's), 9-12% faster per call.
    for (int64_t kb = 0; kb < p.kp; kb += kStep * kFlushSteps) {
      __m256i acc[4][2] = {};
      dot_4x2(xr, ur, kb, std::min(p.kp, kb + kStep * kFlushSteps), acc);
      const __m256i wide[8] = {_mm256_madd_epi16(acc[0][0], ones), _mm256_madd_epi16(acc[0][1], ones),
                               _mm256_madd_epi16(acc[1][0], ones), _mm256_madd_epi16(acc[1][1], ones),
                               _mm256_madd_epi16(acc[2][0], ones), _mm256_madd_epi16(acc[2][1], ones),
                               _mm256_madd_epi16(acc[3][0], ones), _mm256_madd_epi16(acc[3][1], ones)};
      sums[q] = _mm256_add_epi32(sums[q], hsum8_epi32(wide));
    }
  }
  __m256 out[4][2];  // all 16 results of an activation row first: its line's two stores then go out back to back
  for (int half = 0; half < 2; ++half) {
    // A 4 x 4 transpose of the 64-bit (j = 0, 1) pairs of four tiles: activation row i0 + i against
    // weight rows n0 + 8 half .. n0 + 8 half + 7, in order.
    const __m256i* t = sums + 4 * half;
    const __m256i a = _mm256_unpacklo_epi64(t[0], t[1]), b = _mm256_unpackhi_epi64(t[0], t[1]);  // i 0|2, 1|3
    const __m256i c = _mm256_unpacklo_epi64(t[2], t[3]), d = _mm256_unpackhi_epi64(t[2], t[3]);
    const __m256i rows[4] = {_mm256_permute2x128_si256(a, c, 0x20), _mm256_permute2x128_si256(b, d, 0x20),
                             _mm256_permute2x128_si256(a, c, 0x31), _mm256_permute2x128_si256(b, d, 0x31)};
    for (int i = 0; i < 4; ++i) out[i][half] = epilogue_8(p, i0 + i, n0 + 8 * half, rows[i]);
  }
  for (int i = 0; i < 4; ++i) {
    float* y = p.y + (i0 + i) * p.n + n0;
    _mm256_storeu_ps(y, out[i][0]);
    _mm256_storeu_ps(y + 8, out[i][1]);
  }
}

BITOPS_TARGET_AVX2 void block_avx2(const Problem& p, int64_t i0, int64_t i1, int64_t n0, int64_t rows, const uint8_t* u) {
  int64_t i = i0;
  if (p.groups == 1 && rows == kRowsPerBlock) {
    for (; i + 4 <= i1; i += 4) rows4_block(p, i, n0, u);
  }
  for (; i + 4 <= i1; i += 4) rows_avx2<4>(p, i, n0, rows, u);
  for (; i < i1; ++i) rows_avx2<1>(p, i, n0, rows, u);
}

// The GEMV path (M <= kGemvMaxM): weight rows shared out over threads in blocks of kRowsPerBlock. 2-bit
// codes with one scale group take the field-plane GEMV, with the activations permuted once, here.
BITOPS_TARGET_AVX2 void gemv_int8_avx2(const Problem& p) {
  const bool planes = p.bits == 2 && p.groups == 1;
  const at::Tensor x_planes = planes ? at::empty({p.m, p.kp}, at::kChar) : at::Tensor();
  if (planes) split_planes(p, x_planes.data_ptr<int8_t>());
  at::parallel_for(0, (p.n + kRowsPerBlock - 1) / kRowsPerBlock, 1, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kRowsPerBlock, n1 = std::min(p.n, b1 * kRowsPerBlock);
    if (planes) {
      gemv_planes_avx2(p, x_planes.data_ptr<int8_t>(), n0, n1);
    } else {
      gemv_avx2(p, n0, n1);
    }
  });
}
#endif

#if BITOPS_X86
// Sum of n int8 values, 32 per step: vpsadbw adds the unsigned bytes x ^ 0x80 = x + 128 in 8-byte
// groups (into 64-bit lanes), and 128 per value comes off at the end. 8x fewer instructions than the
// baseline build's SSE2 loop (the whole pass was ~1% of a MiniLM forward at batch 1).
BITOPS_TARGET_AVX2 int32_t sum_int8_avx2(const int8_t* x, int64_t n) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80)), zero = _mm256_setzero_si256();
  __m256i acc = zero;
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + c)), bias);
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
  }
  const __m128i half = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  int64_t s = _mm_cvtsi128_si64(half) + _mm_extract_epi64(half, 1) - 128 * c;
  for (; c < n; ++c) s += x[c];
  return static_cast<int32_t>(s);
}
#endif

// Activation rows per pass over the weights: as many as fill about 192 KiB (of Zen3's 512 KiB L2, which
// also holds the decoded weight block and the output lines), a multiple of 4 (rows4_block), at least 128:
// one sequence of 128 tokens stays one pass at every BERT shape (two passes of 64 rows at K = 3072 were no
// faster on one thread and 2% slower on two, each thread decoding every weight block). Without passes a
// batch of 32 x 128 tokens walked all 4096 activation rows (1.5-12 MiB) once per 16 weight rows, from L3:
// with them, 2-bit 4096 x 3072 x 768 runs 26% faster, 384 x 1536 9%, 768 x 3072 6%, 1536 x 384 7%,
// 768 x 768 9% (ab_kernel.sh bytes, one thread; two threads 384 x 1536 10%).
int64_t rows_per_pass(const Problem& p) {
  constexpr int64_t kPassBytes = 192 * 1024;
  return std::max<int64_t>(128, kPassBytes / p.kp / 4 * 4);
}

// Weight rows decoded to bytes, kRowsPerBlock at a time, each block multiplied by one pass of activation
// rows (AVX2 tiles or the portable loops). The work items, (pass, weight block) in pass-major order so
// that a pass's activations stay in L2 while the weights go by, are shared out over threads. 2-bit codes
// with one scale group decode in field-plane order (decode_block_avx2), so the activations go in that
// order too.
void linear_bytes(const Problem& p_in, bool avx2) {
  Problem p = p_in;
  at::Tensor x_planes;
#if BITOPS_X86
  if (avx2 && p.bits == 2 && p.groups == 1) {
    x_planes = at::empty({p.m, p.kp}, at::kChar);
    split_planes(p, x_planes.data_ptr<int8_t>());
    p.x = x_planes.data_ptr<int8_t>();  // sum(x) per row, computed before, is the same in any order
  }
#endif
  const int64_t blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock, pass_rows = rows_per_pass(p);
  const int64_t passes = (p.m + pass_rows - 1) / pass_rows;
  at::parallel_for(0, passes * blocks, 1, [&](int64_t b0, int64_t b1) {
    // From torch's allocator: 64-byte aligned, so no 32-byte load of a decoded row straddles two cache lines.
    // A std::vector's 16-byte alignment left that to chance (malloc's address mod 32), and with the straddle
    // the 2-bit kernel ran 12-17% slower (per-call interleaved timing at BERT-base shapes, M = 128).
    const at::Tensor u_block = at::empty({kRowsPerBlock * p.kp}, at::kByte);
    uint8_t* u = u_block.data_ptr<uint8_t>();
    for (int64_t item = b0; item < b1; ++item) {
      const int64_t i0 = item / blocks * pass_rows, i1 = std::min(p.m, i0 + pass_rows);
      const int64_t n0 = item % blocks * kRowsPerBlock, rows = std::min(kRowsPerBlock, p.n - n0);
#if BITOPS_X86
      if (avx2) {
        decode_block_avx2(p, n0, rows, u, x_planes.defined());
        block_avx2(p, i0, i1, n0, rows, u);
        continue;
      }
#endif
      decode_block(p, n0, rows, u);
      block_portable(p, i0, i1, n0, rows, u);
    }
  });
  (void)avx2;  // unused where BITOPS_X86 is 0
}

at::Tensor packed_linear_int8_cpu(const at::Tensor& x_in, const at::Tensor& x_scale_in, const at::Tensor& w_in,
                                  const at::Tensor& w_scale_in, const std::optional<at::Tensor>& bias_in,
                                  int64_t bits, int64_t in_features, int64_t group_size) {
  const int64_t n = check_linear_int8_args(x_in, x_scale_in, w_in, w_scale_in, bias_in, bits, in_features, group_size);

  const int64_t m = x_in.size(0), k = in_features, groups = w_scale_in.size(1);
  at::Tensor y = at::empty({m, n}, x_in.options().dtype(at::kFloat));
  if (m == 0 || n == 0) return y;

  const int64_t kp = (k + kStep - 1) / kStep * kStep;
  // At K a multiple of 32 (every BERT shape) the activations are used in place: the padding copy cost
  // ~16 us per call (torch profiler, 128 x 384 activations).
  const at::Tensor x_pad = kp == k ? x_in.contiguous() : at::constant_pad_nd(x_in, {0, kp - k}, 0).contiguous();
  const at::Tensor w = w_in.contiguous(), w_scale = w_scale_in.contiguous(), x_scale = x_scale_in.contiguous();
  std::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->to(at::kFloat).contiguous();
  // Per-group sums of x: one pass over the padded activations, exact in int32.
  at::Tensor xsum = at::empty({m, groups}, x_in.options().dtype(at::kInt));
  {
    const int8_t* xp = x_pad.data_ptr<int8_t>();
    int32_t* xs = xsum.data_ptr<int32_t>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, m, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t b = g * group_size, e = g + 1 == groups ? kp : std::min(kp, (g + 1) * group_size);
#if BITOPS_X86
          if (avx2) {
            xs[i * groups + g] = sum_int8_avx2(xp + i * kp + b, e - b);
            continue;
          }
#endif
          int32_t s = 0;
          for (int64_t c = b; c < e; ++c) s += xp[i * kp + c];
          xs[i * groups + g] = s;
        }
    });
    (void)avx2;
  }

  Problem p{x_pad.data_ptr<int8_t>(), xsum.data_ptr<int32_t>(), x_scale.data_ptr<float>(), w.data_ptr<int32_t>(),
            w_scale.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(),
            m, n, k, kp, w.size(1), groups, group_size, static_cast<int>(bits)};

  const std::string path = int8_kernel_path(m, bits, groups, group_size);
#if BITOPS_X86
  if (path == "lut") {
    lut_gemm_avx2(p);
    return y;
  }
  if (path == "gemv") {
    gemv_int8_avx2(p);
    return y;
  }
#endif
  linear_bytes(p, path == "bytes");
  return y;
}

}  // namespace

std::string int8_kernel_path(int64_t m, int64_t bits, int64_t groups, int64_t group_size) {
  if (!use_avx2()) return "portable";
  // The AVX2 kernels step over whole 32-code chunks, so groups must start on one (or be one group).
  if (groups != 1 && group_size % kStep != 0) return "portable";
  if (m <= kGemvMaxM) return "gemv";
  // Tables pay off once several activation rows share the per-block index build; they hold one
  // group per row (a group boundary would have to fall on a triple) and 1-bit codes (2-bit codes
  // would take two lookups per triple, which is no faster than the byte kernel's vpmaddubsw).
  if (bits == 1 && groups == 1) return "lut";
  return "bytes";
}

TORCH_LIBRARY_IMPL(bitops, CPU, m) { m.impl("packed_linear_int8", &packed_linear_int8_cpu); }

}  // namespace bitops::cpu
