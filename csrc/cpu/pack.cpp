// pack_bits / unpack_bits for CPU tensors. Layout: bitops/formats.py.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "../checks.h"
#include "decode.h"

namespace bitops::cpu {

namespace {

at::Tensor pack_bits_cpu(const at::Tensor& codes_in, int64_t bits) {
  check_pack_args(codes_in, bits);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t k = codes.size(-1), rows = codes.numel() / k, nw = words_per_row(k, bits), cpw = 32 / bits;
  auto out_shape = codes.sizes().vec();
  out_shape.back() = nw;
  at::Tensor out = at::empty(out_shape, codes.options().dtype(at::kInt));
  const int8_t* src = codes.data_ptr<int8_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  // Out-of-range codes are reported after the parallel loop: the first bad value found is kept.
  std::atomic<int> bad{0};
  std::atomic<bool> any_bad{false};
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* c = src + r * k;
      for (int64_t w = 0; w < nw; ++w) {
        uint32_t word = 0;
        const int64_t j0 = w * cpw, j1 = std::min(k, j0 + cpw);
        for (int64_t j = j0; j < j1; ++j) {
          const int v = c[j];
          const bool ok = bits == 1 ? (v == 1 || v == -1) : (v >= -2 && v <= 1);
          if (!ok && !any_bad.exchange(true)) bad = v;
          const uint32_t field = bits == 1 ? (v > 0) : (static_cast<uint32_t>(v) & 3u);
          word |= field << (bits * (j - j0));
        }
        dst[r * nw + w] = static_cast<int32_t>(word);
      }
    }
  });
  if (any_bad.load()) fail_bad_code(bad.load(), bits);
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& packed_in, int64_t bits, int64_t k) {
  check_unpack_args(packed_in, bits, k);
  const int64_t nw = words_per_row(k, bits), cpw = 32 / bits;
  const at::Tensor packed = packed_in.contiguous();
  const int64_t rows = nw ? packed.numel() / nw : 0;
  auto out_shape = packed.sizes().vec();
  out_shape.back() = k;
  at::Tensor out = at::empty(out_shape, packed.options().dtype(at::kChar));
  const int32_t* src = packed.data_ptr<int32_t>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr<int8_t>());
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> row(nw * cpw);
    for (int64_t r = r0; r < r1; ++r) {
      expand_words(src + r * nw, nw, static_cast<int>(bits), /*to_values=*/true, row.data());
      std::memcpy(dst + r * k, row.data(), k);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
}

}  // namespace bitops::cpu
