"""Shared pieces of the kd tests: a tiny random-init BERT with the real tokenizer, small tasks."""
from __future__ import annotations

import functools
import os

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from kd.data import TaskData, load_mr
from kd.models import teacher_base_path

from conftest import torch_threads


@functools.lru_cache(maxsize=None)
def vocab_size() -> int:
    return AutoTokenizer.from_pretrained(teacher_base_path()).vocab_size


def tiny_config(layers: int = 2, dropout: float = 0.1, num_labels: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size(), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )


def save_tiny_base(path: str, layers: int = 2, dropout: float = 0.1, seed: int = 0) -> str:
    """A random-init BERT base folder (weights + the embedded model's tokenizer)."""
    torch.manual_seed(seed)
    BertForSequenceClassification(tiny_config(layers, dropout)).save_pretrained(path)
    AutoTokenizer.from_pretrained(teacher_base_path()).save_pretrained(path)
    return path


def mr_subset(n_train: int = 64, n_dev: int = 32) -> TaskData:
    d = load_mr()
    return TaskData("mr", "classification", d.labels, d.train[:n_train], d.dev[:n_dev], d.test[:n_dev])


def write_lines(path: str, lines, mode: str = "w") -> str:
    with open(path, mode) as f:
        f.write("\n".join(lines) + "\n")
    return os.fspath(path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """kd tests run torch on one thread: the machine is shared, and oversubscribed OpenMP threads
    make small models 10x slower; the resume test also needs a fixed thread count."""
    with torch_threads(1):
        yield
