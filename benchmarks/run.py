"""Run every benchmark and print their tables: ``python benchmarks/run.py [--json FILE] [--quick]``.

Each benchmark module exposes ``run(quick: bool) -> dict`` and prints its own table; the JSON file holds
``{"quick": ..., "machine": {...}, "wall_s": {name: s}, "benchmarks": {name: dict}}``. A missing module is
reported as ``{"missing": ...}``, a failing one as ``{"error": ...}`` (and the exit status is then 1).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402,F401  (repository root on sys.path)

BENCHMARKS = ["crop_prep", "storage", "stage1_step", "distributed"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run proda's benchmarks (see benchmarks/README.md).")
    ap.add_argument("--json", help="write all figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer samples and repetitions (~3 minutes)")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    ap.add_argument("--demo-run", help="runs folder of a finished `proda demo` whose real soft labels the storage "
                                       "benchmark measures (default demo_out/runs)")
    args = ap.parse_args(argv)
    if args.demo_run:
        os.environ["PRODA_DEMO_RUN"] = args.demo_run

    import torch

    results: dict = {
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "wall_s": {},
        "benchmarks": {},
    }
    failed = False
    for name in args.only or BENCHMARKS:
        print(f"=== {name} ===", flush=True)
        if not (HERE / f"{name}.py").is_file():
            print(f"benchmarks/{name}.py is missing; skipped\n", flush=True)
            results["benchmarks"][name] = {"missing": f"benchmarks/{name}.py not found"}
            continue
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
            results["benchmarks"][name] = module.run(args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        results["wall_s"][name] = round(time.perf_counter() - t0, 1)
        print(f"({name}: {results['wall_s'][name]} s)\n", flush=True)

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))
        print(f"figures written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
