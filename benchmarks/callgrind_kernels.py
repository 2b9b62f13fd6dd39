"""Instruction counts per kernel call under valgrind's callgrind: a figure that does not move with
the machine's load (wall-clock medians do), to compare kernel versions and paths across runs.

Runs one child python under `valgrind --tool=callgrind` that calls each kernel once at each shape,
with collection on only inside the kernels' C++ entry points and one profile dump after each call;
then reads the instruction total (Ir) of every dump. Slow (valgrind runs the whole torch import at
~50x), so not part of `make bench`: `make callgrind`.
Usage: python benchmarks/callgrind_kernels.py [--out-dir benchmarks/results]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

# (label, M, K, N, bits): the calls the child makes, in order.
CALLS = [
    ("W1A8 M=1 (gemv)", 1, 768, 3072, 1),
    ("W1A8 M=128 (lut)", 128, 768, 3072, 1),
    ("W2A8 M=128 (bytes)", 128, 768, 3072, 2),
    ("fbgemm int8 M=128", 128, 768, 3072, 0),
]
# C++ entry points: the bitops CPU op, and fbgemm's dynamic linear behind quantize_dynamic.
PATTERNS = ["*packed_linear_int8_cpu*", "*PackedLinearWeight::apply_dynamic_impl*"]

CHILD = r"""
import sys, torch, bitops
from bitops import reference as R
torch.set_num_threads(1)
for label, m, k, n, bits in CALLS:
    torch.manual_seed(0)
    if bits:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        codes = torch.randint(0, 2, (n, k), dtype=torch.int8) * 2 - 1
        w = R.pack_bits(codes, bits)
        xs, ws = torch.rand(m), torch.rand(n, 1)
        torch.ops.bitops.packed_linear_int8(x, xs, w, ws, None, bits, k, k)
    else:
        lin = torch.nn.Sequential(torch.nn.Linear(k, n))
        q = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            q(torch.randn(m, k))
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    tmp = tempfile.mkdtemp(prefix="bitops-callgrind-")
    child = os.path.join(tmp, "child.py")
    with open(child, "w") as f:
        f.write(f"CALLS = {CALLS!r}\n" + CHILD)
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
           *[f"--toggle-collect={p}" for p in PATTERNS], *[f"--dump-after={p}" for p in PATTERNS],
           f"--callgrind-out-file={tmp}/cg.out", sys.executable, child]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dumps = sorted(glob.glob(f"{tmp}/cg.out*"), key=lambda p: int(re.findall(r"\.(\d+)$", p)[0]) if re.findall(r"\.(\d+)$", p) else 0)
    totals = []
    for path in dumps:
        text = open(path).read()
        m = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
        if m and int(m.group(1)) > 0:
            totals.append(int(m.group(1)))
    if len(totals) != len(CALLS):
        sys.exit(f"expected {len(CALLS)} non-empty dumps, got {len(totals)}: {totals} (in {tmp})")
    lines = ["| call | M x K x N | instructions | MAC per instruction |", "|---|---|---|---|"]
    for (label, m, k, n, _), ir in zip(CALLS, totals):
        lines.append(f"| {label} | {m} x {k} x {n} | {ir:,} | {m * k * n / ir:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "callgrind.md"), "w") as f:
        f.write(table)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
