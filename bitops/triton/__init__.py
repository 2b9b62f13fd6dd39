"""Triton backend of the ``bitops`` ops on CUDA devices.

* :mod:`bitops.triton.kernels`: the ``@triton.jit`` kernels (pack, unpack, packed GEMM for int8 and
  float activations, grad_input). Weights stay packed in memory; tiles are decoded in registers.
* :mod:`bitops.triton.ops`: the Python wrappers, same signatures and checks as ``torch.ops.bitops.*``.

Which kernels a CUDA tensor runs (the backend rule)
---------------------------------------------------
``import bitops`` (through this module) calls :func:`register`, which registers the Triton wrappers as the ``CUDA`` kernels
of the ``bitops`` ops, op by op, according to the environment variable ``BITOPS_CUDA_BACKEND``: a
default, optionally followed by per-op choices, comma-separated (``"auto"``, ``"triton"``,
``"cuda,packed_linear_float=triton"``, ``"packed_linear_int8=triton"``). A backend is one of

* ``"cuda"``: the C++ CUDA kernels (``csrc/cuda``, registered by ``TORCH_LIBRARY_IMPL(bitops,
  CUDA)`` when the extension is built against a CUDA torch with nvcc);
* ``"triton"``: the Triton wrappers, which then replace the C++ CUDA kernel of that op;
* ``"auto"`` (the default): ``"cuda"`` for :data:`AUTO_CUDA_OPS` (pack, unpack and the int8 GEMM,
  whose C++ kernels use int8 tensor cores and dp4a), ``"triton"`` for the float-activation ops (the
  C++ float kernels run on CUDA cores, the Triton ones on tensor cores).

An op asked for ``"cuda"`` runs Triton anyway when the extension has no C++ CUDA kernel for it
(e.g. built against a CPU-only torch, or without nvcc). The variable is read once, at ``import
bitops``; :func:`backends` reports the outcome per op. Both implementations stay callable directly
whatever the rule says: ``bitops.triton.ops.<op>`` is always Triton, ``torch.ops.bitops_cuda.<op>``
always the C++ CUDA kernel (present when it was built). Registering does not import Triton: the
kernels are compiled on the first call of an op on a CUDA tensor, so ``import bitops`` stays fast
and works where Triton is absent (then CUDA calls report that).
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
CHOICES = ("auto", "cuda", "triton")
# Under "auto", these ops keep their C++ CUDA kernels; the others run Triton (see the docstring).
AUTO_CUDA_OPS = ("pack_bits", "unpack_bits", "packed_linear_int8")

_lib = None
_chosen: Dict[str, str] = {}


def has_cuda_kernel(op: str) -> bool:
    """Whether ``bitops::<op>`` has a CUDA kernel registered (by C++ or by :func:`register`)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"bitops::{op}", "CUDA")


def cpp_cuda_built() -> bool:
    """Whether the extension has the C++ CUDA kernels (``torch.ops.bitops_cuda.<op>`` exists)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("bitops_cuda::packed_linear_int8", "CUDA")
    except RuntimeError:  # the bitops_cuda namespace is defined only by a CUDA build
        return False


def _fail(raw: str, why: str):
    raise ValueError(f"{ENV}={raw!r} is not a backend rule: {why}; expected a backend ({', '.join(map(repr, CHOICES))}) "
                     f"optionally followed by op=backend items, e.g. 'cuda,packed_linear_float=triton'")


def requested_backends() -> Dict[str, str]:
    """op name -> "cuda" or "triton" as BITOPS_CUDA_BACKEND asks (before C++ availability is applied)."""
    raw = os.environ.get(ENV, "")
    default, per_op = "auto", {}
    for i, item in enumerate(p.strip().lower() for p in raw.split(",")):
        if not item:
            continue
        op, _, backend = (part.strip() for part in item.rpartition("="))
        if backend not in CHOICES:
            _fail(raw, f"{backend!r} is not a backend")
        if not op:
            if i != 0:
                _fail(raw, f"the default {backend!r} must come first")
            default = backend
        elif op not in OP_NAMES:
            _fail(raw, f"{op!r} is not an op with CUDA kernels ({', '.join(OP_NAMES)})")
        else:
            per_op[op] = backend
    out = {}
    for op in OP_NAMES:
        want = per_op.get(op, default)
        out[op] = ("cuda" if op in AUTO_CUDA_OPS else "triton") if want == "auto" else want
    return out


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
    want = requested_backends()
    lib = torch.library.Library("bitops", "IMPL")
    for op in OP_NAMES:
        if want[op] == "triton" or not has_cuda_kernel(op):
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
