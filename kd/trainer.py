"""The training loop shared by teacher fine-tuning and distillation.

AdamW, linear warm-up then linear decay to 0, gradient-norm clipping, evaluation every N steps with
the task metrics, the best model kept, tqdm progress, a JSONL log of every evaluation, fixed seeds,
CPU or CUDA, and data parallel over processes started by ``torchrun`` (DDP: gloo on CPU, NCCL on
CUDA; each process takes an equal share of every global batch).

Resumable: ``checkpoint.pt`` (model, optimizer, schedule, step, RNG state, best score) is written
atomically with a sha256 trailer (:mod:`kd.checkpoint`) every ``save_every`` steps and checked when read; ``resume=True``
continues from it. The data order of each epoch comes from a generator seeded by (seed, epoch) and
the dropout RNG state is restored, so a resumed run ends with bit-identical weights to an
uninterrupted one (same machine, same thread count).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import metrics as M
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Encoded

CHECKPOINT = "checkpoint.pt"
BEST = "best_model.pt"
EVAL_LOG = "eval_log.jsonl"


@dataclass
class TrainConfig:
    """Budget and optimizer. ``epochs`` may be fractional; ``max_steps`` > 0 overrides it.
    ``warmup``: fraction of the total steps. ``eval_every``/``save_every`` 0: once per epoch."""

    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 0
    save_every: int = 0
    seed: int = 42
    device: str = "auto"
    progress: bool = True
    skip_nonfinite: bool = False  # a nan/inf loss or gradient skips the update instead of stopping the run

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"epochs={self.epochs}, max_steps={self.max_steps}; expected epochs > 0 or max_steps > 0")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup={self.warmup}; expected a fraction of the steps in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}; expected > 0")


def resolve_device(device: str) -> torch.device:
    """"auto": CUDA when available, else CPU. Under torchrun each process takes GPU LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def dist_setup(device: torch.device):
    """(rank, world size); joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _nonfinite_gradient(model: nn.Module, loss: torch.Tensor) -> Optional[str]:
    """None if every gradient is finite; else which loss value and which module's parameter failed."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or bool(torch.isfinite(nn.utils.get_total_norm(grads))):
        return None
    for name, p in model.named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            module = name.rsplit(".", 1)[0]
            return f"non-finite gradient in module {module!r} (parameter {name}), loss {float(loss.detach())}"
    return f"non-finite gradient norm, loss {float(loss.detach())}"


def set_seed(seed: int) -> None:
    """Seed torch's CPU and CUDA generators."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _to(batch: Dict[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: nn.Module, enc: Encoded, batch_size: int = 64, device=None) -> torch.Tensor:
    """(N, C) float32 logits of ``model`` (eval mode) over ``enc``, in ``enc``'s order.

    Batches are formed in order of length so that little padding is computed."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    out = []
    for start in range(0, len(enc), batch_size):
        b = _to(enc.batch(order[start:start + batch_size]), device)
        out.append(model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]).logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(out)
    result = torch.empty_like(logits)
    result[torch.tensor(order)] = logits
    return result


def evaluate(model: nn.Module, enc: Encoded, task_type: str, batch_size: int = 64) -> Dict[str, float]:
    """Metrics of ``model`` on ``enc`` (:func:`kd.metrics.compute`: accuracy, f1, mcc, or pearson, spearman)."""
    return M.compute(task_type, predict_logits(model, enc, batch_size), enc.labels)


def _schedule(total: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    return factor


def train(
    model: nn.Module,
    train_enc: Encoded,
    dev_enc: Encoded,
    loss_fn: Callable[[nn.Module, Dict[str, torch.Tensor]], Dict[str, torch.Tensor]],
    cfg: TrainConfig,
    out_dir: str,
    task_type: str,
    metric: Optional[str] = None,
    resume: bool = False,
    on_step: Optional[Callable[[int], None]] = None,
    desc: str = "train",
) -> Dict:
    """Train ``model`` in place; ``loss_fn(model, batch)`` returns {"loss": scalar, ...}.

    Writes ``out_dir``/{checkpoint.pt, best_model.pt, eval_log.jsonl}. On return the model holds the
    best weights by dev ``metric`` (default: accuracy, or Pearson for regression). Returns
    {"best": {step, metrics}, "final_state": state_dict at the last step, "losses": per-step losses}.
    ``on_step(step)`` is called after each optimizer step (progress hooks; tests use it to interrupt).
    """
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    if resume and not os.path.exists(ckpt_path):  # before any work: nothing to continue from
        raise FileNotFoundError(f"resume=True but {ckpt_path} does not exist; expected a checkpoint from an earlier run in {out_dir}")
    metric = metric or M.default_metric(task_type)
    allowed = M.REGRESSION_METRICS if task_type == "regression" else M.CLASSIFICATION_METRICS
    if metric not in allowed:
        raise ValueError(f"metric={metric!r}; expected one of {allowed} for a {task_type} task")
    device = resolve_device(cfg.device)
    rank, world = dist_setup(device)
    main = rank == 0
    os.makedirs(out_dir, exist_ok=True)
    set_seed(cfg.seed)
    model.to(device)
    model.train()

    n = len(train_enc)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, int(round(cfg.epochs * steps_per_epoch)))
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or eval_every

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "LayerNorm" in name else decay).append(p)
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _schedule(total, int(cfg.warmup * total)))

    step, best = 0, {"step": None, "metrics": None, "score": -math.inf}
    if resume:
        ck = load_checkpoint(ckpt_path)
        if ck["total_steps"] != total or ck["config"]["seed"] != cfg.seed or ck["config"]["batch_size"] != cfg.batch_size:
            raise ValueError(
                f"{ckpt_path} was written by a run with {ck['total_steps']} steps, seed {ck['config']['seed']}, "
                f"batch {ck['config']['batch_size']}; this run has {total}, {cfg.seed}, {cfg.batch_size}: expected the same schedule"
            )
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        step, best = ck["step"], ck["best"]
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def write_checkpoint():
        if main:
            save_checkpoint(
                {
                    "model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
                    "step": step, "best": best, "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "total_steps": total, "config": asdict(cfg),
                },
                ckpt_path,
            )

    def run_eval(train_loss: float):
        nonlocal best
        if main:
            scores = evaluate(model, dev_enc, task_type, cfg.eval_batch_size)
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": train_loss, **scores, "time": time.time()}
            with open(os.path.join(out_dir, EVAL_LOG), "a") as f:
                f.write(json.dumps(record) + "\n")
            if scores[metric] > best["score"]:
                best = {"step": step, "metrics": scores, "score": scores[metric]}
                save_checkpoint(model.state_dict(), os.path.join(out_dir, BEST))
            bar.write(f"[{desc}] step {step}/{total}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if world > 1:
            dist.barrier()

    losses: List[float] = []
    skipped: List[int] = []
    window: List[float] = []
    bar = tqdm(total=total, initial=step, desc=desc, disable=not (main and cfg.progress), mininterval=2, dynamic_ncols=True)
    while step < total:
        epoch = step // steps_per_epoch
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        for b in range(step % steps_per_epoch, steps_per_epoch):
            if step >= total:
                break
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            mine = idx[rank::world]
            batch = _to(train_enc.batch(mine), device)
            out = loss_fn(net, batch)
            optim.zero_grad(set_to_none=True)
            out["loss"].backward()
            # After backward the gradients are the all-reduced ones under DDP, so every process
            # takes the same decision; a nan/inf loss shows up here as nan gradients too.
            bad = _nonfinite_gradient(model, out["loss"])
            if bad is not None and not cfg.skip_nonfinite:
                raise FloatingPointError(
                    f"step {step + 1}: {bad}; the update was not applied and no checkpoint was written after "
                    f"step {step} (resume with --resume from the last checkpoint, or pass --skip-nonfinite)"
                )
            if bad is not None:
                optim.zero_grad(set_to_none=True)  # skip this update; the schedule still advances
                skipped.append(step + 1)
                bar.write(f"[{desc}] step {step + 1}: {bad}; update skipped")
            elif cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optim.step()
            sched.step()
            step += 1
            loss = float(out["loss"].detach())
            losses.append(loss)
            window.append(loss)
            bar.update(1)
            bar.set_postfix({k: f"{float(v.detach()):.4f}" for k, v in out.items()}, refresh=False)
            if step % eval_every == 0 or step == total:
                run_eval(sum(window) / len(window))
                window = []
            if step % save_every == 0 or step == total:
                write_checkpoint()
            if on_step is not None:
                on_step(step)
    bar.close()
    final_state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    if world > 1:
        # every process loads the best weights rank 0 wrote
        dist.barrier()
        obj = [best]
        dist.broadcast_object_list(obj, src=0)
        best = obj[0]
    best_path = os.path.join(out_dir, BEST)
    if os.path.exists(best_path):
        model.load_state_dict(load_checkpoint(best_path, map_location=device))
    return {"best": {"step": best["step"], "metrics": best["metrics"]}, "final_state": final_state, "losses": losses,
            "skipped_steps": skipped}
