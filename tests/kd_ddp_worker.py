"""Worker of test_kd_ddp: trains a tiny BERT with kd.trainer (DDP when started by torchrun) and
saves each process's final weights. Usage: kd_ddp_worker.py BASE_DIR OUT_DIR"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_helpers import mr_subset  # noqa: E402

from kd import trainer  # noqa: E402
from kd.data import Encoded  # noqa: E402
from kd.losses import task_loss  # noqa: E402
from kd.models import load_classifier  # noqa: E402


def main(base, out):
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    data = mr_subset(64, 16)
    tr, dev = Encoded(data.train, tok, 24, "classification"), Encoded(data.dev, tok, 24, "classification")
    model = load_classifier(base)

    def loss_fn(net, b):
        logits = net(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]).logits
        return {"loss": task_loss(logits, b["labels"], "classification")}

    cfg = trainer.TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup=0.0, progress=False, device="cpu")
    res = trainer.train(model, tr, dev, loss_fn, cfg, os.path.join(out, "run"), "classification")
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"final": res["final_state"], "world": int(os.environ.get("WORLD_SIZE", "1"))}, os.path.join(out, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
