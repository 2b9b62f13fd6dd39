"""Damaged files are refused at load with a clear error, never loaded into wrong outputs.

A table of faults (truncations, flipped bytes in the header, the data and the trailer, swapped
tensors, appended bytes, a different file) is applied to a real training checkpoint, a best-model
file and an exported packed model; each case must raise the loader's own error naming the file.
"""
import io
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from kd import checkpoint, export, trainer
from kd.data import Encoded
from kd.models import QuantSpec, load_classifier, quantize_student

from kd_helpers import mr_subset, one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A 2-step training run (checkpoint.pt, best_model.pt) and an export of a 1-bit student."""
    root = tmp_path_factory.mktemp("corruption")
    base = save_tiny_base(str(root / "base"), layers=1)
    tok = AutoTokenizer.from_pretrained(base)
    data = mr_subset(16, 8)
    tr, dev = (Encoded(d, tok, 16, "classification") for d in (data.train, data.dev))
    cfg = trainer.TrainConfig(epochs=1, batch_size=8, eval_every=1, save_every=1, progress=False)
    model = load_classifier(base, 2, "classification")

    def loss_fn(net, b):
        logits = net(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]).logits
        return {"loss": torch.nn.functional.cross_entropy(logits, b["labels"])}

    train_dir = str(root / "train")
    trainer.train(model, tr, dev, loss_fn, cfg, train_dir, "classification")
    student = quantize_student(load_classifier(base, 2, "classification"), QuantSpec(pooler=1))
    exp = export.export_student(student, QuantSpec(pooler=1), tok, str(root / "export"), data.info(), [0])
    return {"train_dir": train_dir, "export": exp, "model": model, "tr": tr, "dev": dev, "loss_fn": loss_fn, "cfg": cfg}


def flip(path, where):
    size = os.path.getsize(path)
    pos = {"start": 0, "middle": size // 2, "end": size - 1}.get(where, where)
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def truncate(path, how):
    size = os.path.getsize(path)
    os.truncate(path, {"empty": 0, "half": size // 2, "last byte": size - 1}[how])


def swap_checkpoint_tensors(path):
    """Swap two same-shape tensors inside the payload and keep the old trailer (a silent edit)."""
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rindex(checkpoint.TRAILER)
    obj = torch.load(io.BytesIO(data[:cut]), weights_only=False)
    sd = obj["model"] if "model" in obj else obj
    a, b = _same_shape_pair(sd)
    sd[a], sd[b] = sd[b], sd[a]
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue() + data[cut:])


def swap_safetensors(path):
    t = load_file(path)
    a, b = _same_shape_pair(t)
    t[a], t[b] = t[b], t[a]
    save_file(t, path)


def _same_shape_pair(sd):
    keys = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.numel() > 1]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if sd[a].shape == sd[b].shape and sd[a].dtype == sd[b].dtype and not torch.equal(sd[a], sd[b]):
                return a, b
    raise AssertionError("no two distinct tensors of the same shape")


def append(path):
    with open(path, "ab") as f:
        f.write(b"\x00garbage")


FAULTS = {
    "truncated to 0 bytes": lambda p: truncate(p, "empty"),
    "truncated to half": lambda p: truncate(p, "half"),
    "last byte cut": lambda p: truncate(p, "last byte"),
    "first byte flipped": lambda p: flip(p, "start"),
    "byte flipped in the data": lambda p: flip(p, "middle"),
    "last byte flipped": lambda p: flip(p, "end"),
    "bytes appended": append,
}
CHECKPOINT_FAULTS = {**FAULTS, "two tensors swapped": swap_checkpoint_tensors}
EXPORT_FAULTS = {**FAULTS, "two tensors swapped": swap_safetensors}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
@pytest.mark.parametrize("name", [trainer.CHECKPOINT, trainer.BEST])
def test_damaged_checkpoint_is_refused(artifacts, tmp_path, name, fault):
    path = str(tmp_path / name)
    shutil.copy(os.path.join(artifacts["train_dir"], name), path)
    checkpoint.load_checkpoint(path)  # the undamaged copy loads
    CHECKPOINT_FAULTS[fault](path)
    with pytest.raises(checkpoint.CheckpointError, match=rf"{path}: .*(does not match|no bitbert checksum trailer)"):
        checkpoint.load_checkpoint(path)


def test_resume_from_a_damaged_checkpoint_stops_before_loading(artifacts, tmp_path):
    run = str(tmp_path / "train")
    shutil.copytree(artifacts["train_dir"], run)
    flip(os.path.join(run, trainer.CHECKPOINT), "middle")
    model = artifacts["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(checkpoint.CheckpointError, match="the file is corrupted"):
        trainer.train(model, artifacts["tr"], artifacts["dev"], artifacts["loss_fn"], artifacts["cfg"], run, "classification", resume=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


@pytest.mark.parametrize("fault", list(EXPORT_FAULTS))
def test_damaged_export_weights_are_refused(artifacts, tmp_path, fault):
    dst = str(tmp_path / "export")
    shutil.copytree(artifacts["export"], dst)
    weights = os.path.join(dst, export.WEIGHTS_FILE)
    EXPORT_FAULTS[fault](weights)
    with pytest.raises(export.ExportError, match=rf"{weights}: .*(bytes; expected|the file is corrupted)"):
        export.load_exported(dst)


def _edit_manifest(dst, edit):
    path = os.path.join(dst, export.CONFIG_FILE)
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


def _first_packed(meta):
    return next(s for s in meta["packed_modules"].values() if "in_features" in s)  # the first packed Linear


MANIFEST_FAULTS = {
    "not JSON": (lambda dst: open(os.path.join(dst, export.CONFIG_FILE), "w").write("{\"format\": "), "not valid JSON"),
    "wrong format name": (lambda dst: _edit_manifest(dst, lambda m: m.update(format="gguf")), "format 'gguf'; expected"),
    "newer format version": (lambda dst: _edit_manifest(dst, lambda m: m.update(format_version=99)), "format_version 99"),
    "packed shape edited": (lambda dst: _edit_manifest(dst, lambda m: _first_packed(m).update(in_features=_first_packed(m)["in_features"] + 32)),
                            "does not match the manifest"),
    "packing format edited": (lambda dst: _edit_manifest(dst, lambda m: _first_packed(m).update(format="int4")), "has format 'int4'"),
    "layer count edited": (lambda dst: _edit_manifest(dst, lambda m: m["bert_config"].update(num_hidden_layers=2)), "does not match the manifest|tensors missing"),
    "weights file missing": (lambda dst: os.unlink(os.path.join(dst, export.WEIGHTS_FILE)), "no such file"),
}


@pytest.mark.parametrize("fault", list(MANIFEST_FAULTS))
def test_damaged_export_manifest_is_refused(artifacts, tmp_path, fault):
    dst = str(tmp_path / "export")
    shutil.copytree(artifacts["export"], dst)
    damage, message = MANIFEST_FAULTS[fault]
    damage(dst)
    with pytest.raises(export.ExportError, match=message):
        export.load_exported(dst)


def test_export_bytes_are_reproducible(artifacts, tmp_path):
    """The same model exported again gives the same bytes, so the recorded sha256 identifies it."""
    from kd.models import QuantSpec as Spec

    _, tok, meta = export.load_exported(artifacts["export"])
    digests = set()
    for i in range(4):  # the metadata map's order was random per save when it had two keys
        model, _, _ = export.load_exported(artifacts["export"])
        out = export.export_student(model, Spec(**meta["quant"]), tok, str(tmp_path / f"e{i}"), meta["task"], meta["layer_map"])
        digests.add(export.sha256_file(os.path.join(out, export.WEIGHTS_FILE)))
    assert len(digests) == 1
