"""The "bitbert" transformers quantization method (kd.hf): an export loads with
AutoModelForSequenceClassification.from_pretrained and predicts exactly what kd.export.load_exported
predicts, with no float copy of a packed weight; save_pretrained round trips; damage is detected;
the loaded model compiles with fullgraph=True."""
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

import bitops
import kd  # noqa: F401  (registers the quantization method)
from kd import export, hf
from kd.models import QuantSpec, build_student, freeze_student, teacher_base_path

from kd_helpers import one_thread, vocab_size  # noqa: F401  (one_thread: autouse fixture)

SPEC = QuantSpec(attention=1, ffn1=2, ffn2=1, pooler=1)
TASK = {"task": "mr", "task_type": "classification", "labels": ["negative", "positive"]}
TEXTS = ["a gripping, beautifully shot film", "dull and far too long", "it is what it is", "the cast is wonderful"]


def small_config() -> BertConfig:
    # Sizes chosen so that no float tensor of the model has the (out, in) shape of a packed layer:
    # the no-float-copy test below looks for tensors of those shapes.
    return BertConfig(
        vocab_size=vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    student = build_student(small_config(), SPEC, frozen=False).eval()
    tok = AutoTokenizer.from_pretrained(teacher_base_path())
    path = str(tmp_path_factory.mktemp("hf") / "export")
    export.export_student(student, SPEC, tok, path, task=TASK)
    return path


def batch(path):
    return dict(AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt"))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def packed_fqns(model):
    return [n for n, m in model.named_modules() if isinstance(m, export.PACKED_TYPES)]


def test_from_pretrained_matches_load_exported(exported):
    ref, _, meta = export.load_exported(exported)
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert packed_fqns(model) == list(meta["packed_modules"])
    assert isinstance(model.bert.encoder.layer[1].intermediate.dense, bitops.TernaryLinear)
    assert isinstance(model.bert.embeddings.word_embeddings, bitops.BinaryEmbedding)
    assert all(m.frozen for m in model.modules() if isinstance(m, export.PACKED_TYPES))
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.quantization_config.spec == SPEC.to_dict()
    inputs = batch(exported)
    assert torch.equal(logits(model, inputs), logits(ref, inputs))
    # Another attention implementation computes the same function up to float rounding.
    sdpa = AutoModelForSequenceClassification.from_pretrained(exported, attn_implementation="sdpa")
    torch.testing.assert_close(logits(sdpa, inputs), logits(ref, inputs), rtol=1e-4, atol=1e-4)


class FloatWeightWatch(TorchDispatchMode):
    """Records every float tensor, off the meta device, that an op creates with one of ``shapes``."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.seen, self.ops = set(shapes), [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta" and tuple(t.shape) in self.shapes:
                self.seen.append((str(func), tuple(t.shape)))
        return out


def test_from_pretrained_allocates_no_float_weights(exported):
    meta = export.read_export_config(exported)
    shapes = {
        (s["out_features"], s["in_features"]) if "in_features" in s else (s["num_embeddings"], s["embedding_dim"])
        for s in meta["packed_modules"].values()
    }
    with FloatWeightWatch(shapes) as watch:
        model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert watch.ops > 0 and watch.seen == []
    # The watch does see a loader that builds float weights first (ours, which packs them after).
    with FloatWeightWatch(shapes) as control:
        export.load_exported(exported)
    assert control.seen
    # After the load, packed modules hold packed int32 words and float32 scales only.
    state = model.state_dict()
    for fqn in packed_fqns(model):
        assert f"{fqn}.weight" not in state
        assert state[f"{fqn}.packed_weight"].dtype == torch.int32 and state[f"{fqn}.weight_scale"].dtype == torch.float32
    assert not any(n.endswith(".weight") and n.rpartition(".")[0] in packed_fqns(model) for n, _ in model.named_parameters())


def test_save_pretrained_round_trip(exported, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    out = str(tmp_path / "saved")
    model.save_pretrained(out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    again = AutoModelForSequenceClassification.from_pretrained(out)
    inputs = batch(exported)
    assert torch.equal(logits(again, inputs), logits(model, inputs))
    # The same packed tensors, byte for byte, and so the same size up to the header's metadata.
    with safe_open(os.path.join(exported, export.WEIGHTS_FILE), "pt") as a, safe_open(os.path.join(out, export.WEIGHTS_FILE), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    sizes = [os.path.getsize(os.path.join(p, export.WEIGHTS_FILE)) for p in (exported, out)]
    assert abs(sizes[0] - sizes[1]) < 512, sizes
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert qc["quant_method"] == "bitbert" and qc["manifest"] is None
    # Saving twice gives the same config: the saved model keeps its quantizer.
    again.save_pretrained(str(tmp_path / "twice"))
    assert json.load(open(tmp_path / "twice" / "config.json"))["quantization_config"]["tensors_sha256"] == qc["tensors_sha256"]


def test_attach_saves_a_model_built_in_process(tmp_path):
    torch.manual_seed(1)
    student = freeze_student(build_student(small_config(), SPEC, frozen=False).eval())
    with pytest.raises(ValueError, match="not frozen"):
        hf.attach(build_student(small_config(), SPEC, frozen=False))
    hf.attach(student, SPEC)
    student.save_pretrained(str(tmp_path / "m"))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m"))
    inputs = dict(AutoTokenizer.from_pretrained(teacher_base_path())(TEXTS, padding=True, return_tensors="pt"))
    assert torch.equal(logits(loaded, inputs), logits(student, inputs))


def _flip_last_data_byte(path):
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        b = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))


def test_damage_is_detected(exported, tmp_path):
    # An export folder: bitbert.json's checksum of the file.
    bad = shutil.copytree(exported, tmp_path / "export")
    _flip_last_data_byte(os.path.join(bad, export.WEIGHTS_FILE))
    with pytest.raises(export.ExportError, match=r"sha256 .*\(the file is corrupted\)"):
        AutoModelForSequenceClassification.from_pretrained(str(bad))
    # A save_pretrained folder: the tensors' sha256 recorded in config.json.
    out = tmp_path / "saved"
    AutoModelForSequenceClassification.from_pretrained(exported).save_pretrained(str(out))
    _flip_last_data_byte(os.path.join(out, export.WEIGHTS_FILE))
    with pytest.raises(export.ExportError, match=r"tensors sha256 .*\(the weights are corrupted\)"):
        AutoModelForSequenceClassification.from_pretrained(str(out))
    # A config whose packed module does not match the tensors.
    wrong = shutil.copytree(exported, tmp_path / "wrong")
    cfg = json.load(open(wrong / "config.json"))
    cfg["quantization_config"]["packed_modules"]["bert.encoder.layer.0.attention.self.query"]["out_features"] = 33
    json.dump(cfg, open(wrong / "config.json", "w"))
    with pytest.raises(export.ExportError, match=r"tensor bert.encoder.layer.0.attention.self.query.packed_weight is "
                       r"\(torch.int32, \(32, 1\)\); expected \(torch.int32, \(33, 1\)\) from the packed module"):
        AutoModelForSequenceClassification.from_pretrained(str(wrong))
    # A config from another format version.
    old = shutil.copytree(exported, tmp_path / "old")
    cfg = json.load(open(old / "config.json"))
    cfg["quantization_config"]["format_version"] = 99
    json.dump(cfg, open(old / "config.json", "w"))
    with pytest.raises(ValueError, match="format_version=99; this bitbert reads versions 1, 2"):
        AutoModelForSequenceClassification.from_pretrained(str(old))


def test_compile_fullgraph_loaded_model(exported):
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    inputs = batch(exported)
    eager = logits(model, inputs)
    compiled = torch.compile(model, fullgraph=True)
    got = logits(compiled, inputs)
    # Same kernels and integer codes; inductor may fuse the float ops around them differently.
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), eager.argmax(-1))
