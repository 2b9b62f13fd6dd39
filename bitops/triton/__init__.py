"""Triton backend of the ``bitops`` ops on CUDA devices.

* :mod:`bitops.triton.kernels`: the ``@triton.jit`` kernels (pack, unpack, packed GEMM for int8 and
  float activations, grad_input). Weights stay packed in memory; tiles are decoded in registers.
* :mod:`bitops.triton.ops`: the Python wrappers, same signatures and checks as ``torch.ops.bitops.*``.

Which kernels a CUDA tensor runs (the backend rule)
---------------------------------------------------
``import bitops`` (through this module) calls :func:`register`, which registers the Triton wrappers as the ``CUDA`` kernels
of the ``bitops`` ops, op by op, according to the environment variable ``BITOPS_CUDA_BACKEND``:

* ``"cuda"``: keep the C++ CUDA kernels (``csrc/cuda``, registered by ``TORCH_LIBRARY_IMPL(bitops,
  CUDA)`` when the extension is built against a CUDA torch); Triton only fills in ops that have no
  C++ CUDA kernel. This is the default when the extension has C++ CUDA kernels.
* ``"triton"``: the Triton wrappers replace the C++ CUDA kernels of every op. This is the default
  when the extension has no C++ CUDA kernels (e.g. built against a CPU-only torch, or without nvcc).

The variable is read once, at ``import bitops``; :func:`backends` reports the choice per op. Both
implementations stay callable directly: ``bitops.triton.ops.<op>`` is always Triton. Registering
does not import Triton: the kernels are compiled on the first call of an op on a CUDA tensor, so
``import bitops`` stays fast and works where Triton is absent (then CUDA calls report that).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from typing import Dict

import torch

OP_NAMES = ("pack_bits", "unpack_bits", "packed_linear_int8", "packed_linear_float", "packed_linear_grad_input")
ENV = "BITOPS_CUDA_BACKEND"
CHOICES = ("cuda", "triton")

_lib = None
_chosen: Dict[str, str] = {}


def has_cuda_kernel(op: str) -> bool:
    """Whether ``bitops::<op>`` has a CUDA kernel registered (by C++ or by :func:`register`)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"bitops::{op}", "CUDA")


def backend_choice() -> str:
    """The value of BITOPS_CUDA_BACKEND, or its default (see the module docstring)."""
    value = os.environ.get(ENV)
    if value is None or value == "":
        return "cuda" if any(has_cuda_kernel(op) for op in OP_NAMES) else "triton"
    value = value.strip().lower()
    if value not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a backend; expected one of {', '.join(map(repr, CHOICES))}")
    return value


def _lazy(op: str):
    def call(*args):
        from . import ops  # first CUDA call: imports Triton and builds the kernels

        return ops.OPS[op](*args)

    call.__name__ = f"triton_{op}"
    return call


def register() -> Dict[str, str]:
    """Register the Triton wrappers as CUDA kernels per the backend rule; returns :func:`backends`.

    Idempotent: a second call changes nothing."""
    global _lib
    if _lib is not None:
        return backends()
    choice = backend_choice()
    lib = torch.library.Library("bitops", "IMPL")
    for op in OP_NAMES:
        if choice == "triton" or not has_cuda_kernel(op):
            with warnings.catch_warnings():  # replacing a C++ CUDA kernel is what "triton" asks for
                warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel")
                lib.impl(op, _lazy(op), "CUDA")
            _chosen[op] = "triton"
        else:
            _chosen[op] = "cuda"
    _lib = lib
    return backends()


def backends() -> Dict[str, str]:
    """op name -> "triton" or "cuda": which kernel a CUDA tensor runs (empty before :func:`register`)."""
    return dict(_chosen)


@contextlib.contextmanager
def interpreter(enabled: bool = True):
    """Within the block, :mod:`bitops.triton.kernels` is built interpreted (``enabled``: kernels run on
    CPU tensors) or compiled; the previous mode and ``TRITON_INTERPRET`` are restored afterwards.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined, so switching means setting
    the variable and re-executing the kernels module. Tests use this to run the kernels on CPU
    without changing the environment seen by anything else."""
    from . import kernels

    def build(flag: bool):
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if flag else "0"
        try:
            if kernels.INTERPRETED != flag:
                importlib.reload(kernels)
                ops = sys.modules.get(__name__ + ".ops")
                if ops is not None:
                    ops._tuned.cache_clear()  # its launchers wrap the kernels of the previous mode
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
        assert kernels.INTERPRETED == flag

    before = kernels.INTERPRETED
    build(enabled)
    try:
        yield kernels
    finally:
        build(before)


register()
