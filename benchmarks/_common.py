"""Small helpers shared by the benchmarks (not a benchmark itself).

Importing this module puts the repository root first on ``sys.path``, so the benchmarks measure the
working tree's ``proda`` even when another copy is installed in site-packages.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def single_thread() -> None:
    """One torch / BLAS thread: the machine is small and shared, and one thread makes timings comparable."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """A plain-text table (numbers already formatted by the caller), printed and returned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    out += [f"  {n}" for n in notes]
    text = "\n".join(out)
    print(text + "\n", flush=True)
    return text


def cli(run: Callable[[bool], dict], doc: str | None) -> None:
    """The command line of a benchmark module: ``[--quick] [--json FILE]``."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    result = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
