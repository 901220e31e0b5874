"""Calibrate the synthetic benchmark's domain gap against a real-setting figure stated in advance.

For each gap (the share of the target's appearance change, ``proda synth --gap``), write the benchmark, train
the source-only baseline and the oracle exactly as the pipeline does (``synthetic/source_only`` and
``synthetic/oracle``: same model, augmentation and budget), and compare source-only / oracle target mIoU with
the target ratio (default 0.55: DeepLab-v2 ResNet-101 on GTA5 -> Cityscapes, 36.6 source-only against about
66 trained on Cityscapes). No ProDA stage runs here: the gap is chosen before any adaptation is measured.

    python benchmarks/calibrate_gap.py OUT [--gaps 1.0,0.9,0.8,0.7] [--seed 1337] [--parallel 2]
        [--target-ratio 0.55] [--size 192x96] [dotted overrides for both runs, e.g. run.device=cuda]

``--size`` renders the benchmark at another image size (``proda synth --size``); scale ``data.crop_size`` with
it in the overrides. The references' budget is an override too (``optim.iterations=6000 run.eval_every=1500``
is the 6000-iteration setting of ``configs/synthetic/pipeline_6k.yaml``).

Writes ``OUT/gap_<g>/data`` (the benchmark), ``OUT/gap_<g>/{source_only,oracle}`` (the runs; rerunning skips
finished ones, as ``proda train`` does), and ``OUT/calibration.json`` / ``OUT/calibration.md``: per gap the
two figures, their ratio, the classes the oracle never segments (IoU 0), and the gap whose ratio is nearest
the target among those where the oracle segments every class (nearest overall if none does).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common  # noqa: F401  (the working tree's proda first on sys.path)

from proda.cli import parse_size
from proda.data.synthetic import DEFAULT_SIZE, write_benchmark
from proda.io import write_bytes, write_json

RUNS = ("source_only", "oracle")


def train(config: str, out_dir: Path, data: Path, seed: int, overrides: list[str], log: Path) -> dict:
    """One supervised run through the command line (a process of its own, so runs can share a machine)."""
    cmd = [sys.executable, "-m", "proda", "train", f"synthetic/{config}", f"run.out_dir={out_dir}",
           f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.seed={seed}",
           *overrides, "--no-progress"]
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log}")
    return json.loads((out_dir / "result.json").read_text())["final"]


def choose(rows: dict[str, dict], target_ratio: float) -> str:
    """The gap whose ratio is nearest the target, among those whose oracle segments every class."""
    complete = [g for g, r in rows.items() if not r["oracle_zero_classes"]]
    return min(complete or list(rows), key=lambda g: abs(rows[g]["ratio"] - target_ratio))


def format_table(summary: dict) -> str:
    lines = ["| gap | source-only | oracle | source-only / oracle | classes the oracle never segments |",
             "|---|---|---|---|---|"]
    for gap, r in summary["gaps"].items():
        mark = " (chosen)" if gap == summary["chosen"] else ""
        lines.append(f"| {gap}{mark} | {r['source_only']:.2f} | {r['oracle']:.2f} | {r['ratio']:.3f} | "
                     f"{', '.join(r['oracle_zero_classes']) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gaps", default="1.0,0.9,0.8,0.7")
    ap.add_argument("--seed", type=int, default=1337, help="training seed (run.seed)")
    ap.add_argument("--benchmark-seed", type=int, default=0)
    ap.add_argument("--target-ratio", type=float, default=0.55)
    ap.add_argument("--parallel", type=int, default=2, help="training processes at a time")
    ap.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="image size WxH of the benchmark")
    ap.add_argument("overrides", nargs="*", help="dotted overrides for every run (e.g. run.device=cuda)")
    args = ap.parse_intermixed_args(argv)
    gaps = [f"{float(g):g}" for g in args.gaps.split(",")]

    for gap in gaps:  # the benchmarks first: each writer uses the machine's cores itself
        write_benchmark(args.out / f"gap_{gap}" / "data", seed=args.benchmark_seed, size=args.size, gap=float(gap),
                        progress=False)
    jobs = {(gap, run): args.out / f"gap_{gap}" / run for gap in gaps for run in RUNS}
    with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
        futures = {key: pool.submit(train, key[1], out_dir, args.out / f"gap_{key[0]}" / "data", args.seed,
                                    args.overrides, out_dir.with_suffix(".log"))
                   for key, out_dir in jobs.items()}
        finals = {key: f.result() for key, f in futures.items()}

    rows = {}
    for gap in gaps:
        low, high = finals[(gap, "source_only")], finals[(gap, "oracle")]
        rows[gap] = {"source_only": low["miou"], "oracle": high["miou"], "ratio": low["miou"] / high["miou"],
                     "oracle_zero_classes": [c for c, v in high["per_class_iou"].items() if v == 0],
                     "source_only_per_class_iou": low["per_class_iou"], "oracle_per_class_iou": high["per_class_iou"]}
    summary = {"target_ratio": args.target_ratio, "seed": args.seed, "size": list(args.size),
               "overrides": args.overrides, "gaps": rows,
               "chosen": choose(rows, args.target_ratio)}
    write_json(args.out / "calibration.json", summary)
    table = format_table(summary)
    write_bytes(args.out / "calibration.md", (f"# Gap calibration (target source-only / oracle "
                                              f"{args.target_ratio})\n\n{table}\n").encode())
    print(table)
    print(f"chosen gap: {summary['chosen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
