// Launcher of the int8 packed GEMM: dp4a GEMV for small M, mma.sync tensor-core tiles otherwise.
#include "kernels.cuh"
#include "launch.h"

namespace bitops::cuda {

namespace {
template <int BITS>
cudaError_t launch(const int8_t* x, int lda, const float* x_scale, const int32_t* w, const float* w_scale,
                   const float* bias, float* y, int m, int n, int k, int group_size, cudaStream_t stream) {
  const int nw = ceil_div(k, 32 / BITS), groups = ceil_div(k, group_size);
  if (m <= kGemvMaxM) {
    const Grid g = linear_int8_gemv_grid(m, n);
    linear_int8_gemv_kernel<BITS><<<dim3(g.x, g.y, g.z), kGemvWarps * 32, 0, stream>>>(
        x, lda, x_scale, w, nw, w_scale, groups, bias, y, m, n, k, group_size);
  } else {
    const Grid g = linear_int8_mma_grid(m, n);
    linear_int8_mma_kernel<BITS><<<dim3(g.x, g.y, g.z), mma_tile::THREADS, 0, stream>>>(
        x, lda, x_scale, w, nw, w_scale, groups, bias, y, m, n, k, group_size);
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_linear_int8(const int8_t* x, int lda, const float* x_scale, const int32_t* w,
                               const float* w_scale, const float* bias, float* y, int m, int n, int k,
                               int group_size, int bits, cudaStream_t stream) {
  return bits == 1 ? launch<1>(x, lda, x_scale, w, w_scale, bias, y, m, n, k, group_size, stream)
                   : launch<2>(x, lda, x_scale, w, w_scale, bias, y, m, n, k, group_size, stream);
}

}  // namespace bitops::cuda
