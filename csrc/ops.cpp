// The bitops op namespace, with the schemas of csrc/schemas.h. Devices register kernels for them
// (csrc/cpu/*.cpp for CPU; csrc/cuda/ops_cuda.cpp and bitops/triton for CUDA); the fake (meta)
// implementations used by torch.compile live in bitops/_ops.py, the pure-torch reference in
// bitops/reference.py. Layouts of the packed tensors: bitops/formats.py.
#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/linear_int8.h"
#include "schemas.h"

TORCH_LIBRARY(bitops, m) {
  for (const char* schema : bitops::kSchemas) m.def(schema);
}

// Python-side knobs of the CPU backend, not ops: which instruction set the CPU kernels use. Tests
// pin each path in turn; users leave it on "auto" (AVX2 where the CPU has it).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.def("set_cpu_isa", &bitops::cpu::set_isa, "Select the CPU kernels: 'auto', 'avx2' or 'portable'.");
  m.def("cpu_isa", &bitops::cpu::active_isa, "The CPU kernel path in use now: 'avx2' or 'portable'.");
  m.def("cpu_has_avx2", &bitops::cpu::cpu_has_avx2, "Whether this CPU supports AVX2.");
  m.def("int8_kernel_path", &bitops::cpu::int8_kernel_path, "m"_a, "bits"_a, "groups"_a, "group_size"_a,
        "The CPU kernel packed_linear_int8 runs for such a call now: 'gemv', 'lut', 'bytes' or 'portable'.");
  m.def("parallel_threads_used", &bitops::cpu::parallel_threads_used, "work"_a,
        "Threads the CPU kernels' at::parallel_for runs on over `work` items now (follows torch.set_num_threads).");
}
