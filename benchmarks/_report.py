"""Shared by the benchmark scripts: pinning, and writing one result set as CSV + markdown."""
from __future__ import annotations

import csv
import os

import torch

ALL_CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin_threads(n: int) -> None:
    """n torch threads on the last n cores (core 0 takes most of the system's interrupts)."""
    torch.set_num_threads(n)
    if ALL_CORES:
        os.sched_setaffinity(0, set(ALL_CORES[-n:]))


def write_results(out_dir: str, name: str, records: list[dict], table: str) -> list[str]:
    """Prints the markdown table and writes `name`.csv (one row per record) and `name`.md under out_dir."""
    print(table)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.csv"), os.path.join(out_dir, f"{name}.md")]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    with open(paths[1], "w") as f:
        f.write(table)
    return paths
