// What one core of this machine sustains, for reading the kernel figures against a ceiling:
//   - the effective clock: a chain of dependent scalar adds (one cycle each);
//   - ymm throughput of the instruction each kernel is built on: vpmaddubsw (the int8 kernels: ours for
//     2-bit weights, fbgemm's), vpshufb (our 1-bit lookup kernel), vpaddw, vfmadd231ps (fp32 sgemm),
//     each as 8 independent chains so that latency does not count.
// A kernel's ceiling is then (multiply-adds per vector instruction) x (vector instructions per second);
// see README "Performance". `make roof` builds and runs it (one core pinned); not part of `make bench`.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstring>

namespace {

using Clock = std::chrono::steady_clock;
constexpr long kIterations = 50'000'000;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// 8 independent chains r_i = op(r_i, b); the chains start from different values so that the compiler
// cannot merge them.
#define CHAINS(name, type, op)                                                                          \
  __attribute__((noinline)) void name(long n, type* v) {                                               \
    type r0 = v[0], r1 = v[1], r2 = v[2], r3 = v[3], r4 = v[4], r5 = v[5], r6 = v[6], r7 = v[7], b = v[8]; \
    for (long i = 0; i < n; ++i) {                                                                     \
      r0 = op(r0, b), r1 = op(r1, b), r2 = op(r2, b), r3 = op(r3, b);                                  \
      r4 = op(r4, b), r5 = op(r5, b), r6 = op(r6, b), r7 = op(r7, b);                                  \
    }                                                                                                  \
    v[0] = r0, v[1] = r1, v[2] = r2, v[3] = r3, v[4] = r4, v[5] = r5, v[6] = r6, v[7] = r7;            \
  }

inline __m256 fma_op(__m256 a, __m256 b) { return _mm256_fmadd_ps(a, b, b); }
CHAINS(chains_maddubs, __m256i, _mm256_maddubs_epi16)
CHAINS(chains_shuffle, __m256i, _mm256_shuffle_epi8)
CHAINS(chains_addw, __m256i, _mm256_add_epi16)
CHAINS(chains_fma, __m256, fma_op)

template <typename T, typename Fill>
double ns_per_op(void (*chains)(long, T*), Fill fill) {
  alignas(32) T v[9];
  for (int i = 0; i < 9; ++i) v[i] = fill(i);
  chains(kIterations / 10, v);  // warm up
  const auto t0 = Clock::now();
  chains(kIterations, v);
  const double s = seconds_since(t0);
  int sink;  // the results are used, so the loops are not dropped
  std::memcpy(&sink, &v[0], sizeof sink);
  asm volatile("" : : "r"(sink));
  return s / (8.0 * kIterations) * 1e9;
}

}  // namespace

int main() {
  long x = 0;
  const auto t0 = Clock::now();
  for (long i = 0; i < kIterations; ++i) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  const double ghz = 4.0 * kIterations / seconds_since(t0) / 1e9;
  std::printf("effective clock (dependent scalar adds): %.2f GHz\n", ghz);
  // Multiply-adds per instruction in the kernels' inner loops: vpmaddubsw 32 (and one vpaddw to
  // accumulate it: 16 per instruction in our byte kernel, 32 / 3 in fbgemm's maddubs + maddwd + add);
  // vpshufb on our int16 triple tables 48 (plus one vpaddw: 24); vfmadd231ps 8.
  const auto bytes = [](int i) { return _mm256_set1_epi8(static_cast<char>(i + 1)); };
  const auto floats = [](int i) { return _mm256_set1_ps(1.f + 1e-7f * i); };
  const struct {
    const char* name;
    double ns;
  } rows[] = {{"vpmaddubsw ymm", ns_per_op(chains_maddubs, bytes)},
              {"vpshufb ymm", ns_per_op(chains_shuffle, bytes)},
              {"vpaddw ymm", ns_per_op(chains_addw, bytes)},
              {"vfmadd231ps ymm", ns_per_op(chains_fma, floats)}};
  std::printf("| instruction | ns per instruction | per cycle | G per second |\n|---|---|---|---|\n");
  for (const auto& r : rows) std::printf("| %s | %.3f | %.2f | %.2f |\n", r.name, r.ns, 1.0 / (r.ns * ghz), 1.0 / r.ns);
  return 0;
}
