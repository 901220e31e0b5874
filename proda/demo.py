"""`proda demo`: the end-to-end run on the embedded synthetic benchmark, with a report.

It generates the benchmark (or uses ``--data``), trains every stage that exists with the configs in
``proda/configs/synthetic/``, and writes ``report.json`` and a table of target mIoU per stage.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import load_config
from .data.labels import class_names
from .errors import DataError
from .io import write_json

CONFIG_DIR = Path(__file__).parent / "configs" / "synthetic"
DEMO_STAGES = ("source_only", "oracle")


def run_demo(out: str | Path, data: str | Path | None = None, progress: bool = True,
             overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    from .engine.trainer import train

    out = Path(out)
    if data is None:
        from .data.synthetic import write_benchmark

        data = out / "data"
        t0 = time.time()
        write_benchmark(data, seed=0, progress=progress)
        print(f"synthetic benchmark in {data} ({time.time() - t0:.1f} s)")
    data = Path(data)
    for sub in ("gta5", "cityscapes"):
        if not (data / sub).is_dir():
            raise DataError(f"{data}: expected a folder {sub}/ in the official layout (see `proda synth`)")
    report: dict[str, Any] = {"data": str(data), "stages": {}}
    for name in DEMO_STAGES:
        cfg = load_config(CONFIG_DIR / f"{name}.yaml", [
            f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}",
            f"run.out_dir={out / 'runs' / name}", *overrides,
        ])
        print(f"\n== {name} ==")
        result = train(cfg, progress=progress)
        report["stages"][name] = {
            "target_miou": result.final["miou"],
            "per_class_iou": result.final["per_class_iou"],
            "wall_s": round(result.wall_s, 1),
            "run_dir": str(result.run_dir),
        }
        write_json(out / "report.json", report)
    print()
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    stages = report["stages"]
    names = list(class_names(19))
    lines = [f"{'stage':<14}{'target mIoU':>12}{'wall s':>9}"]
    for stage, entry in stages.items():
        lines.append(f"{stage:<14}{entry['target_miou']:>12.2f}{entry['wall_s']:>9.0f}")
    header = f"{'class':<15}" + "".join(f"{s[:11]:>12}" for s in stages)
    lines += ["", header]
    for name in names:
        row = [stages[s]["per_class_iou"].get(name) for s in stages]
        lines.append(f"{name:<15}" + "".join(f"{'-':>12}" if v is None else f"{v:>12.1f}" for v in row))
    return "\n".join(lines)
