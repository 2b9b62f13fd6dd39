"""End to end on a tiny random-init 2-layer BERT and 64 MR sentences: BinaryBERT (general KD, two
stages FP32 / ternary, TWS, two stages on the split model), TernaryBERT, `bitbert compare`, and
the CLI for both pipelines."""
import csv
import json
import os

import pytest
import torch

import bitops
from kd import binarybert as B
from kd import cli, compare, export, pipelines, trainer
from kd.data import Encoded, general_corpus

from kd_helpers import mr_subset, one_thread, save_tiny_base, write_lines  # noqa: F401  (one_thread: autouse fixture)

FAST = dict(batch_size=16, eval_batch_size=32, progress=False, lr=3e-4, warmup=0.0)


def steps(n, **kw):
    return trainer.TrainConfig(max_steps=n, **{**FAST, **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bb")
    base = save_tiny_base(str(root / "base"), layers=2, dropout=0.0)
    data = mr_subset(64, 32)
    for e in data.train + data.dev + data.test:  # a cue word: learnable within a few dozen steps
        e.text = ("wonderful " if e.label else "terrible ") + e.text
    teacher_dir = str(root / "teacher")
    pipelines.finetune_teacher(data, base, teacher_dir, trainer.TrainConfig(epochs=10, eval_every=20, **{**FAST, "lr": 5e-3}), max_length=32)
    return root, base, data, teacher_dir


@pytest.fixture(scope="module")
def bb_run(tiny):
    root, base, data, teacher_dir = tiny
    cfg = B.BinaryBERTConfig(student_layers=1, base=base, general=steps(4), general_max_texts=48, fp32_stage1=steps(4),
                             fp32_stage2=steps(4), ternary_stage1=steps(4), ternary_stage2=steps(8), split_stage1=steps(4),
                             split_stage2=steps(8), max_length=32)
    return B.binarybert(data, teacher_dir, str(root / "bb"), cfg)


def test_binarybert_stages_and_tws(tiny, bb_run):
    root = tiny[0]
    res = bb_run
    assert res["layer_map"] == [1] and res["general"]["texts"] == 48
    for stage in ("fp32_stage1", "fp32_stage2", "ternary_stage1", "ternary_stage2", "split_stage1", "split_stage2"):
        assert len(res[stage]["losses"]) in (4, 8), stage
    # Stage I keeps its final weights: one evaluation, at its last step
    log = [json.loads(line) for line in open(root / "bb" / "ternary-student" / "stage1" / "eval_log.jsonl")]
    assert [r["step"] for r in log] == [4]
    # TWS: the split model scores what the ternary model scored, before any training
    assert res["tws"]["split_dev"] == res["ternary_stage2"]["best"]["metrics"]
    for folder in ("general", "fp32-student", "ternary-student", "1bit-student", "export"):
        assert os.path.isdir(root / "bb" / folder), folder


def test_binarybert_export_is_split_and_reloads(tiny, bb_run):
    root, _, data, _ = tiny
    model, spec, tok, info = pipelines.load_student_dir(str(root / "bb" / "1bit-student"))
    assert spec.split and spec.act_quant == "pact" and spec.granularity == "tensor"
    enc = Encoded(data.dev, tok, 32, "classification")
    want = trainer.predict_logits(model, enc)
    loaded, _, meta = export.load_exported(bb_run["export"])
    assert torch.equal(trainer.predict_logits(loaded, enc), want)
    kinds = {type(m) for m in loaded.modules()}
    assert bitops.SplitBinaryLinear in kinds and bitops.SplitBinaryEmbedding in kinds
    assert not kinds & {bitops.TernaryLinear, bitops.TernaryEmbedding}
    assert type(loaded.classifier) is torch.nn.Linear  # the classifier stays float
    # the ternary student exports too, packed at 2 bits
    assert cli.main(["export", "--student", str(root / "bb" / "ternary-student"), "--out", str(root / "bb-tern")]) == 0
    tern, _, _ = export.load_exported(str(root / "bb-tern"))
    assert isinstance(tern.bert.embeddings.word_embeddings, bitops.TernaryEmbedding)


def test_binarybert_a4_lsq_without_reduction(tiny, tmp_path):
    _, _, data, teacher_dir = tiny
    cfg = B.BinaryBERTConfig(act_bits=4, granularity="row", ternary_stage1=None, ternary_stage2=steps(4),
                             split_stage2=steps(4), max_length=32)
    res = B.binarybert(data, teacher_dir, str(tmp_path / "bb4"), cfg)
    assert res["layer_map"] == [0, 1] and "fp32_stage2" not in res and "ternary_stage1" not in res
    loaded, _, meta = export.load_exported(res["export"])
    layer = loaded.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer, bitops.SplitBinaryLinear) and layer.act_bits == 4 and layer.act_quant == "lsq"
    assert meta["quant"]["act_quant"] == "lsq"


def test_binarybert_config_errors():
    with pytest.raises(ValueError, match="expected student_layers > 0"):
        B.BinaryBERTConfig(general=steps(1))
    with pytest.raises(ValueError, match="act_bits=2; expected 8"):
        B.BinaryBERTConfig(act_bits=2)


def test_ternarybert_exports_2bit(tiny, tmp_path):
    _, _, data, teacher_dir = tiny
    res = B.ternarybert(data, teacher_dir, str(tmp_path / "tb"), B.ternarybert_config(quant=steps(6), max_length=32))
    assert res["layer_map"] == [0, 1] and "fp32" not in res
    loaded, _, meta = export.load_exported(res["export"])
    assert os.path.isdir(tmp_path / "tb" / "2bit-student")
    packed = {s["format"] for s in meta["packed_modules"].values()}
    assert packed == {"ternary2"} and len(meta["packed_modules"]) == 2 * 6 + 2
    assert isinstance(loaded.bert.embeddings.word_embeddings, bitops.TernaryEmbedding)


def test_general_corpus(tmp_path):
    texts = general_corpus()
    assert len(texts) == 4200 + 3708 + 5190 and all(texts)
    f = write_lines(tmp_path / "c.txt", ["one", "", "two "])
    assert general_corpus(text_file=f) == ["one", "two"]
    with pytest.raises(Exception, match="no such file"):
        general_corpus(text_file=str(tmp_path / "missing.txt"))


def test_budget_plan():
    assert compare.budget_plan("xtc", 100, reduced=True) == {"fp32": 50, "quant": 50}
    assert compare.budget_plan("ternarybert", 7, reduced=False) == {"quant": 7}
    assert compare.budget_plan("binarybert", 100, reduced=True) == {
        "fp32_stage1": 16, "fp32_stage2": 16, "ternary_stage1": 16, "ternary_stage2": 16, "split_stage2": 36}
    assert compare.budget_plan("binarybert", 10, reduced=False) == {"ternary_stage1": 2, "ternary_stage2": 2, "split_stage2": 6}
    with pytest.raises(ValueError, match="expected at least 5"):
        compare.budget_plan("binarybert", 4, reduced=True)


def _files(tmp_path, data):
    train_f, dev_f, test_f = tmp_path / "train.jsonl", tmp_path / "dev.jsonl", tmp_path / "test.jsonl"
    for path, part in ((train_f, data.train), (dev_f, data.dev), (test_f, data.test)):
        with open(path, "w") as f:
            for e in part:
                f.write(json.dumps({"text": e.text, "label": ["negative", "positive"][e.label]}) + "\n")
    return ["--train-file", str(train_f), "--dev-file", str(dev_f), "--test-file", str(test_f),
            "--batch-size", "16", "--max-length", "32", "--no-progress"]


def test_cli_compare_writes_table(tiny, tmp_path, capsys):
    _, _, data, teacher_dir = tiny
    common = _files(tmp_path, data)
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--teacher", teacher_dir, "--out", str(out), "--budget-steps", "6", "--student-layers", "1",
                     "--latency-examples", "3", *common]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["model"] for r in rows] == ["teacher (FP32)", "xtc", "binarybert", "ternarybert"]
    assert {"dev_accuracy", "test_accuracy", "size_mb", "train_s", "latency_ms", "smaller_than_teacher"} <= set(rows[0])
    for r in rows[1:]:
        assert 0 <= float(r["test_accuracy"]) <= 1 and float(r["latency_ms"]) > 0 and float(r["train_s"]) > 0
        assert float(r["size_mb"]) < float(rows[0]["size_mb"])
    md = open(out / "compare.md").read()
    assert md in printed and "budget: 6 optimizer steps per pipeline at batch 16" in md
    assert "binarybert: fp32_stage1 1, fp32_stage2 1, ternary_stage1 1, ternary_stage2 1, split_stage2 2" in md


@pytest.mark.parametrize("pipeline", ["binarybert", "ternarybert"])
def test_cli_distill_pipelines(tiny, tmp_path, pipeline, capsys):
    _, _, data, teacher_dir = tiny
    extra = (["--ternary-stage1-max-steps", "2", "--ternary-stage2-max-steps", "2", "--split-stage2-max-steps", "2",
              "--split-both-stages", "--split-stage1-max-steps", "2", "--act-bits", "4"]
             if pipeline == "binarybert" else ["--quant-max-steps", "2"])
    assert cli.main(["distill", "--pipeline", pipeline, "--teacher", teacher_dir, "--out", str(tmp_path / "d"),
                     *extra, *_files(tmp_path, data)]) == 0
    assert "export:" in capsys.readouterr().out
    _, _, meta = export.load_exported(str(tmp_path / "d" / "export"))
    assert meta["quant"]["split"] is (pipeline == "binarybert")
    assert cli.main(["distill", "--pipeline", pipeline, "--teacher", teacher_dir, "--out", str(tmp_path / "e"),
                     "--pooler-bits", "1", *extra, *_files(tmp_path, data)]) == 2
    assert f"--pooler-bits=1; {pipeline} expects one of 2, float" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["distill", "compare"])
def test_cli_help_names_the_pipelines(cmd, capsys):
    with pytest.raises(SystemExit):
        cli.main([cmd, "--help"])
    out = capsys.readouterr().out
    assert "binarybert" in out and "ternarybert" in out
