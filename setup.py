"""Builds bitops._C: the C++ CPU kernels always; the CUDA kernels too when torch is a CUDA build and
nvcc is found. Install with `pip install --no-build-isolation -e .` so the build uses the torch that
is already installed (build isolation would pull a different torch into the build environment)."""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# No -march=native and no -mavx2: AVX2 code is compiled per function with a target attribute and
# chosen at run time, so one build runs on any x86-64 CPU and builds on aarch64.
# -ffp-contract=off: the int8 GEMM's float epilogue must round exactly like the reference (no FMA).
cxx_flags = ["-O3", "-std=c++20", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]
cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
cuda_sources = sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
build_cuda = (
    torch.version.cuda is not None
    and CUDA_HOME is not None
    and shutil.which("nvcc") is not None
    and bool(cuda_sources)
    and os.environ.get("BITOPS_NO_CUDA", "0") != "1"
)

if build_cuda:
    ext = CUDAExtension(
        "bitops._C",
        cpp_sources + cuda_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]},
    )
else:
    ext = CppExtension(
        "bitops._C", cpp_sources, include_dirs=[os.path.join(ROOT, "csrc")], extra_compile_args=cxx_flags
    )

setup(
    name="bitbert",
    version="0.1.0",
    description="Really 1-bit BERT: packed 1/2-bit kernels and knowledge-distillation recipes",
    packages=find_packages(include=["bitops", "bitops.*", "kd", "kd.*"]),
    ext_modules=[ext],
    entry_points={"console_scripts": ["bitbert=kd.cli:main"]},
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    python_requires=">=3.10",
)
