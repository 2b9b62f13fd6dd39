"""Interruption: `bitbert distill` in a subprocess is killed with SIGKILL at random moments (inside a
training step or inside a checkpoint write: with a checkpoint after every step, both happen), resumed
with --resume each time, and must end with the same final weights, bit for bit, and the same exported
tensors as an uninterrupted run. After every kill, the checkpoint on disk must load whole."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import torch

from kd import cli
from kd.checkpoint import load_checkpoint
from kd.trainer import CHECKPOINT

from kd_helpers import mr_subset, one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_task(tmp_path):
    data = mr_subset(48, 16)
    files = []
    for name, part in (("train", data.train), ("dev", data.dev)):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for e in part:
                f.write(json.dumps({"sentence": e.text, "y": ["neg", "pos"][e.label]}) + "\n")
        files.append(str(path))
    return ["--train-file", files[0], "--dev-file", files[1], "--text-column", "sentence", "--label-column", "y",
            "--batch-size", "8", "--max-length", "24", "--no-progress"]


def distill_cmd(teacher, out, task, resume):
    return [sys.executable, "-m", "kd.cli", "distill", "--pipeline", "xtc", "--teacher", teacher, "--out", out,
            "--student-layers", "1", "--fp32-epochs", "1", "--quant-epochs", "2", "--save-every", "1", "--eval-every", "3",
            *task, *(["--resume"] if resume else [])]


def run_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("BITOPS_FUZZ_EXAMPLES", None)
    return env


def checkpoints(out):
    return [os.path.join(out, stage, "train", CHECKPOINT) for stage in ("fp32-student", "1bit-student")]


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    base = save_tiny_base(str(tmp_path / "base"), layers=2)
    task = write_task(tmp_path)
    teacher = str(tmp_path / "teacher")
    assert cli.main(["teacher", "--base", base, "--out", teacher, "--epochs", "1", "--lr", "1e-3", *task]) == 0

    ref = str(tmp_path / "ref")
    start = time.monotonic()
    subprocess.run(distill_cmd(teacher, ref, task, False), check=True, env=run_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    full_time = time.monotonic() - start

    cut = str(tmp_path / "cut")
    rng = random.Random(20261127)
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen(distill_cmd(teacher, cut, task, attempt > 0), env=run_env(), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Past the interpreter start-up (a third of a run) and before the end.
        time.sleep(rng.uniform(0.35, 0.9) * full_time)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for path in checkpoints(cut):  # whatever the kill interrupted, the file on disk is whole
            if os.path.exists(path):
                load_checkpoint(path)  # checksum verified: whole, not just parseable
    assert kills >= 1, "every run finished before its kill: the test did not interrupt anything"
    subprocess.run(distill_cmd(teacher, cut, task, True), check=True, env=run_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    for want_path, got_path in zip(checkpoints(ref), checkpoints(cut)):
        want = load_checkpoint(want_path)
        got = load_checkpoint(got_path)
        assert got["step"] == want["step"] == want["total_steps"]
        assert want["model"].keys() == got["model"].keys()
        for k, v in want["model"].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, got["model"][k]), k
    # The exports too, byte for byte (their recorded sha256 identifies the weights).
    want, got = (open(os.path.join(d, "export", "model.safetensors"), "rb").read() for d in (ref, cut))
    assert want == got
