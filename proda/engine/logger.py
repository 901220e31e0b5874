"""One metrics writer: console, a JSON-lines file and TensorBoard, from one call, on the main process only."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from . import dist


class MetricsWriter:
    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = dist.is_main()
        self._tb = None
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is a dependency, but the loop must not need it
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def write(self, iteration: int, metrics: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"kind": kind, "iteration": iteration, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, iteration)

    def add_image(self, tag: str, image_chw, iteration: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image_chw, iteration)

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        return value.item()
    return value


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl (a torn last line from a killed run is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows
