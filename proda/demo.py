"""`proda demo`: the end-to-end run on the embedded synthetic benchmark, with a report.

It generates the benchmark (or uses ``--data``) and runs, each into its own folder under ``OUT/runs``:
source-only baseline, oracle, warm-up (from the source-only model), prototypes and soft pseudo labels
of the warm-up model, stage 1. A finished step is skipped and an interrupted one resumes, so running the
same command again continues where it stopped. ``OUT/report.json`` and a table give target mIoU per stage.
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


def run_demo(out: str | Path, data: str | Path | None = None, progress: bool = True,
             overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    from .engine.prototypes import prototypes_command
    from .engine.pseudo_label import pseudo_label_command
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
    runs = out / "runs"
    common = [f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", *overrides]

    def config(name: str, *extra: str):
        return load_config(CONFIG_DIR / f"{name}.yaml", [f"run.out_dir={runs / name}", *common, *extra])

    report: dict[str, Any] = {"data": str(data), "stages": {}}

    def record(name: str, result, **extra: Any) -> None:
        report["stages"][name] = {
            "target_miou": result.final["miou"],
            "per_class_iou": result.final["per_class_iou"],
            "wall_s": round(result.wall_s, 1),
            "run_dir": str(result.run_dir),
            **extra,
        }
        write_json(out / "report.json", report)

    for name in ("source_only", "oracle"):
        print(f"\n== {name} ==")
        record(name, train(config(name), progress=progress))

    print("\n== warmup ==")
    warmup_cfg = config("warmup", f"model.init={runs / 'source_only' / 'latest.pth'}")
    record("warmup", train(warmup_cfg, progress=progress))
    warm_ckpt = runs / "warmup" / "latest.pth"
    t0 = time.time()
    protos = runs / "warmup" / "prototypes.pth"
    if not protos.is_file():
        prototypes_command(str(warm_ckpt), warmup_cfg, str(protos), progress=progress)
    soft = pseudo_label_command(str(warm_ckpt), warmup_cfg, soft=True, out=str(runs / "warmup" / "pseudo_soft"),
                                progress=progress)
    report["stages"]["warmup"]["pseudo_label_wall_s"] = round(time.time() - t0, 1)

    print("\n== stage1 ==")
    stage1 = train(config("stage1", f"model.init={warm_ckpt}", f"stage1.soft_labels={soft}",
                          f"stage1.prototypes={protos}"), progress=progress)
    record("stage1", stage1, pseudo_label_miou=stage1.final.get("pseudo_label_miou"))
    print()
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    stages = report["stages"]
    names = list(class_names(19))
    lines = [f"{'stage':<14}{'target mIoU':>12}{'wall s':>9}"]
    for stage, entry in stages.items():
        lines.append(f"{stage:<14}{entry['target_miou']:>12.2f}{entry['wall_s']:>9.0f}")
        quality = entry.get("pseudo_label_miou")
        if quality:
            lines.append(f"{'':<14}pseudo labels: raw {quality['raw']:.2f} -> rectified {quality['rectified']:.2f} mIoU")
    header = f"{'class':<15}" + "".join(f"{s[:11]:>12}" for s in stages)
    lines += ["", header]
    for name in names:
        row = [stages[s]["per_class_iou"].get(name) for s in stages]
        lines.append(f"{name:<15}" + "".join(f"{'-':>12}" if v is None else f"{v:>12.1f}" for v in row))
    return "\n".join(lines)
