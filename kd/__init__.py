"""kd: knowledge distillation of BERT teachers into 1-bit ``bitops`` students (XTC).

* ``kd.data``: tasks (MR, CSV/TSV/JSONL files, GLUE) -> :class:`kd.data.TaskData`;
* ``kd.models``: teacher loading, layer reduction, the quantized student, attention capture;
* ``kd.losses``: logits / attention-score / hidden-state distillation losses;
* ``kd.trainer``: the resumable, DDP-capable training loop;
* ``kd.pipelines``: teacher fine-tuning and the XTC pipeline;
* ``kd.export``: the packed export format and its loader;
* ``kd.hf``: the "bitbert" quantization method of transformers (``from_pretrained`` /
  ``save_pretrained`` of packed models), registered by ``import kd``; ``DistillationTrainer``;
* ``kd.cli``: the ``bitbert`` command; ``kd.demo``: ``make demo``.

The command's verbs as functions (walk-through: docs/python-api.md)::

    data = kd.load_mr()                                          # or kd.data.load_files / load_glue
    kd.teacher(data, base, "runs/teacher", kd.TrainConfig(epochs=3))
    res = kd.distill(data, "runs/teacher", "runs/xtc", kd.XTCConfig(student_layers=3))
    kd.evaluate(model, encoded, "classification")                 # bitbert eval
    kd.export_student(...); kd.load_exported(res["export"])       # bitbert export
    kd.predict(res["export"], ["a gripping film"])               # bitbert predict
    kd.compare.compare(...)                                       # bitbert compare
plus ``kd.layer_reduce`` (XTC's layer reduction) and ``kd.tws_split`` (Ternary Weight Splitting).
"""

from . import hf  # noqa: E402,F401  (registers the "bitbert" quantization method with transformers)
from bitops.tws import tws_split_ as tws_split  # noqa: E402
from .binarybert import BinaryBERTConfig, ternarybert_config  # noqa: E402
from .data import load_mr  # noqa: E402
from .export import export_student, load_exported, predict  # noqa: E402
from .losses import KDWeights, kd_loss  # noqa: E402
from .models import QuantSpec, quantize_student, skip_layers  # noqa: E402
from .models import reduce_layers as layer_reduce  # noqa: E402
from .pipelines import XTCConfig, distill, xtc  # noqa: E402
from .pipelines import finetune_teacher as teacher  # noqa: E402
from .trainer import TrainConfig, evaluate  # noqa: E402
from . import compare  # noqa: E402,F401  (kd.compare.compare: bitbert compare)

__all__ = [
    "teacher", "distill", "xtc", "evaluate", "export_student", "load_exported", "predict", "compare", "layer_reduce",
    "tws_split", "skip_layers", "quantize_student", "kd_loss", "load_mr", "QuantSpec", "KDWeights", "TrainConfig",
    "XTCConfig", "BinaryBERTConfig", "ternarybert_config",
]
