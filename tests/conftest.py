import contextlib

import pytest
import torch

import bitops


def cpu_isas():
    """The CPU kernel paths this machine can run: always 'portable', 'avx2' where supported."""
    return ["portable"] + (["avx2"] if bitops._ops._C.cpu_has_avx2() else [])


@contextlib.contextmanager
def cpu_isa(isa: str):
    bitops.set_cpu_isa(isa)
    try:
        yield
    finally:
        bitops.set_cpu_isa("auto")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch.set_num_threads(n) for the block (the kernels' at::parallel_for follows it), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=cpu_isas())
def isa(request):
    """Runs a test once per CPU kernel path."""
    with cpu_isa(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
