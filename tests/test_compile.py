"""torch.compile traces the packed layers end to end: the fake implementations are complete and
our ops cause no graph break."""
import torch

import bitops


def test_compile_fullgraph_frozen_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 16))
    bitops.quantize_(model, bitops.BinaryConfig(act_bits=8, freeze=True), filter_fn=lambda m, n: n == "0")
    bitops.quantize_(model, bitops.TernaryConfig(act_bits=None, freeze=True))
    x = torch.randn(5, 64)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    # Same kernels and integer codes; inductor may fuse the float ops around them differently.
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


class _QKV(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (bitops.BinaryLinear(32, 24).freeze() for _ in range(3))

    def forward(self, x):
        return self.query(x) * self.key(x) + self.value(x)


def test_compile_fullgraph_grouped_qkv():
    # Under torch.compile each grouped layer runs on its own (the group's caches are Python state).
    torch.manual_seed(0)
    model = _QKV()
    assert bitops.fuse_qkv_(model) == 1
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
