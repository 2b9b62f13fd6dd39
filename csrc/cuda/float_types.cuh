// fp32 / fp16 / bf16 element access for the float kernels. On the GPU these are CUDA's conversion
// intrinsics; the host harness defines the same names for its own half types.
#pragma once

#if !defined(BITOPS_HOST_HARNESS)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace bitops::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace bitops::cuda
