"""A nan/inf in the gradients stops training with the step and the module (or, with skip_nonfinite,
skips that update); no checkpoint written after the bad step holds non-finite weights."""
import os

import pytest
import torch

from kd import trainer
from kd.checkpoint import load_checkpoint
from kd.data import Encoded
from kd.models import load_classifier

from kd_helpers import mr_subset, one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)


def run(tmp_path, out, skip, poison_step=3):
    base = save_tiny_base(str(tmp_path / "base"), layers=1)
    data = mr_subset(48, 8)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tr, dev = Encoded(data.train, tok, 16, "classification"), Encoded(data.dev, tok, 16, "classification")
    cfg = trainer.TrainConfig(epochs=1, batch_size=8, eval_every=2, save_every=1, progress=False, skip_nonfinite=skip)
    torch.manual_seed(0)
    model = load_classifier(base, 2, "classification")
    calls = {"n": 0}

    def poison(grad):  # the classifier's weight gets a nan gradient at one step
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == poison_step else grad

    model.classifier.weight.register_hook(poison)

    def loss_fn(net, b):
        logits = net(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]).logits
        return {"loss": torch.nn.functional.cross_entropy(logits, b["labels"])}

    return trainer.train(model, tr, dev, loss_fn, cfg, str(tmp_path / out), "classification")


def test_nonfinite_gradient_stops_with_step_and_module(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 3: non-finite gradient in module 'classifier' \(parameter classifier.weight\)"):
        run(tmp_path, "stop", skip=False)
    ck = load_checkpoint(os.path.join(tmp_path, "stop", trainer.CHECKPOINT))
    assert ck["step"] == 2  # the last checkpoint is the one before the bad step
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_nonfinite_gradient_skipped_by_flag(tmp_path):
    res = run(tmp_path, "skip", skip=True)
    assert res["skipped_steps"] == [3]
    assert len(res["losses"]) == 6
    state = res["final_state"]
    assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
