"""A training run's checkpoint folder: the retention rule and the clean-up after a kill.

A run folder holds ``latest.pth`` (always the newest state), ``best.pth`` (best validation mIoU) and the
last ``keep_last`` states as ``iter_NNNNNNN.pth`` (hard links to the same file as ``latest.pth``, so keeping
them costs no extra writes). Each file is written by :func:`proda.checkpoint_io.save_checkpoint` (atomic,
checksummed).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..checkpoint_io import save_checkpoint
from ..io import _fsync_dir, atomic_write, remove_stale_temp_files

_ITER_FILE = re.compile(r"^iter_(\d+)\.pth$")


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
