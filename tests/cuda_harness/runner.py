"""Build the host harness (driver.cpp + cuda_host.h + csrc/cuda kernels) with g++ and call it.

The shared library is cached under ``build/cuda_harness/<hash>/``, keyed by the sources and the
compiler command, so a second ``make test`` does not recompile. The ``run_*`` functions take and
return numpy arrays and are meant to run in a worker process (tests/test_cuda_harness.py uses a
spawned process pool): a kernel that trips a harness check aborts, and one that deadlocks on a
barrier hangs, and either must fail a test rather than kill or stall pytest.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CXX = os.environ.get("CXX", "g++")
# -O1: the harness runs tiny grids, so compile time matters more than speed (about 5 s).
# -ffp-contract=off: the int8 epilogue must round like the reference (no FMA).
FLAGS = ["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror"]


def sources():
    return [os.path.join(HERE, "driver.cpp"), os.path.join(HERE, "cuda_host.h")] + sorted(
        glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")))


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def library_path() -> str:
    """Path of the built harness library; compiles it first if the cache has no build of these sources."""
    h = hashlib.sha256(" ".join([CXX] + FLAGS).encode())
    for p in sources():
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    out_dir = os.path.join(ROOT, "build", "cuda_harness", h.hexdigest()[:16])
    lib = os.path.join(out_dir, "libharness.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [CXX, *FLAGS, "-I" + os.path.join(ROOT, "csrc"), os.path.join(HERE, "driver.cpp"), "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building the CUDA host harness failed:\n{' '.join(cmd)}\n{res.stderr}")
    os.replace(tmp, lib)  # atomic: a concurrent build never sees a half-written library
    return lib


@functools.lru_cache(maxsize=None)
def _lib(path: str):
    lib = ctypes.CDLL(path)
    lib.h_pack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.h_unpack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    lib.h_linear_int8.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 5
    lib.h_linear_float.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 5
    return lib


def _p(a):
    return None if a is None else a.ctypes.data


def _c(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def run_pack(path, codes, bits):
    """codes int8 (rows, k) -> (packed int32 (rows, words), bad int32 (2,))."""
    codes = _c(codes, np.int8)
    rows, k = codes.shape
    out = np.zeros((rows, -(-k // (32 // bits))), np.int32)
    bad = np.zeros(2, np.int32)
    _lib(path).h_pack(_p(codes), _p(out), rows, k, bits, _p(bad))
    return out, bad


def run_unpack(path, packed, bits, k):
    packed = _c(packed, np.int32)
    out = np.zeros((packed.shape[0], k), np.int8)
    _lib(path).h_unpack(_p(packed), _p(out), packed.shape[0], k, bits)
    return out


def run_linear_int8(path, kernel, x, x_scale, w, w_scale, bias, bits, k, group_size):
    """kernel "gemv" or "mma"; x int8 (M, K) is copied into the zero-padded (M, lda) layout the kernels read."""
    m = x.shape[0]
    lda = -(-k // 16) * 16
    xp = np.zeros((m, lda), np.int8)
    xp[:, :k] = x
    w, w_scale, x_scale, bias = _c(w, np.int32), _c(w_scale, np.float32), _c(x_scale, np.float32), _c(bias, np.float32)
    y = np.full((m, w.shape[0]), np.nan, np.float32)
    _lib(path).h_linear_int8({"gemv": 0, "mma": 1}[kernel], _p(xp), lda, _p(x_scale), _p(w), _p(w_scale), _p(bias),
                             _p(y), m, w.shape[0], k, group_size, bits)
    return y


def run_linear_float(path, dtype, grad, a, w, w_scale, bias, bits, k, group_size):
    """dtype "float32" / "float16" / "bfloat16"; a holds that dtype's bit patterns (float32, float16 or
    uint16 for bf16). Returns the output in the same representation."""
    code = {"float32": 0, "float16": 1, "bfloat16": 2}[dtype]
    a = np.ascontiguousarray(a)
    n = w.shape[0]
    m = a.shape[0]
    w, w_scale, bias = _c(w, np.int32), _c(w_scale, np.float32), _c(bias, np.float32)
    out = np.zeros((m, k if grad else n), a.dtype)
    _lib(path).h_linear_float(code, int(grad), _p(a), _p(w), _p(w_scale), _p(bias), _p(out), m, n, k, group_size, bits)
    return out
