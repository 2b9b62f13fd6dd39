// Vector math shared by the CPU kernels (AVX2 + FMA, compiled per function; see isa.h).
#pragma once

#include "isa.h"

#if BITOPS_X86
#include <immintrin.h>

namespace bitops::cpu {

// exp(a) for a <= 0: a = n ln2 + r with |r| <= ln2/2 (ln2 split in two for exactness, Cody & Waite),
// exp(r) by its Taylor series to r^7 (truncation < 6e-9 relative), times 2^n through the exponent
// bits. Below -87.3 the result would leave float's normal range; it is clamped there (exp ~ 1e-38,
// which neither GELU nor a softmax sum can tell from 0; the softmax flushes it to 0 all the same).
// A nan stays nan.
// Always inlined into the callers' row loops (a call per vector cost ~20% of the GELU).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 exp_nonpositive_avx2(__m256 a) {
  a = _mm256_max_ps(_mm256_set1_ps(-87.3f), a);  // this operand order returns a nan a as is
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), a);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

}  // namespace bitops::cpu

#endif
