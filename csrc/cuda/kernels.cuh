// The CUDA kernels of the bitops ops, as templates in a header: csrc/cuda/*.cu instantiate and launch
// them on the GPU, tests/cuda_harness compiles the same source with g++ and runs it on the CPU.
// Layouts: bitops/formats.py. Arithmetic definition: bitops/reference.py.
//
// Every kernel takes its geometry from the *_grid / *_block helpers below, which the launchers and
// the harness share, and works for any M, N, K, group size (masked edges).
#pragma once

#include <cstdint>

#include "bitmath.cuh"
#include "float_types.cuh"
#include "ptx.cuh"

namespace bitops::cuda {

struct Grid {
  unsigned x, y, z;
};

// ------------------------------------------------------------------------------------------------
// pack / unpack: one thread per 32-bit word, grid-stride.
// ------------------------------------------------------------------------------------------------
constexpr int kPackThreads = 256;
constexpr int64_t kPackMaxBlocks = 65535;

inline Grid pack_grid(int64_t words) {
  int64_t b = (words + kPackThreads - 1) / kPackThreads;
  if (b > kPackMaxBlocks) b = kPackMaxBlocks;
  return {static_cast<unsigned>(b < 1 ? 1 : b), 1, 1};
}

// Calls f(row, word index in the row, flat index) for each of the rows * nw words, grid-stride.
template <class F>
__device__ __forceinline__ void for_each_word(int64_t rows, int nw, F&& f) {
  const int64_t total = rows * nw;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(i / nw, static_cast<int>(i % nw), i);
}

// codes int8 (rows, k) -> words (rows, nw). The first code the format cannot hold is reported in
// bad[0] = 1, bad[1] = value (bad zeroed by the caller).
template <int BITS>
__global__ void __launch_bounds__(kPackThreads)
    pack_kernel(const int8_t* __restrict__ codes, int32_t* __restrict__ out, int64_t rows, int k, int nw, int* bad) {
  constexpr int bits = BITS, cpw = 32 / BITS;
  for_each_word(rows, nw, [&](int64_t row, int w, int64_t i) {
    const int8_t* c = codes + row * k;
    const int j0 = w * cpw, j1 = j0 + cpw < k ? j0 + cpw : k;
    uint32_t word = 0;
    for (int j = j0; j < j1; ++j) {
      bool ok;
      const int v = c[j];
      word |= encode_code(v, bits, ok) << (bits * (j - j0));
      if (!ok && atomicExch(&bad[0], 1) == 0) bad[1] = v;
    }
    out[i] = static_cast<int32_t>(word);
  });
}

// words (rows, nw) -> codes int8 (rows, k).
template <int BITS>
__global__ void __launch_bounds__(kPackThreads)
    unpack_kernel(const int32_t* __restrict__ packed, int8_t* __restrict__ out, int64_t rows, int k, int nw) {
  constexpr int bits = BITS, cpw = 32 / BITS;
  for_each_word(rows, nw, [&](int64_t row, int w, int64_t i) {
    const uint32_t word = static_cast<uint32_t>(packed[i]);
    int8_t* o = out + row * k;
    const int j0 = w * cpw, j1 = j0 + cpw < k ? j0 + cpw : k;
    for (int j = j0; j < j1; ++j) o[j] = static_cast<int8_t>(decode_code(word, j - j0, bits));
  });
}

// ------------------------------------------------------------------------------------------------
// packed_linear_int8, tiled GEMM on int8 tensor cores (mma.sync m16n8k32 s8, sm_80+).
//
// x: int8 (M, lda) with lda a multiple of 16, 16-byte aligned, zero in columns [K, lda).
// A block computes a BM x BN tile of y with 4 warps (2 x 2, 32 x 32 each: 2 m16 x 4 n8 mma tiles).
// K is walked in BK tiles, double-buffered in shared memory with cp.async: x as bytes (read into
// A fragments with ldmatrix), the weights as their packed words (decoded into B fragments in
// registers, never expanded in memory). Accumulation is int32 per weight-scale group: when a group
// ends inside a tile, its sums go through the float epilogue and restart from 0, and a tile that
// straddles a group boundary runs once per group with the codes of the other group masked to 0.
// ------------------------------------------------------------------------------------------------
namespace mma_tile {
constexpr int BM = 64, BN = 64, BK = 64, THREADS = 128;
constexpr int XROW = BK + 16;  // bytes per shared row of x: 16-byte aligned rows, staggered banks
}  // namespace mma_tile

inline Grid linear_int8_mma_grid(int m, int n) {
  return {static_cast<unsigned>(ceil_div(n, mma_tile::BN)), static_cast<unsigned>(ceil_div(m, mma_tile::BM)), 1};
}

template <int BITS>
__global__ void __launch_bounds__(mma_tile::THREADS)
    linear_int8_mma_kernel(const int8_t* __restrict__ x, int lda, const float* __restrict__ x_scale,
                           const int32_t* __restrict__ w, int nw, const float* __restrict__ w_scale, int groups,
                           const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K, int group_size) {
  using namespace mma_tile;
  constexpr int CPW = 32 / BITS;       // codes per word
  constexpr int WPT = BK / CPW;        // packed words per weight row and K tile
  __shared__ __align__(16) int8_t xs[2][BM][XROW];
  __shared__ __align__(16) uint32_t ws[2][BN][WPT];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;  // warp tile: rows 32 wm.., cols 32 wn..
  const int gid = lane / 4, tig = lane % 4;  // PTX groupID / threadID_in_group
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tiles = ceil_div(K, BK);

  auto load = [&](int t, int s) {
    const int k0 = t * BK;
    for (int c = tid; c < BM * (BK / 16); c += THREADS) {
      const int r = c / (BK / 16), col = (c % (BK / 16)) * 16;
      const int gm = m0 + r, gk = k0 + col;
      const bool ok = gm < M && gk < lda;
      cp_async_16(&xs[s][r][col], ok ? x + static_cast<int64_t>(gm) * lda + gk : x, ok ? 16 : 0);
    }
    for (int c = tid; c < BN * WPT; c += THREADS) {
      const int r = c / WPT, wi = c % WPT;
      const int gn = n0 + r, gw = k0 / CPW + wi;
      const bool ok = gn < N && gw < nw;
      cp_async_4(&ws[s][r][wi], ok ? w + static_cast<int64_t>(gn) * nw + gw : w, ok ? 4 : 0);
    }
    cp_async_commit();
  };

  int32_t acc[2][4][4];
  float out[2][4][4];
  BITOPS_UNROLL
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0, out[i][j][e] = 0.f;

  load(0, 0);
  for (int t = 0; t < tiles; ++t) {
    const int s = t & 1;
    if (t + 1 < tiles) {
      load(t + 1, s ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const int k0 = t * BK, k_hi = k0 + BK < K ? k0 + BK : K;
    for (int g = k0 / group_size;; ++g) {  // the groups this tile overlaps, in order (uniform in the block)
      const int g_lo = g * group_size, g_hi = group_end(g, group_size, K);
      const int lo = g_lo > k0 ? g_lo : k0, hi = g_hi < k_hi ? g_hi : k_hi;
      const bool partial = lo > k0 || hi < k_hi;
      BITOPS_UNROLL
      for (int ks = 0; ks < BK / 32; ++ks) {
        const int kb = k0 + ks * 32;
        if (kb >= hi || kb + 32 <= lo) continue;
        uint32_t a[2][4], b[4][2];
        BITOPS_UNROLL
        for (int mi = 0; mi < 2; ++mi)
          ldmatrix_x4(a[mi], &xs[s][wm * 32 + mi * 16 + lane % 8 + 8 * ((lane / 8) % 2)][ks * 32 + 16 * (lane / 16)]);
        BITOPS_UNROLL
        for (int ni = 0; ni < 4; ++ni) {
          const uint32_t* row = ws[s][wn * 32 + ni * 8 + gid];
          BITOPS_UNROLL
          for (int h = 0; h < 2; ++h) {  // b[h]: codes kt .. kt + 3 of column gid
            const int kt = ks * 32 + tig * 4 + 16 * h;
            uint32_t v = decode_quad_s8x4(row[kt / CPW], (kt % CPW) / 4, BITS);
            if (partial) v = mask_s8x4(v, k0 + kt, lo, hi);
            b[ni][h] = v;
          }
        }
        BITOPS_UNROLL
        for (int mi = 0; mi < 2; ++mi)
          for (int ni = 0; ni < 4; ++ni) mma_m16n8k32_s8(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
      }
      if (hi == g_hi) {  // group g is complete: fold it into the float result
        BITOPS_UNROLL
        for (int ni = 0; ni < 4; ++ni)
          for (int e = 0; e < 4; ++e) {
            const int n = n0 + wn * 32 + ni * 8 + tig * 2 + (e & 1);
            const float sc = n < N ? w_scale[static_cast<int64_t>(n) * groups + g] : 0.f;
            BITOPS_UNROLL
            for (int mi = 0; mi < 2; ++mi) {
              out[mi][ni][e] = epilogue_add_group(out[mi][ni][e], g, acc[mi][ni][e], sc);
              acc[mi][ni][e] = 0;
            }
          }
      }
      if (hi == k_hi) break;
    }
    __syncthreads();  // buffer s is refilled by the next iteration's load
  }

  BITOPS_UNROLL
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 4; ++ni)
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + wm * 32 + mi * 16 + gid + 8 * (e / 2);
        const int n = n0 + wn * 32 + ni * 8 + tig * 2 + (e & 1);
        if (m < M && n < N) y[static_cast<int64_t>(m) * N + n] = epilogue_finish(out[mi][ni][e], x_scale[m], bias, n);
      }
}

// ------------------------------------------------------------------------------------------------
// packed_linear_int8 for small M: one warp per output column n and up to GEMV_ROWS activation rows.
// Lanes stride over the packed words of row n within a weight-scale group, decode 4 codes at a time
// into int8 lanes and multiply with __dp4a; the warp reduces with shuffles, then every lane applies
// the epilogue (all hold the sum) and lane r writes row r.
// x: as for the mma kernel (lda a multiple of 16, zero past K).
// ------------------------------------------------------------------------------------------------
constexpr int kGemvWarps = 4, kGemvRows = 4;

inline Grid linear_int8_gemv_grid(int m, int n) {
  return {static_cast<unsigned>(ceil_div(n, kGemvWarps)), static_cast<unsigned>(ceil_div(m, kGemvRows)), 1};
}

template <int BITS>
__global__ void __launch_bounds__(kGemvWarps * 32)
    linear_int8_gemv_kernel(const int8_t* __restrict__ x, int lda, const float* __restrict__ x_scale,
                            const int32_t* __restrict__ w, int nw, const float* __restrict__ w_scale, int groups,
                            const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K,
                            int group_size) {
  constexpr int CPW = 32 / BITS;
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  const int m0 = blockIdx.y * kGemvRows;
  if (n >= N) return;  // whole warps leave together; no block-wide barrier below
  const int32_t* wrow = w + static_cast<int64_t>(n) * nw;
  float out[kGemvRows] = {};
  for (int g = 0; g < groups; ++g) {
    const int lo = g * group_size, hi = group_end(g, group_size, K);
    int32_t acc[kGemvRows] = {};
    for (int wi = lo / CPW + lane; wi <= (hi - 1) / CPW; wi += 32) {
      const uint32_t word = static_cast<uint32_t>(wrow[wi]);
      for (int q = 0; q < CPW / 4; ++q) {
        const int kq = wi * CPW + q * 4;
        if (kq + 4 <= lo || kq >= hi) continue;
        uint32_t v = decode_quad_s8x4(word, q, BITS);
        if (kq < lo || kq + 4 > hi) v = mask_s8x4(v, kq, lo, hi);
        for (int r = 0; r < kGemvRows; ++r) {
          if (m0 + r >= M) break;
          const int32_t xv = *reinterpret_cast<const int32_t*>(x + static_cast<int64_t>(m0 + r) * lda + kq);
          acc[r] = __dp4a(static_cast<int>(v), xv, acc[r]);
        }
      }
    }
    const float sc = w_scale[static_cast<int64_t>(n) * groups + g];
    for (int r = 0; r < kGemvRows; ++r) {
      for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
      out[r] = epilogue_add_group(out[r], g, acc[r], sc);
    }
  }
  for (int r = 0; r < kGemvRows; ++r)
    if (lane == r && m0 + r < M)
      y[static_cast<int64_t>(m0 + r) * N + n] = epilogue_finish(out[r], x_scale[m0 + r], bias, n);
}

// ------------------------------------------------------------------------------------------------
// packed_linear_float (GRAD = false) and packed_linear_grad_input (GRAD = true): float activations
// times the dequantized packed weight, fp32 accumulation, output in the activation dtype T.
//   forward: out (M, N) = a (M, K) @ W^T (+ bias),  reduction over K
//   grad:    out (M, K) = a (M, N) @ W,             reduction over N  (same packed words)
// Tiles of BM x BJ outputs, 256 threads with 4 x 4 outputs each; per BR reduction step the block
// stages a (converted to fp32) and the weight tile decoded to code * scale (exact in fp32) in shared
// memory. CUDA cores, no tensor cores: the Triton kernels are the faster path for these two ops.
// ------------------------------------------------------------------------------------------------
namespace float_tile {
constexpr int BM = 64, BJ = 64, BR = 16, THREADS = 256;
}

inline Grid linear_float_grid(int m, int j) {
  return {static_cast<unsigned>(ceil_div(j, float_tile::BJ)), static_cast<unsigned>(ceil_div(m, float_tile::BM)), 1};
}

template <typename T, bool GRAD>
__global__ void __launch_bounds__(float_tile::THREADS)
    linear_float_kernel(const T* __restrict__ a, const int32_t* __restrict__ w, int nw,
                        const float* __restrict__ w_scale, int groups, int group_size, const float* __restrict__ bias,
                        T* __restrict__ out, int M, int N, int K, int bits) {
  using namespace float_tile;
  __shared__ float as[BR][BM + 1];
  __shared__ float bs[BR][BJ + 1];
  const int R = GRAD ? N : K, J = GRAD ? K : N;
  const int cpw = codes_per_word(bits);
  const int tid = threadIdx.x, tm = tid / 16, tj = tid % 16;
  const int m0 = blockIdx.y * BM, j0 = blockIdx.x * BJ;
  float acc[4][4] = {};
  for (int r0 = 0; r0 < R; r0 += BR) {
    for (int e = tid; e < BM * BR; e += THREADS) {
      const int m = e / BR, r = e % BR;
      const bool ok = m0 + m < M && r0 + r < R;
      as[r][m] = ok ? to_float(a[static_cast<int64_t>(m0 + m) * R + r0 + r]) : 0.f;
    }
    for (int e = tid; e < BJ * BR; e += THREADS) {
      // consecutive threads take consecutive k (same packed word): j fastest for grad, r for forward
      const int r = GRAD ? e / BJ : e % BR, j = GRAD ? e % BJ : e / BR;
      const int n = GRAD ? r0 + r : j0 + j, k = GRAD ? j0 + j : r0 + r;
      float v = 0.f;
      if (n < N && k < K) {
        const uint32_t word = static_cast<uint32_t>(w[static_cast<int64_t>(n) * nw + k / cpw]);
        v = static_cast<float>(decode_code(word, k % cpw, bits)) * w_scale[static_cast<int64_t>(n) * groups + k / group_size];
      }
      bs[r][j] = v;
    }
    __syncthreads();
    for (int r = 0; r < BR; ++r) {
      float av[4], bv[4];
      for (int i = 0; i < 4; ++i) av[i] = as[r][tm + 16 * i], bv[i] = bs[r][tj + 16 * i];
      for (int i = 0; i < 4; ++i)
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] += av[i] * bv[jj];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int jj = 0; jj < 4; ++jj) {
      const int m = m0 + tm + 16 * i, j = j0 + tj + 16 * jj;
      if (m < M && j < J) {
        float v = acc[i][jj];
        if (!GRAD && bias) v += bias[j];
        out[static_cast<int64_t>(m) * J + j] = from_float<T>(v);
      }
    }
}

}  // namespace bitops::cuda
