// The timing half of benchmarks/ab_kernel.sh: loads one kernel build per shared library (each exports
// ab_run(const Problem&)), runs them in turn on one random problem, round after round (odd rounds in
// reverse order), and reports each build's speed relative to the first, measured within the same round.
//   ab M K N BITS THREADS ROUNDS name=lib.so [name=lib.so ...]
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/linear_int8.h"

using bitops::cpu::Problem;

namespace {

struct Build {
  std::string name;
  void (*run)(const Problem&);
  std::vector<double> seconds, ratio;
};

double median(std::vector<double> v, double q = 0.5) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}

// 64-byte aligned, as at::empty gives the op its tensors.
template <typename T>
T* aligned(size_t count) {
  void* p = std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64);
  std::memset(p, 0, count * sizeof(T));
  return static_cast<T*>(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s M K N BITS THREADS ROUNDS name=lib.so...\n", argv[0]);
    return 2;
  }
  const int64_t m = std::atoll(argv[1]), k = std::atoll(argv[2]), n = std::atoll(argv[3]);
  const int bits = std::atoi(argv[4]);
  at::set_num_threads(std::atoi(argv[5]));
  const int rounds = std::atoi(argv[6]), warmup = 10;
  const int64_t kp = (k + 31) / 32 * 32, nw = (k * bits + 31) / 32;

  std::mt19937 gen(0);
  int8_t* x = aligned<int8_t>(m * kp);
  int32_t* xsum = aligned<int32_t>(m);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < k; ++c) xsum[i] += x[i * kp + c] = static_cast<int8_t>(gen());
  int32_t* w = aligned<int32_t>(n * nw);
  for (int64_t j = 0; j < n * nw; ++j) w[j] = static_cast<int32_t>(gen());
  if (bits == 2)  // ternary codes only (field 2 = -2 never occurs): clear the high bit of fields equal to 2
    for (int64_t j = 0; j < n * nw; ++j) {
      const uint32_t v = static_cast<uint32_t>(w[j]), is_two = (v & 0xAAAAAAAAu) & ~((v & 0x55555555u) << 1);
      w[j] = static_cast<int32_t>(v & ~is_two);
    }
  std::vector<float> x_scale(m, 0.01f), w_scale(n, 0.02f);

  std::vector<Build> builds;
  for (int a = 7; a < argc; ++a) {
    const std::string arg = argv[a];
    const size_t eq = arg.find('=');
    void* lib = dlopen(arg.substr(eq + 1).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      std::fprintf(stderr, "%s\n", dlerror());
      return 1;
    }
    auto run = reinterpret_cast<void (*)(const Problem&)>(dlsym(lib, "ab_run"));
    builds.push_back({arg.substr(0, eq), run, {}, {}});
  }

  // Every build writes the same output buffer: with one buffer each, two builds of the same source
  // differed by up to 3% (where each buffer's lines and pages fall); their results are compared after
  // the rounds.
  float* y = aligned<float>(m * n);
  // Odd rounds call the builds in reverse order: a build's speed depends on its place in the round (the
  // caches and the clock the one before leaves it), and a fixed order put that into the ratios: the
  // same build twice, in a fixed order, measured the second 1.1% slower, median of 300 rounds.
  for (int r = 0; r < warmup + rounds; ++r) {
    for (size_t i = 0; i < builds.size(); ++i) {
      Build& b = builds[r % 2 == 0 ? i : builds.size() - 1 - i];
      const Problem p{x, xsum, x_scale.data(), w, w_scale.data(), nullptr, y, m, n, k, kp, nw, 1, k, bits};
      const auto t0 = std::chrono::steady_clock::now();
      b.run(p);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r >= warmup) b.seconds.push_back(s);
    }
    if (r < warmup) continue;
    for (auto& b : builds) b.ratio.push_back(builds[0].seconds.back() / b.seconds.back());
  }
  const double macs = static_cast<double>(m) * k * n;
  std::vector<float> first(m * n);
  for (const auto& b : builds) {
    std::memset(y, 0xff, m * n * sizeof(float));  // nan: a build that leaves an output unwritten differs
    b.run(Problem{x, xsum, x_scale.data(), w, w_scale.data(), nullptr, y, m, n, k, kp, nw, 1, k, bits});
    if (&b == &builds[0]) std::memcpy(first.data(), y, m * n * sizeof(float));
    const bool same = std::memcmp(y, first.data(), m * n * sizeof(float)) == 0;
    std::printf("%-16s median %6.1f GMAC/s  best %6.1f  speed vs %s: %.3f [%.3f, %.3f]%s\n", b.name.c_str(),
                macs / median(b.seconds) / 1e9, macs / median(b.seconds, 0) / 1e9, builds[0].name.c_str(),
                median(b.ratio), median(b.ratio, 0.25), median(b.ratio, 0.75), same ? "" : "  OUTPUT DIFFERS");
  }
  return 0;
}
