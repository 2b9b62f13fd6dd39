// Thin wrappers around the inline PTX the kernels use: int8 tensor-core mma, ldmatrix and cp.async.
// One instruction each, no logic: the host harness (tests/cuda_harness/cuda_host.h) defines the same
// functions from the PTX ISA's descriptions and fragment tables (BITOPS_HOST_HARNESS is set there),
// so a kernel's indexing around them runs on the CPU too.
#pragma once

#include <cstdint>

#if !defined(BITOPS_HOST_HARNESS)

namespace bitops::cuda {

// D (16x8 s32) = A (16x32 s8, row) * B (32x8 s8, col) + C. Fragments per PTX ISA "Matrix Fragments
// for mma.m16n8k32" (.s8): a[4], b[2], c/d[4] 32-bit registers per lane.
__device__ __forceinline__ void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2],
                                                const int32_t c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]), "r"(c[2]),
        "r"(c[3]));
}

// Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Asynchronous global -> shared copies; bytes past src_bytes (0 allowed) are zero-filled.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace bitops::cuda

#endif  // !BITOPS_HOST_HARNESS
