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
