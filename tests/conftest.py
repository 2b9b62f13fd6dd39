import contextlib
import threading

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


def run_in_threads(worker, n: int) -> None:
    """worker(t) for t in range(n), each in its own Python thread at once; re-raises the first
    exception any of them hit (a thread's exception would otherwise vanish)."""
    errors = []

    def guarded(t):
        try:
            worker(t)
        except BaseException as e:  # noqa: BLE001  (surfaced below)
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(params=cpu_isas())
def isa(request):
    """Runs a test once per CPU kernel path."""
    with cpu_isa(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
