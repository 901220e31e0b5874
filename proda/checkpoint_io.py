"""Checkpoint files: written atomically with a checksum, read without ever running code from them.

Every layer reads and writes ``.pth``/``.pkl`` files through this module (training runs, converted weights,
prototype banks, the original ProDA releases, torchvision/SimCLR backbones). A proda file starts with
:data:`MAGIC` and the SHA-256 of its payload, checked on load: a torn or corrupted file is an error that names
it. Any other file is read as a plain ``torch.save`` payload.

Loading a user's file never runs code in it: ``torch.load(weights_only=True)`` unpickles only tensors and
plain containers, plus :data:`ALLOWED_GLOBALS`, the few numpy types that checkpoints proda and the original
code wrote contain (numpy's random-generator state, numpy scalars such as the original's ``best_iou``). A file
that needs anything else (a class whose unpickling would execute code) is refused with a
:class:`~proda.errors.CheckpointError` naming the file and what it asked for; nothing of it runs.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .io import atomic_write

MAGIC = b"PRODA-CKPT-1\n"


_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
#: Globals a checkpoint may name besides torch's own: numpy arrays, dtypes and scalars (rebuilding them runs no
#: code of the file's). Older proda checkpoints hold numpy's RNG state as an array, the original's ``best_iou``
#: is a numpy float. Files pickled under numpy 1 name the multiarray functions by their old module path.
ALLOWED_GLOBALS: list = [
    np.ndarray, np.dtype, _multiarray._reconstruct, _multiarray.scalar,
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_multiarray.scalar, "numpy.core.multiarray.scalar"),
    *(type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"),
]
_ALLOWED_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}


def _unsafe_globals(payload: bytes) -> list[str]:
    """The globals a pickled payload names that :func:`load_checkpoint` does not allow (read, not run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(payload))
    except Exception:  # noqa: BLE001 - not a torch file at all: nothing to name
        return []
    return [n for n in names if n not in _ALLOWED_NAMES]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    with atomic_write(path, "wb") as f:
        f.write(MAGIC)
        f.write(digest + b"\n")
        f.write(payload)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a proda checkpoint (verified) or any plain ``torch.save`` file (for imported weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    if data.startswith(MAGIC):
        header_end = len(MAGIC) + 65
        digest, payload = data[len(MAGIC) : header_end - 1], data[header_end:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CheckpointError(f"{path}: checkpoint is corrupt or truncated (checksum mismatch)")
    else:
        payload = data
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        refused = _unsafe_globals(payload)
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: unpickling it would import {', '.join(refused)}, which can run code; "
                "proda loads only tensors, plain containers and numpy arrays. If you trust the file, re-save its "
                "tensors (e.g. its state_dict) with torch.save and load that") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's content; for a proda checkpoint the one its header records (read
    without loading the file). The same for a copied or moved file, different for a rewritten one."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 65)
        if head.startswith(MAGIC):
            return head[len(MAGIC):-1].decode()
        digest = hashlib.sha256(head)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
