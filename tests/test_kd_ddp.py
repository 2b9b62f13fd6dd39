"""Data-parallel training through torchrun: 2 gloo processes on CPU end with the same weights, and
those match a single process on the same global batches (each process takes half of each batch)."""
import os
import subprocess
import sys

import torch

from kd_helpers import one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd_ddp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_processes_match_one_process(tmp_path):
    base = save_tiny_base(str(tmp_path / "base"), layers=2, dropout=0.0)  # no dropout: the runs are comparable
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, base, str(ddp)], tmp_path)
    _run([sys.executable, WORKER, base, str(single)], tmp_path)
    r0, r1 = (torch.load(ddp / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    one = torch.load(single / "rank0.pt", weights_only=False)
    assert r0["world"] == 2 and r1["world"] == 2 and one["world"] == 1
    for k, v in r0["final"].items():
        assert torch.equal(v, r1["final"][k]), k  # DDP keeps the replicas identical
        torch.testing.assert_close(v, one["final"][k], rtol=1e-3, atol=1e-4, msg=k)
    assert os.path.exists(ddp / "run" / "checkpoint.pt") and os.path.exists(ddp / "run" / "eval_log.jsonl")
