"""Distill a 1-bit BERT on MR inside the Hugging Face ecosystem: transformers' Trainer runs kd's
KD losses on a student built from bitops layers (kd.hf.DistillationTrainer), and the result is
saved packed and loaded back with AutoModelForSequenceClassification.from_pretrained.

  1. teacher: fine-tuned on MR by a plain Trainer (task loss), unless --teacher names a folder
     already fine-tuned (e.g. `bitbert teacher`'s output);
  2. student: the teacher's layers reduced by XTC's skip rule (--student-layers), its attention and
     FFN Linears, pooler and word embeddings swapped for 1-bit bitops layers with 8-bit activations;
  3. DistillationTrainer: one-stage KD (soft cross-entropy on logits, attention-score and
     hidden-state MSE), evaluated on the MR dev split every epoch;
  4. freeze (packed words replace the latent weights), kd.hf.attach, save_pretrained; reload with
     from_pretrained and report dev accuracy and the weights' size.

Usage: python examples/hf_trainer_distill.py --out runs/hf-distill [--teacher DIR] [--student-layers 3]
           [--epochs 3] [--max-steps N] [--train-limit N]
Real budgets (XTC's are far longer): see `bitbert distill --help`. Runs on CPU or one CUDA GPU.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

import kd
from kd.data import load_mr
from kd.models import QuantSpec, freeze_student, load_classifier, quantize_student, reduce_layers, skip_layers, teacher_base_path


def encode(examples, tokenizer, max_length):
    """Trainer dataset: one dict per sentence (input_ids, token_type_ids, labels); the collator pads."""
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length, return_token_type_ids=True)
    return [{"input_ids": i, "token_type_ids": t, "labels": e.label} for i, t, e in zip(enc["input_ids"], enc["token_type_ids"], examples)]


def accuracy(pred) -> dict:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


@torch.no_grad()
def dev_accuracy(model, dataset, collator, batch_size: int) -> float:
    """Accuracy of ``model`` on ``dataset``. (Trainer refuses quantized models that cannot train,
    even for evaluation, so a frozen packed model is evaluated here.)"""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    right = 0
    for batch in loader:
        labels = batch.pop("labels")
        right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return right / len(dataset)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (teacher/, trainer/, student/)")
    ap.add_argument("--base", default=None, help="BERT base to fine-tune as teacher (default: the embedded all-MiniLM-L6-v2)")
    ap.add_argument("--teacher", default=None, help="an MR-fine-tuned BERT classifier folder: skips step 1")
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop each Trainer after this many steps (-1: --epochs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training sentences (0: all)")
    ap.add_argument("--eval-limit", type=int, default=0, help="use the first N dev sentences (0: all)")
    args = ap.parse_args(argv)

    data = load_mr()
    train_ex, dev_ex = data.train[: args.train_limit or None], data.dev[: args.eval_limit or None]
    tok = AutoTokenizer.from_pretrained(args.teacher or args.base or teacher_base_path())
    train, dev = encode(train_ex, tok, args.max_length), encode(dev_ex, tok, args.max_length)

    def training_args(name, lr):
        return TrainingArguments(
            output_dir=os.path.join(args.out, name), per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, learning_rate=lr, num_train_epochs=args.epochs,
            max_steps=args.max_steps, eval_strategy="epoch", save_strategy="no", logging_steps=50,
            report_to="none", seed=0, disable_tqdm=True,
        )

    common = dict(train_dataset=train, eval_dataset=dev, data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
    # 1. Teacher (kd's capturing attention, so the student can match its attention scores).
    if args.teacher:
        teacher = load_classifier(args.teacher)
    else:
        teacher = load_classifier(args.base or teacher_base_path(), data.num_labels, data.task_type)
        Trainer(model=teacher, args=training_args("teacher", 5e-5), **common).train()
    teacher.config.id2label, teacher.config.label2id = dict(enumerate(data.labels)), {n: i for i, n in enumerate(data.labels)}

    # 2. Student: XTC's layer reduction, then 1-bit layers (the `bitbert distill` defaults).
    layer_map = skip_layers(teacher.config.num_hidden_layers, args.student_layers)
    spec = QuantSpec(pooler=1)
    student = quantize_student(reduce_layers(teacher.cpu(), layer_map), spec)

    # 3. Distillation.
    trainer = kd.hf.DistillationTrainer(
        model=student, teacher=teacher, layer_map=layer_map, task_type=data.task_type,
        args=training_args("trainer", args.lr), **common,
    )
    trainer.train()
    distilled = trainer.evaluate()

    # 4. Packed model, saved and loaded the transformers way.
    path = os.path.join(args.out, "student")
    kd.hf.attach(freeze_student(student.cpu().eval()), spec).save_pretrained(path)
    tok.save_pretrained(path)
    loaded = AutoModelForSequenceClassification.from_pretrained(path)
    reloaded = {"eval_accuracy": dev_accuracy(loaded, dev, DataCollatorWithPadding(tok), args.batch_size)}
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    print(f"student dev accuracy {distilled['eval_accuracy']:.4f} while training, {reloaded['eval_accuracy']:.4f} "
          f"packed and reloaded from {path} ({size / 2**20:.2f} MiB of weights)")
    return {"trainer": trainer, "distilled": distilled, "reloaded": reloaded, "path": path, "bytes": size}


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
