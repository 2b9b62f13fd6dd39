"""Hugging Face transformers integration: the "bitbert" quantization method.

``import kd`` registers it (``transformers.quantizers.register_quantization_config`` /
``register_quantizer``), after which a folder written by :func:`kd.export.export_student` or by
``save_pretrained`` of a packed model loads with the usual call::

    import kd
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained("path/to/export")

How a load goes: ``config.json`` carries ``quantization_config`` = :class:`BitbertQuantConfig`
(``quant_method: "bitbert"``, every packed module with its packing format and shapes, the
quantization spec, and the sha256 of the tensors). transformers builds the model on the meta
device; :class:`BitbertHfQuantizer` first checks the checkpoint (the tensors' sha256 and, in an
export folder, ``bitbert.json``'s size and sha256 of the file), then swaps the recorded modules for
frozen packed layers (:class:`bitops.BinaryLinear`, :class:`bitops.TernaryLinear`,
:class:`bitops.BinaryEmbedding`), still on the meta device, so their ``packed_weight`` (int32) and
``weight_scale`` (float32) buffers are filled straight from the file: no float copy of a packed
weight exists at any point. ``save_pretrained`` writes the same tensors and a config with the new
tensors' sha256.

The model defaults to kd's attention (``kd.models.ATTN_IMPLEMENTATION``), the one
:func:`kd.export.load_exported` uses, so both loaders give the same outputs bit for bit: in eval
mode on CPU it runs :func:`bitops.attention` (faster than torch's SDPA, and it skips padded keys),
otherwise the students' eager attention; ``attn_implementation="sdpa"`` agrees to float rounding.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Optional, Sequence

import torch
from safetensors import safe_open
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

import bitops

from . import export
from .models import ATTN_IMPLEMENTATION, QuantSpec

QUANT_METHOD = "bitbert"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor of a name -> tensor mapping, by sorted
    name (read one at a time, so a lazy mapping such as :class:`_Checkpoint` stays lazy).

    A digest of the tensors rather than of the file, because save_pretrained writes config.json
    before the weights and safetensors orders its header differently from one process to the next."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Checkpoint(Mapping):
    """The tensors of safetensors ``files`` as a lazy name -> tensor mapping; records the (dtype,
    shape) of each tensor it has read in ``read``."""

    def __init__(self, files: Sequence[str]):
        self._handles = [safe_open(path, framework="pt") for path in files]
        self._where = {name: f for f in self._handles for name in f.keys()}
        self.read: dict = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self._where[name].get_tensor(name)
        self.read[name] = (t.dtype, tuple(t.shape))
        return t

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


@register_quantization_config(QUANT_METHOD)
class BitbertQuantConfig(QuantizationConfigMixin):
    """``quantization_config`` of a packed bitbert model (written to config.json).

    Fields: ``format`` / ``format_version`` (:data:`kd.export.FORMAT`, ``FORMAT_VERSION``);
    ``packed_modules``: fqn -> the packed module's extra state (format "sign1"/"ternary2", in/out
    features or num_embeddings/embedding_dim, granularity, group_size, activation bits and
    quantizer); ``spec``: the :class:`kd.models.QuantSpec` as a dict (None when unknown);
    ``tensors_sha256``: :func:`tensors_sha256` of the checkpoint; ``manifest``: "bitbert.json" in
    an export folder (its file checksum is checked too), else None.
    """

    def __init__(
        self,
        packed_modules: Optional[dict] = None,
        spec: Optional[dict] = None,
        tensors_sha256: Optional[str] = None,
        manifest: Optional[str] = None,
        format: str = export.FORMAT,
        format_version: int = export.FORMAT_VERSION,
        **kwargs,
    ):
        self.quant_method = QUANT_METHOD
        if format != export.FORMAT:
            raise ValueError(f"quantization_config format={format!r}; expected {export.FORMAT!r}")
        if format_version not in export.READ_VERSIONS:
            raise ValueError(
                f"quantization_config format_version={format_version!r}; this bitbert reads versions "
                f"{', '.join(map(str, export.READ_VERSIONS))}. Export the model again with this version"
            )
        if not isinstance(packed_modules, dict) or not packed_modules:
            raise ValueError(f"quantization_config packed_modules={packed_modules!r}; expected a non-empty dict fqn -> packed module state")
        self.format, self.format_version = format, format_version
        self.packed_modules = packed_modules
        self.spec = QuantSpec(**spec).to_dict() if spec is not None else None
        self.tensors_sha256 = tensors_sha256
        self.manifest = manifest

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: Optional[QuantSpec] = None, **kwargs) -> "BitbertQuantConfig":
        """The config of a frozen packed ``model`` (its packed modules' states)."""
        return cls(packed_modules=export.packed_module_states(model), spec=spec.to_dict() if spec is not None else None, **kwargs)


class _LoadPackedScale(ConversionOps):
    """Loads a packed module's ``weight_scale`` and, with it, its recorded extra state: transformers
    counts ``<module>._extra_state`` as a key to load, and safetensors only holds tensors."""

    def __init__(self, hf_quantizer: "BitbertHfQuantizer"):
        self.hf_quantizer = hf_quantizer  # also tells transformers not to cast the loaded tensor

    def convert(self, input_dict, full_layer_name=None, **kwargs):
        scale = input_dict["weight_scale"]
        fqn = full_layer_name.rpartition(".")[0]
        return {
            "weight_scale": scale[0] if isinstance(scale, list) else scale,
            torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX: self.hf_quantizer.quantization_config.packed_modules[fqn],
        }

    @property
    def reverse_op(self) -> ConversionOps:
        return _Identity()


class _Identity(ConversionOps):
    """Saving writes the scales as they are."""

    def convert(self, input_dict, **kwargs):
        return input_dict


@register_quantizer(QUANT_METHOD)
class BitbertHfQuantizer(HfQuantizer):
    """Loads and saves packed bitbert models inside ``from_pretrained`` / ``save_pretrained``
    (module docstring). Only pre-quantized checkpoints: quantizing a float model is distillation
    (:mod:`kd.pipelines`), not a load option."""

    requires_calibration = True
    quantization_config: BitbertQuantConfig
    serialized_names = {"weight_scale": ["weight_scale"]}

    def validate_environment(self, *args, device_map=None, **kwargs):
        if isinstance(device_map, dict) and ({"disk"} & set(device_map.values()) or len(set(device_map.values())) > 1):
            raise ValueError(f"device_map={device_map!r}; a bitbert model loads on one device (no offloading)")

    def update_attn_implementation(self, config):
        if config._attn_implementation is None:
            config._attn_implementation = ATTN_IMPLEMENTATION
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        qc = self.quantization_config
        folder = os.path.dirname(checkpoint_files[0]) if checkpoint_files else "."
        where = os.path.join(folder, "config.json")
        if not checkpoint_files:
            raise export.ExportError(f"{folder}: no weights file; expected model.safetensors next to {where}")
        if qc.manifest is not None:
            if qc.manifest != export.CONFIG_FILE:
                raise export.ExportError(f"{where}: manifest {qc.manifest!r}; expected {export.CONFIG_FILE!r} or null")
            export.verify_weights(folder, export.read_export_config(folder))
        if qc.tensors_sha256 is None:
            raise export.ExportError(f"{where}: quantization_config has no tensors_sha256; export the model again")
        checkpoint = _Checkpoint(checkpoint_files)
        digest = tensors_sha256(checkpoint)
        if digest != qc.tensors_sha256:
            raise export.ExportError(
                f"{', '.join(checkpoint_files)}: tensors sha256 {digest}; expected {qc.tensors_sha256} from {where} (the weights are corrupted)"
            )
        # transformers builds the model on the meta device: the packed layers are created there too,
        # and their buffers are then replaced by the checkpoint's tensors.
        for fqn, state in qc.packed_modules.items():
            export._swap_in_frozen(model, fqn, state, cfg_path=where)
        bitops.fuse_gelu_(model)  # as kd.export.load_exported does: structure only, no tensors change
        bitops.fuse_encoder_layers_(model)  # (groups query, key and value too)
        for fqn in qc.packed_modules:
            buffers = dict(model.get_submodule(fqn).named_buffers(recurse=False))
            if "weight_scale" not in buffers:  # _LoadPackedScale brings the extra state with it
                raise export.ExportError(f"{where}: packed module {fqn!r} has no weight_scale buffer; kd.hf cannot load it")
            for name, buf in buffers.items():
                key, want = f"{fqn}.{name}", (buf.dtype, tuple(buf.shape))
                if checkpoint.read.get(key) != want:
                    raise export.ExportError(
                        f"{checkpoint_files[0]}: tensor {key} is {checkpoint.read.get(key, 'missing')}; expected {want} from the packed module in {where}"
                    )

    def get_load_operations(self):
        return {"deserialize": _LoadPackedScale}

    def get_state_dict_and_metadata(self, model):
        """Tensors only (the extra states travel in config.json); records their sha256 in the
        config, which save_pretrained writes after this call."""
        tensors = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        qc = self.quantization_config
        qc.packed_modules = export.packed_module_states(model)
        qc.tensors_sha256 = tensors_sha256(tensors)
        qc.manifest = None  # a bitbert.json next to these weights would describe other bytes
        return tensors, {"bitbert_format": export.FORMAT, "bitbert_format_version": str(export.FORMAT_VERSION)}

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False  # frozen packed layers hold no latent weights

    @property
    def is_compileable(self) -> bool:
        return True


def attach(model: torch.nn.Module, spec: Optional[QuantSpec] = None) -> torch.nn.Module:
    """Make a frozen packed model built in this process (e.g. ``freeze_student(student)``) save
    with ``save_pretrained`` as one loaded by ``from_pretrained`` does. Returns ``model``."""
    config = BitbertQuantConfig.from_model(model, spec)
    model.config.quantization_config = config
    model.hf_quantizer = BitbertHfQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    return model


def write_config(frozen: torch.nn.Module, spec: QuantSpec, tensors: Mapping[str, torch.Tensor], task: dict, out_dir: str) -> str:
    """Write ``out_dir/config.json`` of an export folder: ``frozen``'s BERT config, the task's label
    names, and the bitbert ``quantization_config`` of ``tensors`` (what model.safetensors holds)."""
    config = frozen.config.__class__.from_dict(frozen.config.to_dict())
    config.architectures = [type(frozen).__name__]
    labels = task.get("labels") or []
    if task.get("task_type") == "classification" and len(labels) == config.num_labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    config.quantization_config = BitbertQuantConfig.from_model(
        frozen, spec, tensors_sha256=tensors_sha256(tensors), manifest=export.CONFIG_FILE
    ).to_dict()
    config.save_pretrained(out_dir)
    return os.path.join(out_dir, "config.json")


def __getattr__(name):
    # kd.hf.DistillationTrainer: loaded on first use, as importing transformers' Trainer takes seconds.
    if name == "DistillationTrainer":
        from .hf_trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
