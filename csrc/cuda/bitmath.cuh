// Kernel math shared by the CUDA kernels and the host harness (tests/cuda_harness): decoding of the
// packed formats of bitops/formats.py, and the float epilogue of the int8 GEMM in the order of
// bitops/reference.py. Everything here is __host__ __device__ and free of CUDA-only intrinsics, so
// g++ compiles the same lines the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BITOPS_HD __host__ __device__ __forceinline__
#define BITOPS_UNROLL _Pragma("unroll")
#else
#define BITOPS_HD inline
#define BITOPS_UNROLL
#endif

namespace bitops::cuda {

// Codes per 32-bit word and mask of one field.
BITOPS_HD int codes_per_word(int bits) { return 32 / bits; }

// Value of code j (0 <= j < 32/bits) of a packed word: SIGN1 bit 1 -> +1, 0 -> -1; 2-bit fields are
// two's complement (00 -> 0, 01 -> 1, 10 -> -2, 11 -> -1).
BITOPS_HD int decode_code(uint32_t word, int j, int bits) {
  if (bits == 1) return ((word >> j) & 1u) ? 1 : -1;
  const int f = static_cast<int>((word >> (2 * j)) & 3u);
  return f >= 2 ? f - 4 : f;
}

// Field of a value (the inverse of decode_code); `ok` is false for a value the format cannot hold.
BITOPS_HD uint32_t encode_code(int v, int bits, bool& ok) {
  if (bits == 1) {
    ok = (v == 1 || v == -1);
    return v > 0 ? 1u : 0u;
  }
  ok = (v >= -2 && v <= 1);
  return static_cast<uint32_t>(v) & 3u;
}

// Four consecutive codes as four int8 lanes of one 32-bit register (lane i = byte i), the operand
// form of mma .s8 and dp4a. `quad` is the index of the 4-code group in the word: codes 4*quad..+3.
//   1 bit: spread the 4 bits into the low bit of each byte, then b ? 0x01 : 0xFF per byte
//          (0xFF ^ (b * 0xFE): no byte carries into the next).
//   2 bit: spread the 4 fields into the low 2 bits of each byte, then sign-extend each byte from
//          bit 1 (OR 0xFC where bit 1 is set: again no carries).
BITOPS_HD uint32_t decode_quad_s8x4(uint32_t word, int quad, int bits) {
  if (bits == 1) {
    const uint32_t nib = (word >> (4 * quad)) & 0xFu;
    const uint32_t spread = (nib * 0x00204081u) & 0x01010101u;  // bit i -> byte i (shifted copies do not overlap)
    return 0xFFFFFFFFu ^ (spread * 0xFEu);
  }
  const uint32_t b = (word >> (8 * quad)) & 0xFFu;
  const uint32_t spread = (b & 0x3u) | ((b & 0xCu) << 6) | ((b & 0x30u) << 12) | ((b & 0xC0u) << 18);
  const uint32_t neg = (spread >> 1) & 0x01010101u;
  return spread | (neg * 0xFCu);
}

// Keep the int8 lanes whose code index k0 + i (i = 0..3) lies in [lo, hi); zero the others.
BITOPS_HD uint32_t mask_s8x4(uint32_t v, int k0, int lo, int hi) {
  uint32_t keep = 0;
  for (int i = 0; i < 4; ++i)
    if (k0 + i >= lo && k0 + i < hi) keep |= 0xFFu << (8 * i);
  return v & keep;
}

// The int8 GEMM's float epilogue, exactly as bitops/reference.py orders and rounds it (no FMA: the
// device side uses the _rn intrinsics, which nvcc never contracts; the host side is compiled with
// -ffp-contract=off):
//   y = acc_0 * s_0;  y = y + acc_g * s_g (g = 1, 2, ...);  y = y * x_scale;  y = y + bias.
BITOPS_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
BITOPS_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
BITOPS_HD float epilogue_add_group(float y, int group, int32_t acc, float w_scale) {
  const float t = fmul_rn(static_cast<float>(acc), w_scale);
  return group == 0 ? t : fadd_rn(y, t);
}
BITOPS_HD float epilogue_finish(float y, float x_scale, const float* bias, int n) {
  y = fmul_rn(y, x_scale);
  return bias ? fadd_rn(y, bias[n]) : y;
}

// Groups of the weight scale: group g covers codes [g * group_size, min((g + 1) * group_size, K)).
BITOPS_HD int group_end(int g, int group_size, int k) {
  const long long e = static_cast<long long>(g + 1) * group_size;
  return e < k ? static_cast<int>(e) : k;
}

BITOPS_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace bitops::cuda
