"""End to end on a tiny random-init 2-layer BERT and 64 MR sentences: teacher fine-tuning, XTC
(layer reduction, FP32 KD, 1-bit KD), export, reload; resume; the CLI."""
import io
import json
import os

import pytest
import torch

from bitops.api import _EncoderLayerPlan
from kd import cli, export, pipelines, trainer
from kd.data import Encoded
from kd.models import QuantSpec

from kd_helpers import mr_subset, one_thread, save_tiny_base  # noqa: F401  (one_thread: autouse fixture)

FAST = dict(batch_size=16, eval_batch_size=32, progress=False, lr=1e-3, warmup=0.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    base = save_tiny_base(str(root / "base"), layers=2, dropout=0.0)
    data = mr_subset(64, 32)
    # A cue word makes the labels learnable by a random-init BERT within a few dozen steps.
    for e in data.train + data.dev:
        e.text = ("wonderful " if e.label else "terrible ") + e.text
    teacher_dir = str(root / "teacher")
    t_cfg = trainer.TrainConfig(epochs=10, eval_every=20, **{**FAST, "lr": 5e-3, "warmup": 0.1})
    t_res = pipelines.finetune_teacher(data, base, teacher_dir, t_cfg, max_length=32)
    cfg = pipelines.XTCConfig(
        student_layers=1, max_length=32, spec=QuantSpec(pooler=1),
        fp32=trainer.TrainConfig(epochs=2, **{**FAST, "lr": 3e-4}), quant=trainer.TrainConfig(epochs=3, **{**FAST, "lr": 3e-4}),
    )
    x_res = pipelines.xtc(data, teacher_dir, str(root / "xtc"), cfg)
    return root, data, t_res, x_res


def test_pipeline_losses_decrease_and_layer_map(tiny_run):
    root, data, t_res, x_res = tiny_run
    assert x_res["layer_map"] == [1]
    assert t_res["best"]["metrics"]["accuracy"] > 0.9
    for res in (t_res, x_res["fp32"], x_res["quant"]):
        losses = res["losses"]
        k = max(1, len(losses) // 3)
        assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses
    log = [json.loads(line) for line in open(root / "xtc" / "1bit-student" / "train" / "eval_log.jsonl")]
    assert [r["step"] for r in log] == [4, 8, 12] and all("accuracy" in r and "mcc" in r for r in log)
    info = json.load(open(root / "xtc" / "fp32-student" / "kd_task.json"))
    assert info["layer_map"] == [1] and info["role"] == "fp32-student"


def test_export_reload_reproduces_predictions(tiny_run):
    root, data, _, x_res = tiny_run
    model, spec, tok, info = pipelines.load_student_dir(str(root / "xtc" / "1bit-student"))
    enc = Encoded(data.dev, tok, 32, "classification")
    want = trainer.predict_logits(model, enc)
    exact = export.load_exported(x_res["export"], exact=True)[0]
    # Its encoder layers run as bitops.fuse_encoder_layers_' lean sequences: the same outputs bit for bit.
    assert all(isinstance(layer.forward, _EncoderLayerPlan) for layer in exact.bert.encoder.layer)
    assert torch.equal(trainer.predict_logits(exact, enc), want)
    # The default folds GELU into the next layer's quantization with its own erf (bitops.fuse_gelu_) and
    # runs the add & norms on bitops' kernel: an int8 code may differ where a value sits within ~1e-7 of a
    # rounding boundary.
    loaded, tok2, meta = export.load_exported(x_res["export"])
    got = trainer.predict_logits(loaded, enc)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert meta["layer_map"] == [1] and meta["task"]["labels"] == ["negative", "positive"]
    assert all(not p.requires_grad or "packed" not in n for n, p in loaded.named_parameters())
    assert type(loaded.bert.pooler.dense).__name__ == "BinaryLinear"
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert {"BinaryLinear", "BinaryEmbedding"} <= kinds
    assert all(m.frozen for m in loaded.modules() if hasattr(m, "frozen"))


def test_predict_batches_by_length_and_keeps_the_order(tiny_run):
    # Texts of mixed lengths, batched two at a time by token count: each result is the text's own,
    # in input order (what it gets alone, to float rounding: its batch pads it differently).
    _, data, _, x_res = tiny_run
    texts = [e.text for e in data.dev[:7]] + ["ok", data.dev[0].text + " " + data.dev[1].text]
    batched = export.predict(x_res["export"], texts, batch_size=2)
    alone = [export.predict(x_res["export"], [t], batch_size=1)[0] for t in texts]
    assert len(batched) == len(texts)
    for b, a in zip(batched, alone):
        assert b["label"] == a["label"] and abs(b["score"] - a["score"]) < 1e-5


def test_init_student_continues_the_quantized_stage(tiny_run, tmp_path):
    # A second run from the first one's 1bit-student/ starts from its best weights (the first
    # evaluation of a stage at lr 1e-12 scores exactly what that student scored), skips the
    # FP32 stage, and refuses a student quantized differently or with another layer map.
    root, data, _, x_res = tiny_run
    first = str(root / "xtc" / "1bit-student")
    teacher_dir = str(root / "teacher")
    cfg = pipelines.XTCConfig(student_layers=1, max_length=32, spec=QuantSpec(pooler=1), init_student=first,
                              quant=trainer.TrainConfig(epochs=1, **{**FAST, "lr": 1e-12}))
    res = pipelines.xtc(data, teacher_dir, str(tmp_path / "again"), cfg)
    assert "fp32" not in res and not os.path.exists(tmp_path / "again" / "fp32-student")
    assert res["layer_map"] == [1]
    assert res["quant"]["best"]["metrics"] == x_res["quant"]["best"]["metrics"]
    with pytest.raises(ValueError, match=r"init_student=.* is quantized as .*; this run asks for"):
        pipelines.xtc(data, teacher_dir, str(tmp_path / "x"),
                      pipelines.XTCConfig(max_length=32, spec=QuantSpec(pooler=None), init_student=first))
    with pytest.raises(ValueError, match=r"has the layer map \[1\]; this run asks for \[0\]"):
        pipelines.xtc(data, teacher_dir, str(tmp_path / "y"),
                      pipelines.XTCConfig(teacher_layers=[0], max_length=32, spec=QuantSpec(pooler=1), init_student=first))


def _copy_export(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return str(dst)


def test_export_damage_is_detected(tiny_run, tmp_path):
    src = tiny_run[3]["export"]
    trunc = _copy_export(src, tmp_path / "trunc")
    w = os.path.join(trunc, export.WEIGHTS_FILE)
    size = os.path.getsize(w)
    os.truncate(w, size - 100)
    with pytest.raises(export.ExportError, match=f"{size - 100} bytes; expected {size}"):
        export.load_exported(trunc)
    flip = _copy_export(src, tmp_path / "flip")
    w = os.path.join(flip, export.WEIGHTS_FILE)
    with open(w, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(export.ExportError, match=r"sha256 .*\(the file is corrupted\)"):
        export.load_exported(flip)
    old = _copy_export(src, tmp_path / "old")
    c = os.path.join(old, export.CONFIG_FILE)
    meta = json.load(open(c))
    meta["format_version"] = 99
    json.dump(meta, open(c, "w"))
    with pytest.raises(export.ExportError, match="format_version 99; this bitbert reads versions 1, 2"):
        export.load_exported(old)
    with pytest.raises(export.ExportError, match="no such file"):
        export.load_exported(str(tmp_path))


def test_export_size_counts_everything(tiny_run):
    meta = export.read_export_config(tiny_run[3]["export"])
    loaded, _, _ = export.load_exported(tiny_run[3]["export"])
    tensor_bytes = sum(t.numel() * t.element_size() for t in loaded.state_dict().values() if isinstance(t, torch.Tensor))
    assert meta["weights"]["bytes"] >= tensor_bytes
    assert "bert.embeddings.word_embeddings.packed_weight" in loaded.state_dict()
    assert "bert.embeddings.word_embeddings.weight" not in loaded.state_dict()


def test_resume_after_interruption_is_bit_identical(tmp_path):
    base = save_tiny_base(str(tmp_path / "base"), layers=2)
    data = mr_subset(64, 16)
    from kd.models import load_classifier
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tr, dev = Encoded(data.train, tok, 24, "classification"), Encoded(data.dev, tok, 24, "classification")
    cfg = trainer.TrainConfig(epochs=3, eval_every=4, **FAST)  # 12 steps, checkpoints at 4, 8, 12

    def run(out, resume=False, stop_at=None):
        torch.manual_seed(123)
        model = load_classifier(base, 2, "classification")
        from kd.models import quantize_student

        quantize_student(model, QuantSpec())

        def loss_fn(net, b):
            logits = net(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]).logits
            return {"loss": torch.nn.functional.cross_entropy(logits, b["labels"])}

        def on_step(step):
            if stop_at is not None and step == stop_at:
                raise KeyboardInterrupt

        return trainer.train(model, tr, dev, loss_fn, cfg, out, "classification", resume=resume, on_step=on_step)

    full = run(str(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        run(str(tmp_path / "cut"), stop_at=6)  # dies between the checkpoints at 4 and 8
    resumed = run(str(tmp_path / "cut"), resume=True)
    assert full["final_state"].keys() == resumed["final_state"].keys()
    for k, v in full["final_state"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, resumed["final_state"][k]), k
    assert resumed["best"] == full["best"]
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        run(str(tmp_path / "none"), resume=True)


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    base = save_tiny_base(str(tmp_path / "base"), layers=2)
    data = mr_subset(64, 32)
    train_f, dev_f = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    for path, part in ((train_f, data.train), (dev_f, data.dev)):
        with open(path, "w") as f:
            for e in part:
                f.write(json.dumps({"sentence": e.text, "y": ["neg", "pos"][e.label]}) + "\n")
    common = ["--train-file", str(train_f), "--dev-file", str(dev_f), "--text-column", "sentence", "--label-column", "y",
              "--batch-size", "16", "--max-length", "32", "--no-progress"]
    assert cli.main(["teacher", "--base", base, "--out", str(tmp_path / "t"), "--epochs", "1", "--lr", "1e-3", *common]) == 0
    assert cli.main(["distill", "--pipeline", "xtc", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "x"),
                     "--student-layers", "1", "--fp32-epochs", "1", "--quant-epochs", "1", *common]) == 0
    assert cli.main(["export", "--student", str(tmp_path / "x" / "1bit-student"), "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(tmp_path / "e"), "--train-file", str(train_f), "--dev-file", str(dev_f),
                     "--text-column", "sentence", "--label-column", "y"]) == 0
    assert "accuracy" in capsys.readouterr().out
    (tmp_path / "in.txt").write_text("a charming film\nan awful mess\n")
    assert cli.main(["predict", "--model", str(tmp_path / "e"), "--input", str(tmp_path / "in.txt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("neg", "pos") for line in lines)
    assert cli.main(["eval", "--model", str(tmp_path / "t"), "--train-file", str(train_f), "--dev-file", str(dev_f),
                     "--text-column", "sentence", "--label-column", "y"]) == 0
    assert "accuracy" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert cli.main(["predict", "--model", str(tmp_path / "e")]) == 0
    assert capsys.readouterr().out.strip().endswith("\tfrom stdin")
    assert cli.main(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["teacher", "distill", "eval", "export", "predict"])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0 and "usage: bitbert " + cmd in capsys.readouterr().out
