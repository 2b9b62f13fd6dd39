// Host entry points of the CUDA kernels (csrc/cuda/*.cu), called by ops_cuda.cpp. Plain pointers
// and sizes: the .cu files include no torch header, so nvcc compiles them alone (tests compile each
// one for sm_80 and sm_90a). Every function launches on `stream` and returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace bitops::cuda {

// codes (rows, k) int8 -> packed (rows, words); bad: 2 device ints, zeroed, set to {1, value} on the
// first code outside the format.
cudaError_t launch_pack(const int8_t* codes, int32_t* packed, int64_t rows, int k, int bits, int* bad,
                        cudaStream_t stream);
cudaError_t launch_unpack(const int32_t* packed, int8_t* codes, int64_t rows, int k, int bits, cudaStream_t stream);

// y (M, N) fp32 = int8 x (M, lda; lda % 16 == 0, zero in [K, lda), 16-byte aligned) times packed W
// (N, words), with the epilogue of bitops/reference.py. M <= kGemvMaxM takes the dp4a GEMV kernel,
// larger M the mma.sync tensor-core kernel.
constexpr int kGemvMaxM = 8;
cudaError_t launch_linear_int8(const int8_t* x, int lda, const float* x_scale, const int32_t* w,
                               const float* w_scale, const float* bias, float* y, int m, int n, int k,
                               int group_size, int bits, cudaStream_t stream);

// Float activations: dtype 0 = fp32, 1 = fp16, 2 = bf16 (a and out). grad = false: out (M, N) =
// a (M, K) @ W^T + bias; grad = true: out (M, K) = a (M, N) @ W (bias unused).
enum class FloatType { f32 = 0, f16 = 1, bf16 = 2 };
cudaError_t launch_linear_float(FloatType dtype, bool grad, const void* a, const int32_t* w, const float* w_scale,
                                const float* bias, void* out, int m, int n, int k, int group_size, int bits,
                                cudaStream_t stream);

}  // namespace bitops::cuda
