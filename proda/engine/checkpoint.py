"""Complete, atomic, verified checkpoints with a retention rule.

A run folder holds ``latest.pth`` (always the newest state), ``best.pth`` (best validation mIoU) and the
last ``keep_last`` states as ``iter_NNNNNNN.pth`` (hard links to the same file as ``latest.pth``, so keeping
them costs no extra writes). Every file is written through :func:`proda.io.atomic_write` and carries a
SHA-256 of its payload, checked when it is loaded: a torn or corrupted file is an error that names it.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import _fsync_dir, atomic_write, remove_stale_temp_files

MAGIC = b"PRODA-CKPT-1\n"
_ITER_FILE = re.compile(r"^iter_(\d+)\.pth$")


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
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
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


def save_run_checkpoint(run_dir: Path, state: dict[str, Any], iteration: int, keep_last: int, is_best: bool) -> None:
    """Write the state once, hard-link it as iter_NNNNNNN.pth / best.pth / latest.pth, prune to ``keep_last``.

    latest.pth is switched last: a process killed in between resumes from the previous latest.pth and
    rewrites the others, so best.pth can never be older than the ``best_miou`` that latest.pth records.
    """
    latest, best = run_dir / "latest.pth", run_dir / "best.pth"
    first = run_dir / f"iter_{iteration:07d}.pth" if keep_last > 0 else best if is_best else latest
    save_checkpoint(first, state)
    if is_best and first != best:
        _link_or_copy(first, best)
    if first != latest:
        _link_or_copy(first, latest)
    kept = sorted((p for p in run_dir.iterdir() if _ITER_FILE.match(p.name)), key=lambda p: p.name)
    for old in kept[: max(0, len(kept) - keep_last)]:
        old.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` the same content as ``src`` (hard link where possible)."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with atomic_write(tmp, "wb") as f:
            f.write(src.read_bytes())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


# The files a run writes in its folder (and sub-folders), whose temporary files a kill can leave behind.
RUN_FILES: dict[str, tuple[str, ...]] = {
    ".": ("latest.pth", "best.pth", "iter_*.pth", "config.yaml", "metrics.jsonl", "result.json"),
    "panels": ("*.png",),
}


def remove_stale_run_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed run left in its folder (called when a run starts or resumes)."""
    return [p for sub, names in RUN_FILES.items() for p in remove_stale_temp_files(Path(run_dir) / sub, names)]
