// Run-time choice of the CPU kernel path. The package is built without -mavx2 or -march=native so
// that one binary runs on any x86-64 (and builds on aarch64); AVX2 code is compiled per function
// with __attribute__((target("avx2"))) and called only when the CPU reports AVX2.
#pragma once

#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define BITOPS_X86 1
#define BITOPS_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define BITOPS_X86 0
#define BITOPS_TARGET_AVX2
#endif

namespace bitops::cpu {

bool cpu_has_avx2();
// "auto" (default: AVX2 when available), "avx2" (error if the CPU lacks it) or "portable".
void set_isa(const std::string& isa);
std::string active_isa();
bool use_avx2();
// How many threads an at::parallel_for over `work` items (grain 1) in this extension runs on.
int64_t parallel_threads_used(int64_t work);

}  // namespace bitops::cpu
