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
"""

from . import hf  # noqa: E402,F401  (registers the "bitbert" quantization method with transformers)
