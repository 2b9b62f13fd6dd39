// Launcher of linear_float_kernel: forward and grad_input for fp32 / fp16 / bf16 activations.
#include "kernels.cuh"
#include "launch.h"

namespace bitops::cuda {

namespace {
template <typename T, bool GRAD>
cudaError_t launch(const void* a, const int32_t* w, const float* w_scale, const float* bias, void* out, int m, int n,
                   int k, int group_size, int bits, cudaStream_t stream) {
  const int nw = ceil_div(k, 32 / bits), groups = ceil_div(k, group_size);
  const Grid g = linear_float_grid(m, GRAD ? k : n);
  linear_float_kernel<T, GRAD><<<dim3(g.x, g.y, g.z), float_tile::THREADS, 0, stream>>>(
      static_cast<const T*>(a), w, nw, w_scale, groups, group_size, bias, static_cast<T*>(out), m, n, k, bits);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_t(bool grad, const void* a, const int32_t* w, const float* w_scale, const float* bias, void* out,
                     int m, int n, int k, int group_size, int bits, cudaStream_t stream) {
  return grad ? launch<T, true>(a, w, w_scale, bias, out, m, n, k, group_size, bits, stream)
              : launch<T, false>(a, w, w_scale, bias, out, m, n, k, group_size, bits, stream);
}
}  // namespace

cudaError_t launch_linear_float(FloatType dtype, bool grad, const void* a, const int32_t* w, const float* w_scale,
                                const float* bias, void* out, int m, int n, int k, int group_size, int bits,
                                cudaStream_t stream) {
  switch (dtype) {
    case FloatType::f16: return launch_t<__half>(grad, a, w, w_scale, bias, out, m, n, k, group_size, bits, stream);
    case FloatType::bf16:
      return launch_t<__nv_bfloat16>(grad, a, w, w_scale, bias, out, m, n, k, group_size, bits, stream);
    default: return launch_t<float>(grad, a, w, w_scale, bias, out, m, n, k, group_size, bits, stream);
  }
}

}  // namespace bitops::cuda
