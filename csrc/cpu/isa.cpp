#include "isa.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <bit>

namespace bitops::cpu {

namespace {
enum class Isa : int { Auto = 0, Avx2 = 1, Portable = 2 };
std::atomic<int> g_isa{static_cast<int>(Isa::Auto)};
}  // namespace

bool cpu_has_avx2() {
#if BITOPS_X86
  // FMA too, as ATen's AVX2 capability requires: the GELU of quantize_rows_int8 follows ATen's FMAs.
  // Every x86 CPU with AVX2 so far has it.
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

void set_isa(const std::string& isa) {
  if (isa == "auto") {
    g_isa = static_cast<int>(Isa::Auto);
  } else if (isa == "portable") {
    g_isa = static_cast<int>(Isa::Portable);
  } else if (isa == "avx2") {
    TORCH_CHECK_VALUE(cpu_has_avx2(), "isa='avx2' was asked for but this CPU does not support AVX2");
    g_isa = static_cast<int>(Isa::Avx2);
  } else {
    TORCH_CHECK_VALUE(false, "isa='", isa, "' is not a CPU kernel path; expected 'auto', 'avx2' or 'portable'");
  }
}

bool use_avx2() {
  const auto isa = static_cast<Isa>(g_isa.load());
  return isa == Isa::Avx2 || (isa == Isa::Auto && cpu_has_avx2());
}

std::string active_isa() { return use_avx2() ? "avx2" : "portable"; }

int64_t parallel_threads_used(int64_t work) {
  // The kernels' at::parallel_for is an inline template compiled into this extension: without
  // -fopenmp here it silently runs serially whatever torch.set_num_threads says. This runs one the
  // same way and counts the distinct threads that took a chunk.
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, work, 1, [&](int64_t, int64_t) { seen |= uint64_t{1} << (at::get_thread_num() % 64); });
  return std::popcount(seen.load());
}

}  // namespace bitops::cpu
