// Shared by the two CPU int8 GEMM files: the problem description, the exact integer-to-float
// epilogue of bitops/reference.py, and the lookup-table kernel's entry points.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "isa.h"

#if BITOPS_X86
#include <immintrin.h>
#endif

namespace bitops::cpu {

struct Problem {
  const int8_t* x;      // (m, kp) zero-padded activations
  const int32_t* xsum;  // (m, groups) sum of x over each group
  const float* x_scale;
  const int32_t* w;  // (n, nw) packed
  const float* w_scale;  // (n, groups)
  const float* bias;     // (n,) or nullptr
  float* y;              // (m, n)
  int64_t m, n, k, kp, nw, groups, group_size;
  int bits;
};

// Group g covers codes [begin, end); the last group runs to kp, over zero-padded activations.
inline int64_t group_begin(const Problem& p, int64_t g) { return g * p.group_size; }
inline int64_t group_end(const Problem& p, int64_t g) {
  return g + 1 == p.groups ? p.kp : std::min(p.kp, (g + 1) * p.group_size);
}

inline int32_t signed_dot(const Problem& p, int32_t u_dot_x, int32_t xsum) {
  return p.bits == 1 ? 2 * u_dot_x - xsum : u_dot_x - 2 * xsum;
}

// The float epilogue, operation by operation as in the reference (compiled with -ffp-contract=off).
inline float add_group(float y, int64_t g, int32_t acc, float w_scale) {
  const float t = static_cast<float>(acc) * w_scale;
  return g == 0 ? t : y + t;
}
inline float finish(const Problem& p, float y, int64_t i, int64_t j) {
  y = y * p.x_scale[i];
  if (p.bias) y = y + p.bias[j];
  return y;
}

// Whether the lookup kernel writes its results around the caches (non-temporal stores of whole vectors).
// A call timed alone gains from it once the output passes L2 (512 KiB on Zen3): writing through L2
// evicts the tables and indices the next block reads (128 x 384 x 1536, 768 KiB of output: 4% faster
// alone; 128 x 768 x 3072: 4%). But in a model the next op reads the output at once, and what fits the
// L3 is then read from there, not from memory: in a BERT layer at 1 x 128 tokens (QKV 576 KiB, FFN1
// 768 KiB of output) attention took 0.41 ms on a cached QKV output against 0.49 on a streamed one, and
// the whole model (all-MiniLM-L6-v2, W1A8 fused layers, one thread, interleaved) ran 1.024-1.037x faster
// streaming only past 4 MiB than past 512 KiB; at 32 x 128 tokens (6-25 MiB outputs, streamed either way)
// not streaming at all was 0.95x. So: past 4 MiB, what an L3 share holds. (A call alone, ab_kernel.sh,
// against streaming from 512 KiB: 0.988x [0.95, 1.03] at 128 x 768 x 3072, 0.995x at 128 x 384 x 1536.) (The byte kernel no longer
// streams: rows4_block.) Needs every row's vectors 32-byte aligned: N a multiple of 8 and y aligned.
inline bool streams_output(const Problem& p) {
  constexpr int64_t kStreamOutputBytes = 4 * 1024 * 1024;
  return p.m * p.n * static_cast<int64_t>(sizeof(float)) > kStreamOutputBytes && p.n % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.y) % 32 == 0;
}

#if BITOPS_X86
// An empty asm that "changes" v, so v must sit in a register at this point of a loop. In the byte
// kernel's dot_4x2 GCC otherwise hoisted all eight vpmaddubsw of a step above their adds; that needs
// eight temporaries besides the eight accumulators, so one accumulator was spilled and went through
// the stack (a store-to-load round trip on its dependency chain) every step. That loop alone, outside
// the extension: 74 GMAC/s as GCC scheduled it, 85 with the accumulators pinned. The lookup kernel's
// loop uses it too: without it GCC copied every accumulator through a temporary each step.
BITOPS_TARGET_AVX2 inline void keep_in_register(__m256i& v) { asm volatile("" : "+x"(v)); }
#endif

// --- Lookup-table W1A8 kernel (linear_int8_lut.cpp): AVX2, 1-bit codes, one scale group per row.
#if BITOPS_X86
void lut_gemm_avx2(const Problem& p);
#endif

// Which CPU kernel packed_linear_int8 runs for a call: "gemv" (AVX2, weights expanded in registers,
// small M), "lut" (AVX2 lookup tables, 1 bit, one scale per row), "bytes" (AVX2, weights decoded to
// bytes per row block) or "portable". One rule, used by the op and reported to the tests.
std::string int8_kernel_path(int64_t m, int64_t bits, int64_t groups, int64_t group_size);

}  // namespace bitops::cpu
