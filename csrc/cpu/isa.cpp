#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace bitops::cpu {

namespace {
enum class Isa : int { Auto = 0, Avx2 = 1, Portable = 2 };
std::atomic<int> g_isa{static_cast<int>(Isa::Auto)};
}  // namespace

bool cpu_has_avx2() {
#if BITOPS_X86
  static const bool has = __builtin_cpu_supports("avx2");
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

}  // namespace bitops::cpu
