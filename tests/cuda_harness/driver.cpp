// C entry points that run the kernels of csrc/cuda/kernels.cuh through the host harness, for
// tests/test_cuda_harness.py (loaded with ctypes by tests/cuda_harness/runner.py). Geometry comes
// from the same *_grid helpers and block sizes the CUDA launchers (csrc/cuda/*.cu) use; the kernel
// path (GEMV or mma) is chosen by the caller so both run on every shape.
#include "cuda_host.h"  // first: defines the CUDA keywords for g++

#include "cuda/kernels.cuh"

using namespace bitops::cuda;

namespace {
dim3 d3(Grid g) { return dim3(g.x, g.y, g.z); }
}  // namespace

extern "C" {

// bad: 2 ints, zeroed by the caller.
void h_pack(const int8_t* codes, int32_t* out, int64_t rows, int k, int bits, int* bad) {
  const int nw = ceil_div(k, 32 / bits);
  const dim3 g = d3(pack_grid(rows * nw));
  if (bits == 1)
    harness::launch(g, dim3(kPackThreads), pack_kernel<1>, codes, out, rows, k, nw, bad);
  else
    harness::launch(g, dim3(kPackThreads), pack_kernel<2>, codes, out, rows, k, nw, bad);
}

void h_unpack(const int32_t* packed, int8_t* out, int64_t rows, int k, int bits) {
  const int nw = ceil_div(k, 32 / bits);
  const dim3 g = d3(pack_grid(rows * nw));
  if (bits == 1)
    harness::launch(g, dim3(kPackThreads), unpack_kernel<1>, packed, out, rows, k, nw);
  else
    harness::launch(g, dim3(kPackThreads), unpack_kernel<2>, packed, out, rows, k, nw);
}

// path: 0 = dp4a GEMV kernel, 1 = mma.sync tile kernel. x: (m, lda) int8, zero in [k, lda).
void h_linear_int8(int path, const int8_t* x, int lda, const float* x_scale, const int32_t* w, const float* w_scale,
                   const float* bias, float* y, int m, int n, int k, int group_size, int bits) {
  const int nw = ceil_div(k, 32 / bits), groups = ceil_div(k, group_size);
  if (path == 0) {
    const dim3 g = d3(linear_int8_gemv_grid(m, n));
    auto kern = bits == 1 ? linear_int8_gemv_kernel<1> : linear_int8_gemv_kernel<2>;
    harness::launch(g, dim3(kGemvWarps * 32), kern, x, lda, x_scale, w, nw, w_scale, groups, bias, y, m, n, k,
                    group_size);
  } else {
    const dim3 g = d3(linear_int8_mma_grid(m, n));
    auto kern = bits == 1 ? linear_int8_mma_kernel<1> : linear_int8_mma_kernel<2>;
    harness::launch(g, dim3(mma_tile::THREADS), kern, x, lda, x_scale, w, nw, w_scale, groups, bias, y, m, n, k,
                    group_size);
  }
}

// dtype: 0 fp32, 1 fp16, 2 bf16 (a and out hold that type's bits); grad: 0 forward, 1 grad_input.
void h_linear_float(int dtype, int grad, const void* a, const int32_t* w, const float* w_scale, const float* bias,
                    void* out, int m, int n, int k, int group_size, int bits) {
  const int nw = ceil_div(k, 32 / bits), groups = ceil_div(k, group_size);
  const dim3 g = d3(linear_float_grid(m, grad ? k : n));
  const dim3 b(float_tile::THREADS);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(a);
    T* op = static_cast<T*>(out);
    if (grad)
      harness::launch(g, b, linear_float_kernel<T, true>, ap, w, nw, w_scale, groups, group_size, bias, op, m, n, k, bits);
    else
      harness::launch(g, b, linear_float_kernel<T, false>, ap, w, nw, w_scale, groups, group_size, bias, op, m, n, k, bits);
  };
  if (dtype == 1)
    run(__half{});
  else if (dtype == 2)
    run(__nv_bfloat16{});
  else
    run(float{});
}

}  // extern "C"
