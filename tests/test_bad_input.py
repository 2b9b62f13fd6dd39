"""Bad input at the public entry points: one table of (entry point, case, error, message).

Every case must raise the stated error type with a message naming the argument or file, the value
and what was expected. The kernel ops have their own table in tests/test_errors.py (run against the
C++ kernels and the reference) and the data files theirs in tests/test_kd_data.py; this file covers
the layers, quantize_ and its configs, the kd functions and configs, checkpoints, exports and the CLI.
"""
import os
import re

import pytest
import torch

import bitops
import kd
from kd import checkpoint, cli, export, losses, models, trainer

from kd_helpers import save_tiny_base, tiny_config, one_thread  # noqa: F401  (one_thread: autouse fixture)


def _tiny_student():
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(tiny_config(1))


def _export_to_a_file(tmp):
    target = os.path.join(tmp, "a_file")
    open(target, "w").close()
    from transformers import AutoTokenizer

    model = models.quantize_student(_tiny_student(), models.QuantSpec())
    export.export_student(model, models.QuantSpec(), AutoTokenizer.from_pretrained(models.teacher_base_path()), target, {})


CASES = [
    # layers
    ("BinaryLinear", "in_features=0", lambda t: bitops.BinaryLinear(0, 4), ValueError, r"in_features=0; expected a positive int"),
    ("BinaryLinear", "out_features=2.5", lambda t: bitops.BinaryLinear(4, 2.5), ValueError, r"out_features=2.5; expected a positive int"),
    ("BinaryLinear", "act_bits=6", lambda t: bitops.BinaryLinear(8, 4, act_bits=6), ValueError, r"act_bits=6; expected 8, 4 or None"),
    ("TernaryLinear", "act_quant='minmax'", lambda t: bitops.TernaryLinear(8, 4, act_quant="minmax"), ValueError, r"act_quant='minmax'; expected one of"),
    ("TernaryLinear", "group without group_size", lambda t: bitops.TernaryLinear(8, 4, granularity="group"), ValueError,
     r"group_size=None; expected a positive int with granularity='group'"),
    ("BinaryLinear.forward", "9 features", lambda t: bitops.BinaryLinear(8, 4)(torch.randn(2, 9)), ValueError,
     r"input has 9 features .*expected in_features=8"),
    ("BinaryLinear.forward", "int64 input", lambda t: bitops.BinaryLinear(8, 4)(torch.ones(2, 8, dtype=torch.int64)), ValueError,
     r"input is dtype torch.int64, shape \(2, 8\); expected a floating-point tensor of shape \(\.\.\., in_features=8\)"),
    ("BinaryLinear.forward", "0-d input", lambda t: bitops.BinaryLinear(8, 4)(torch.tensor(1.0)), ValueError, r"input is dtype torch.float32, shape \(\)"),
    ("frozen BinaryLinear.forward", "nan input", lambda t: bitops.BinaryLinear(8, 4).freeze()(torch.full((2, 8), float("nan"))), ValueError,
     r"x holds non-finite values \(nan or inf\) in row 0"),
    ("BinaryLinear.from_linear", "a Conv1d", lambda t: bitops.BinaryLinear.from_linear(torch.nn.Conv1d(2, 2, 1)), TypeError,
     r"linear is a Conv1d; expected torch.nn.Linear"),
    ("BinaryLinear.load_state_dict", "other shape", lambda t: bitops.BinaryLinear(8, 4).load_state_dict(bitops.BinaryLinear(16, 4).freeze().state_dict()),
     ValueError, r"state_dict was saved from a packed layer with in_features=16; this one has in_features=8"),
    ("BinaryEmbedding", "num_embeddings=0", lambda t: bitops.BinaryEmbedding(0, 4), ValueError, r"num_embeddings=0; expected a positive int"),
    ("BinaryEmbedding.forward", "id out of range", lambda t: bitops.BinaryEmbedding(10, 4)(torch.tensor([11])), ValueError,
     r"ids hold values in \[11, 11\]; expected ids in \[0, 10\)"),
    ("BinaryEmbedding.forward", "float ids", lambda t: bitops.BinaryEmbedding(10, 4)(torch.tensor([1.0])), ValueError,
     r"ids has dtype torch.float32; expected torch.int64 or torch.int32"),
    # quantize_ and configs
    ("BinaryConfig", "act_bits=3", lambda t: bitops.BinaryConfig(act_bits=3), ValueError, r"act_bits=3; expected 8, 4 or None"),
    ("TernaryConfig", "granularity='col'", lambda t: bitops.TernaryConfig(granularity="col"), ValueError, r"granularity='col'; expected one of"),
    ("quantize_", "model is a str", lambda t: bitops.quantize_("bert", bitops.BinaryConfig()), TypeError, r"model is a str; expected a torch.nn.Module"),
    ("quantize_", "config is a dict", lambda t: bitops.quantize_(torch.nn.Sequential(torch.nn.Linear(2, 2)), {"act_bits": 8}), TypeError,
     r"config is a dict; expected bitops.BinaryConfig or bitops.TernaryConfig"),
    ("quantize_", "filter_fn=3", lambda t: bitops.quantize_(torch.nn.Sequential(torch.nn.Linear(2, 2)), bitops.BinaryConfig(), filter_fn=3), TypeError,
     r"filter_fn is a int; expected a callable"),
    ("quantize_", "model is an nn.Linear", lambda t: bitops.quantize_(torch.nn.Linear(2, 2), bitops.BinaryConfig()), TypeError,
     r"model is itself an nn.Linear; use BinaryLinear.from_linear"),
    ("fuse_gelu_", "model is a str", lambda t: bitops.fuse_gelu_("bert"), TypeError, r"model is a str; expected a torch.nn.Module"),
    ("fuse_qkv_", "model is a str", lambda t: bitops.fuse_qkv_("bert"), TypeError, r"model is a str; expected a torch.nn.Module"),
    ("fuse_encoder_layers_", "model is a str", lambda t: bitops.fuse_encoder_layers_("bert"), TypeError,
     r"model is a str; expected a torch.nn.Module"),
    # kd functions and configs
    ("kd.models.skip_layers", "7 of 6", lambda t: models.skip_layers(6, 7), ValueError, r"student_layers=7; expected 1 <= student_layers <= teacher_layers=6"),
    ("kd.models.QuantSpec", "attention=3", lambda t: models.QuantSpec(attention=3), ValueError, r"attention bits=3; expected one of \(1, 2\)"),
    ("kd.trainer.TrainConfig", "batch_size=0", lambda t: trainer.TrainConfig(batch_size=0), ValueError, r"batch_size=0; expected >= 1"),
    ("kd.trainer.TrainConfig", "warmup=2", lambda t: trainer.TrainConfig(warmup=2), ValueError, r"warmup=2; expected a fraction of the steps in \[0, 1\)"),
    ("kd.losses.KDWeights", "attention=-1", lambda t: losses.KDWeights(attention=-1), ValueError, r"KD weight attention=-1; expected a finite value >= 0"),
    ("kd.losses.KDWeights", "temperature=0", lambda t: losses.KDWeights(temperature=0), ValueError, r"temperature=0; expected a finite value > 0"),
    ("kd.losses.soft_cross_entropy", "3 vs 4 classes", lambda t: losses.soft_cross_entropy(torch.randn(2, 3), torch.randn(2, 4)), ValueError,
     r"student_logits has shape \(2, 3\) and teacher_logits \(2, 4\); expected the same \(B, C\) shape"),
    ("kd.losses.hidden_mse", "other width", lambda t: losses.hidden_mse(torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.ones(2, 3)), ValueError,
     r"student_hidden has shape \(2, 3, 8\) and teacher_hidden \(2, 3, 4\)"),
    ("kd.distill", "a dict as config", lambda t: kd.distill(None, "teacher", t, {"pipeline": "xtc"}), TypeError,
     r"cfg is a dict; expected kd.XTCConfig \(xtc, ternarybert\) or kd.BinaryBERTConfig"),
    ("kd.models.load_classifier", "missing folder", lambda t: models.load_classifier(os.path.join(t, "nope")), FileNotFoundError,
     r"nope: no such folder; expected a model folder"),
    # checkpoints and exports
    ("kd.checkpoint.load_checkpoint", "missing file", lambda t: checkpoint.load_checkpoint(os.path.join(t, "none.pt")), FileNotFoundError,
     r"none.pt: no such checkpoint file"),
    ("kd.checkpoint.load_checkpoint", "a plain torch.save file", lambda t: (torch.save({}, os.path.join(t, "p.pt")), checkpoint.load_checkpoint(os.path.join(t, "p.pt"))),
     checkpoint.CheckpointError, r"p.pt: no bitbert checksum trailer"),
    ("kd.trainer.train", "resume without a checkpoint", lambda t: trainer.train(None, [], [], None, trainer.TrainConfig(), t, "classification", resume=True),
     FileNotFoundError, r"resume=True but .*checkpoint.pt does not exist"),
    ("kd.export.export_student", "unquantized model", lambda t: export.export_student(_tiny_student(), models.QuantSpec(), None, t, {}), ValueError,
     r"model has no packed layers; expected a student quantized by kd.models.quantize_student"),
    ("kd.export.export_student", "out_dir is a file", _export_to_a_file, NotADirectoryError, r"a_file: exists and is not a folder; expected a folder"),
    ("kd.export.load_exported", "missing folder", lambda t: export.load_exported(os.path.join(t, "nope")), export.ExportError,
     r"nope/bitbert.json: no such file; expected a folder written by `bitbert export`"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_entry_point_bad_input(case, tmp_path):
    _, _, call, error, message = case
    with pytest.raises(error, match=message):
        call(str(tmp_path))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return save_tiny_base(str(tmp_path_factory.mktemp("cli") / "teacher"), layers=2)


CLI_CASES = [
    ("distill: missing teacher", "distill --teacher {tmp}/nope --out {tmp}/o", r"nope: no such folder; expected a model folder"),
    ("distill: --batch-size 0", "distill --teacher {teacher} --out {tmp}/o --batch-size 0", r"batch_size=0; expected >= 1"),
    ("distill: --student-layers 9", "distill --teacher {teacher} --out {tmp}/o --student-layers 9 --max-train 8 --max-eval 8",
     r"student_layers=9; expected 1 <= student_layers <= teacher_layers=2"),
    ("distill: --kd-attention -1", "distill --teacher {teacher} --out {tmp}/o --kd-attention -1", r"KD weight attention=-1.0; expected a finite value >= 0"),
    ("distill: --quant-lr 0", "distill --teacher {teacher} --out {tmp}/o --quant-lr 0", r"lr=0.0; expected > 0"),
    ("teacher: missing data file", "teacher --out {tmp}/o --train-file {tmp}/none.csv --dev-file {tmp}/none.csv", r"none.csv: no such file; expected a CSV, TSV or JSONL"),
    ("export: missing student", "export --student {tmp}/nope --out {tmp}/o", r"nope/student.json: no such file; expected the 1bit-student folder"),
    ("eval: missing model", "eval --model {tmp}/nope", r"nope: no such folder; expected an export folder or a model folder"),
    ("predict: missing model", "predict --model {tmp}/nope", r"nope/bitbert.json: no such file; expected a folder written by `bitbert export`"),
]
ARGPARSE_CASES = [
    ("distill: --teacher-layers 1,x", "distill --teacher {teacher} --out {tmp}/o --teacher-layers 1,x",
     r"argument --teacher-layers: '1,x'; expected comma-separated layer indices like 1,3,5"),
    ("distill: --pipeline gptq", "distill --pipeline gptq --teacher {teacher} --out {tmp}/o", r"argument --pipeline: invalid choice: 'gptq'"),
    ("distill: --act-bits 3", "distill --teacher {teacher} --out {tmp}/o --act-bits 3", r"argument --act-bits: invalid choice: 3"),
    ("distill: no --out", "distill --teacher {teacher}", r"the following arguments are required: --out"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_the_message(case, tiny_teacher, tmp_path, capsys):
    _, args, message = case
    argv = args.format(tmp=tmp_path, teacher=tiny_teacher).split()
    assert cli.main(argv + ["--no-progress"] if argv[0] in ("teacher", "distill") else argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after any progress bar of transformers)
    assert last.startswith(f"bitbert {argv[0]}: error: ") and re.search(message, last), last


@pytest.mark.parametrize("case", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_cli_bad_flag_is_a_usage_error(case, tiny_teacher, tmp_path, capsys):
    _, args, message = case
    with pytest.raises(SystemExit) as e:
        cli.main(args.format(tmp=tmp_path, teacher=tiny_teacher).split())
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
