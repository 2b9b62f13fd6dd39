"""Instruction counts per kernel call under valgrind's callgrind: a figure that does not move with
the machine's load (wall-clock medians do), to compare kernel versions and paths across runs.

Runs one child python under `valgrind --tool=callgrind` that calls packed_linear_int8 once per kernel
path (gemv, lut, bytes) and packed_gemv_int8 once (the lookup GEMV on the GEMV layout) at a BERT-base
FFN shape, with collection on only inside the ops' C++ entry points, then reads each path function's inclusive instruction count (Ir) with callgrind_annotate.
Slow (valgrind runs the whole torch import at ~50x): `make callgrind`, not part of `make bench`.
Usage: python benchmarks/callgrind_kernels.py [--out-dir benchmarks/results]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# (path function in csrc/cpu, M, K, N, bits): one call each, in one child process. packed_gemv_int8_cpu is
# packed_gemv_int8 (the weights converted to the GEMV layout first, outside the count).
CALLS = [
    ("gemv_avx2", 1, 768, 3072, 1),
    ("gemv_planes_avx2", 1, 768, 3072, 2),
    ("lut_gemm_avx2", 128, 768, 3072, 1),
    ("linear_bytes", 128, 768, 3072, 2),
    ("packed_gemv_int8_cpu", 1, 768, 3072, 1),
]

CHILD = r"""
import torch, bitops
from bitops import reference as R
torch.set_num_threads(1)
for fn, m, k, n, bits in CALLS:
    torch.manual_seed(0)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w = R.pack_bits(torch.randint(0, 2, (n, k), dtype=torch.int8) * 2 - 1, bits)
    if fn == "packed_gemv_int8_cpu":
        torch.ops.bitops.packed_gemv_int8(x, torch.rand(m), R.to_gemv_layout(w, k), torch.rand(n, 1), None, k)
    else:
        torch.ops.bitops.packed_linear_int8(x, torch.rand(m), w, torch.rand(n, 1), None, bits, k, k)
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    tmp = tempfile.mkdtemp(prefix="bitops-callgrind-")
    child, out = os.path.join(tmp, "child.py"), os.path.join(tmp, "cg.out")
    with open(child, "w") as f:
        f.write(f"CALLS = {CALLS!r}\n" + CHILD)
    # Collection toggles on entering and on leaving a function whose name matches, so the pattern must
    # match the entry points only: "*packed_*_int8_cpu*" also matched the lambdas defined inside them
    # ("packed_linear_int8_cpu(...)::{lambda(long, long)#3}::operator()(long, long) const"), and
    # entering one switched collection off for the work it runs (the 2-bit byte kernel's, for one).
    # The entry points' demangled names end in their last argument, "long)"; the lambdas' in "const".
    subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=*::packed_*_int8_cpu(*long)",
                    f"--callgrind-out-file={out}", sys.executable, child],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                               check=True, capture_output=True, text=True).stdout
    counts = {}
    for fn, *_ in CALLS:
        hits = [int(m.group(1).replace(",", "")) for line in annotated.splitlines()
                if f"::{fn}(" in line and (m := re.match(r"\s*([\d,]+) \(", line))]
        # Missing: the function was inlined into its caller.
        counts[fn] = max(hits) if hits else None
    lines = ["| path | M x K x N, bits | instructions | MAC per instruction |", "|---|---|---|---|"]
    for fn, m, k, n, bits in CALLS:
        c = counts[fn]
        lines.append(f"| {fn} | {m} x {k} x {n}, {bits} bit | " +
                     (f"{c:,} | {m * k * n / c:.2f} |" if c else "not collected | |"))
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "callgrind.md"), "w") as f:
        f.write(table)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
