// Launchers of pack_kernel / unpack_kernel (csrc/cuda/kernels.cuh).
#include "kernels.cuh"
#include "launch.h"

namespace bitops::cuda {

cudaError_t launch_pack(const int8_t* codes, int32_t* packed, int64_t rows, int k, int bits, int* bad,
                        cudaStream_t stream) {
  const int nw = ceil_div(k, codes_per_word(bits));
  const Grid g = pack_grid(rows * nw);
  if (bits == 1)
    pack_kernel<1><<<dim3(g.x, g.y, g.z), kPackThreads, 0, stream>>>(codes, packed, rows, k, nw, bad);
  else
    pack_kernel<2><<<dim3(g.x, g.y, g.z), kPackThreads, 0, stream>>>(codes, packed, rows, k, nw, bad);
  return cudaGetLastError();
}

cudaError_t launch_unpack(const int32_t* packed, int8_t* codes, int64_t rows, int k, int bits, cudaStream_t stream) {
  const int nw = ceil_div(k, codes_per_word(bits));
  const Grid g = pack_grid(rows * nw);
  if (bits == 1)
    unpack_kernel<1><<<dim3(g.x, g.y, g.z), kPackThreads, 0, stream>>>(packed, codes, rows, k, nw);
  else
    unpack_kernel<2><<<dim3(g.x, g.y, g.z), kPackThreads, 0, stream>>>(packed, codes, rows, k, nw);
  return cudaGetLastError();
}

}  // namespace bitops::cuda
