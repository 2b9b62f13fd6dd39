"""Checkpoint files that are written atomically and verified when read.

A checkpoint is what ``torch.save`` writes, followed by a trailer line holding the sha256 of those
bytes::

    <torch.save zip bytes> b"\\nbitbert-sha256:" <64 hex digits> b"\\n"

``torch.load`` still reads the file (zip readers ignore trailing bytes), but it does not check the
zip's CRCs: a flipped byte inside a tensor loads silently as a wrong value. :func:`load_checkpoint`
checks the trailer first, so a truncated file (the trailer is gone), a flipped byte or a swapped
tensor (the digest differs) stops with :class:`CheckpointError` and nothing is loaded.

:func:`save_checkpoint` writes to a temporary file in the same folder, fsyncs it, renames it over
the target and fsyncs the folder: a crash at any moment leaves the old checkpoint or the new one,
whole, never a mix.
"""
from __future__ import annotations

import hashlib
import io
import os

import torch

TRAILER = b"\nbitbert-sha256:"
_TRAILER_LEN = len(TRAILER) + 64 + 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: the message names the file and what is wrong."""


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(obj, path: str) -> None:
    """``torch.save(obj)`` plus its sha256 trailer, written atomically to ``path``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, payload + TRAILER + hashlib.sha256(payload).hexdigest().encode() + b"\n")


def load_checkpoint(path: str, map_location="cpu"):
    """Read a checkpoint written by :func:`save_checkpoint`, checking its sha256 before unpickling."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        data = f.read()
    trailer = data[-_TRAILER_LEN:]
    if len(data) < _TRAILER_LEN or not trailer.startswith(TRAILER) or not trailer.endswith(b"\n"):
        raise CheckpointError(
            f"{path}: no bitbert checksum trailer at the end of the file ({len(data)} bytes); the file is "
            "truncated or was not written by bitbert. Delete it and restart the stage, or resume from a copy"
        )
    payload, stored = data[:-_TRAILER_LEN], trailer[len(TRAILER):-1].decode("ascii", "replace")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != stored:
        raise CheckpointError(
            f"{path}: sha256 {actual} does not match the {stored} recorded when it was written "
            "(the file is corrupted); delete it and restart the stage, or resume from a copy"
        )
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
