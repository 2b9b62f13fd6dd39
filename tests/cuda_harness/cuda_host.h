// A host emulation of the CUDA execution model, enough to run csrc/cuda/kernels.cuh unchanged with g++.
//
// How it runs a kernel (harness::launch):
//   * blocks run one after another; within a block every CUDA thread is one std::thread (the same
//     threads run each block in turn, separated by a block-wide barrier);
//   * threadIdx / blockIdx are thread_local, blockDim / gridDim global to the launch;
//   * __shared__ is `static`: one instance per kernel instantiation, shared by the block's threads
//     (blocks never overlap, so that is exactly block-shared storage);
//   * __syncthreads is a std::barrier over the block's threads; warp collectives (__shfl_*_sync,
//     __ballot_sync, mma, ldmatrix) use a std::barrier over the 32 lanes of the warp and exchange
//     values through per-warp slots;
//   * the PTX wrappers of csrc/cuda/ptx.cuh are defined here from the PTX ISA, not from the kernels:
//     mma.m16n8k32 s8 rebuilds the whole A (16x32), B (32x8) and C (16x8) from the 32 lanes'
//     registers with the ISA's fragment tables ("Matrix Fragments for mma.m16n8k32"), multiplies,
//     and hands each lane its D elements by the same tables; ldmatrix .x4 gives lane l, from matrix i,
//     the 4 bytes at row l/4, bytes 4*(l%4) of the row whose address lane 8*i + l/4 supplied;
//     cp.async copies are queued per thread and performed only when cp.async.wait_group retires
//     their group, so a kernel that reads shared memory before waiting reads stale data here too.
//
// Limits (what a pass here does not prove):
//   * memory ordering is stronger than on a GPU: threads of a block are real threads, but every
//     barrier is a full fence and there is no weak or cached memory; a missing __threadfence or a
//     race that a GPU would expose may pass;
//   * no timing, no occupancy, no register or shared-memory limits: speed is measured on a GPU only;
//   * warp collectives require all 32 lanes (full mask) and block sizes that are multiples of 32;
//     a kernel that reaches __syncthreads or a warp collective divergently hangs (as it may on a GPU);
//   * alignment rules of ldmatrix / cp.async are checked (abort with a message), bank conflicts are not.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define BITOPS_HOST_HARNESS 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace harness {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda harness: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

struct Warp {
  std::barrier<> bar{32};
  uint64_t slot[32][8];
  const void* ptr[32];
  uint64_t xchg[2][32];  // shuffles alternate between two slot sets: one barrier per shuffle
};

struct Block {
  explicit Block(int threads) : bar(threads), warps(threads / 32) {
    for (auto& w : warps) w = std::make_unique<Warp>();
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline Block* g_block = nullptr;
inline thread_local int t_lane = 0;
inline thread_local Warp* t_warp = nullptr;
inline thread_local int t_parity = 0;

// cp.async groups of this thread: pending copies, committed groups (copies per group), in order.
struct Copy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};
inline thread_local std::vector<Copy> t_pending;
inline thread_local std::deque<std::vector<Copy>> t_groups;

inline void run_copy(const Copy& c) {
  if (c.src_bytes > 0) std::memcpy(c.dst, c.src, c.src_bytes);
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  static std::mutex one_launch_at_a_time;  // __shared__ statics are per kernel, not per launch
  std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0) fail("block size must be a multiple of 32");
  gridDim = grid;
  blockDim = block;
  // One std::thread per CUDA thread of a block; the same threads then run the next block, after a
  // block-wide barrier, so blocks never overlap and thread creation is paid once per launch.
  Block b(threads);
  g_block = &b;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      t_lane = t % 32;
      t_warp = b.warps[t / 32].get();
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3(bx, by, bz);
            t_pending.clear();
            t_groups.clear();
            t_parity = 0;
            kernel(args...);
            if (!t_pending.empty() || !t_groups.empty()) fail("thread exited with cp.async copies never waited for");
            b.bar.arrive_and_wait();  // the block is over for every thread before the next begins
          }
    });
  for (auto& th : pool) th.join();
  g_block = nullptr;
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8);
  uint64_t r = 0;
  std::memcpy(&r, &v, sizeof(T));
  return r;
}
template <class T>
T from_bits(uint64_t r) {
  T v;
  std::memcpy(&v, &r, sizeof(T));
  return v;
}

inline void check_full(unsigned mask) {
  if (mask != 0xffffffffu) fail("warp collectives here need the full mask 0xffffffff");
}

// Lane l publishes `mine`; returns what lane src(l) published. Consecutive exchanges use alternate
// slot sets, so one barrier suffices: a lane can only overwrite set p again after the barrier of the
// exchange in between, which no lane passes before it has read set p.
template <class T, class Src>
T warp_exchange(T mine, Src src) {
  Warp& w = *t_warp;
  uint64_t* set = w.xchg[t_parity];
  t_parity ^= 1;
  set[t_lane] = to_bits(mine);
  w.bar.arrive_and_wait();
  return from_bits<T>(set[src(t_lane)]);
}

}  // namespace harness

inline void __syncthreads() { harness::g_block->bar.arrive_and_wait(); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src) {
  harness::check_full(mask);
  return harness::warp_exchange(v, [&](int) { return src & 31; });
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  harness::check_full(mask);
  return harness::warp_exchange(v, [&](int l) { return (l ^ lane_mask) & 31; });
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  harness::check_full(mask);
  return harness::warp_exchange(v, [&](int l) { return l + static_cast<int>(delta) < 32 ? l + static_cast<int>(delta) : l; });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  harness::check_full(mask);
  harness::Warp& w = *harness::t_warp;
  w.slot[harness::t_lane][0] = pred != 0;
  w.bar.arrive_and_wait();
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= static_cast<unsigned>(w.slot[l][0]) << l;
  w.bar.arrive_and_wait();  // slot is shared with mma / ldmatrix: all lanes read before anyone reuses it
  return r;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }

// dp4a (signed): c + sum of the four products of the int8 lanes of a and b.
inline int __dp4a(int a, int b, int c) {
  int64_t s = c;
  for (int i = 0; i < 4; ++i) s += static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(b >> (8 * i));
  return static_cast<int>(static_cast<uint32_t>(s));  // wraps like the 32-bit hardware add
}

inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }

// Half types: fp16 through _Float16 (IEEE, round to nearest even), bf16 by hand (same rounding).
struct __half {
  _Float16 v;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return __nv_bfloat16{0x7FC0};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

namespace bitops::cuda {

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, from the PTX ISA fragment tables
// (groupID = lane >> 2, threadID_in_group = lane % 4):
//   A a_i (i = 0..15, byte i % 4 of register i / 4): row = groupID for i < 4 or 8 <= i < 12,
//     groupID + 8 otherwise; col = threadID_in_group * 4 + (i & 3), + 16 for i >= 8.
//   B b_i (i = 0..7, byte i % 4 of register i / 4): row = threadID_in_group * 4 + (i & 3), + 16 for
//     i >= 4; col = groupID.
//   C/D c_i (i = 0..3): row = groupID for i < 2, groupID + 8 otherwise; col = threadID_in_group * 2 + (i & 1).
inline void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2], const int32_t c[4]) {
  harness::Warp& w = *harness::t_warp;
  const int me = harness::t_lane;
  for (int i = 0; i < 4; ++i) w.slot[me][i] = a[i];
  for (int i = 0; i < 2; ++i) w.slot[me][4 + i] = b[i];
  // c0, c1 in slot 6 and c2, c3 in slot 7 (low and high 32 bits)
  w.slot[me][6] = static_cast<uint32_t>(c[0]) | (static_cast<uint64_t>(static_cast<uint32_t>(c[1])) << 32);
  w.slot[me][7] = static_cast<uint32_t>(c[2]) | (static_cast<uint64_t>(static_cast<uint32_t>(c[3])) << 32);
  w.bar.arrive_and_wait();
  int8_t A[16][32];
  int8_t B[32][8];
  int32_t C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 16; ++i) {
      const int row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
      const int col = t * 4 + (i & 3) + (i >= 8 ? 16 : 0);
      A[row][col] = static_cast<int8_t>(static_cast<uint32_t>(w.slot[l][i / 4]) >> (8 * (i % 4)));
    }
    for (int i = 0; i < 8; ++i) {
      const int row = t * 4 + (i & 3) + (i >= 4 ? 16 : 0);
      B[row][g] = static_cast<int8_t>(static_cast<uint32_t>(w.slot[l][4 + i / 4]) >> (8 * (i % 4)));
    }
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
      C[row][col] = static_cast<int32_t>(static_cast<uint32_t>(w.slot[l][6 + i / 2] >> (32 * (i & 1))));
    }
  }
  w.bar.arrive_and_wait();  // everyone has read the slots
  const int g = me >> 2, t = me % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
    int64_t s = C[row][col];
    for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
    d[i] = static_cast<int32_t>(static_cast<uint32_t>(s));
  }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: addresses of lanes 8i..8i+7 are the rows of matrix i
// (16 bytes each, 16-byte aligned); lane l receives in r[i] the two b16 elements (4 bytes) at row
// l / 4, elements 2 * (l % 4) and 2 * (l % 4) + 1 of matrix i.
inline void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
  harness::Warp& w = *harness::t_warp;
  const int me = harness::t_lane;
  if (reinterpret_cast<uintptr_t>(smem_row) % 16 != 0) harness::fail("ldmatrix row address not 16-byte aligned");
  w.ptr[me] = smem_row;
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const char* row = static_cast<const char*>(w.ptr[8 * i + me / 4]);
    std::memcpy(&r[i], row + 4 * (me % 4), 4);
  }
  w.bar.arrive_and_wait();
}

inline void cp_async(void* smem, const void* gmem, int bytes, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(smem) % bytes != 0) harness::fail("cp.async shared address not aligned to its size");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(gmem) % bytes != 0)
    harness::fail("cp.async global address not aligned to its size");
  if (src_bytes < 0 || src_bytes > bytes) harness::fail("cp.async src-size out of range");
  harness::t_pending.push_back({smem, gmem, bytes, src_bytes});
}
inline void cp_async_16(void* smem, const void* gmem, int src_bytes) { cp_async(smem, gmem, 16, src_bytes); }
inline void cp_async_4(void* smem, const void* gmem, int src_bytes) { cp_async(smem, gmem, 4, src_bytes); }
inline void cp_async_commit() {
  harness::t_groups.push_back(std::move(harness::t_pending));
  harness::t_pending.clear();
}
// cp.async.wait_group N: all but the newest N committed groups are complete (copies not yet
// committed are not waited for, as in PTX).
template <int N>
inline void cp_async_wait() {
  while (static_cast<int>(harness::t_groups.size()) > N) {
    for (const auto& c : harness::t_groups.front()) harness::run_copy(c);
    harness::t_groups.pop_front();
  }
}

}  // namespace bitops::cuda
