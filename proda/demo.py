"""`proda demo`: the whole pipeline on the embedded synthetic benchmark, with its report.

It writes the benchmark into ``OUT/data`` (or uses ``--data``), runs ``configs/synthetic/pipeline.yaml``
into ``OUT/runs`` (source-only and oracle baselines included), and prints the report table. Running the
same command again skips what is finished and resumes what was interrupted.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .io import write_json
from .pipeline import run_pipeline
from .report import format_table

PIPELINE = Path(__file__).parent / "configs" / "synthetic" / "pipeline.yaml"


def run_demo(out: str | Path, data: str | Path | None = None, progress: bool = True,
             overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("proda demo runs in one process; under torchrun use "
                          "`proda pipeline synthetic/pipeline data.source_root=... data.target_root=...`")
    out = Path(out)
    t0 = time.time()
    if data is None:
        from .data.synthetic import write_benchmark

        data = out / "data"
        write_benchmark(data, seed=0, progress=progress)
        print(f"synthetic benchmark in {data} ({time.time() - t0:.1f} s)")
    data = Path(data)
    for sub in ("gta5", "cityscapes"):
        if not (data / sub).is_dir():
            raise DataError(f"{data}: expected a folder {sub}/ in the official layout (see `proda synth`)")
    report = run_pipeline(PIPELINE, [f"out_dir={out / 'runs'}", f"data.source_root={data / 'gta5'}",
                                     f"data.target_root={data / 'cityscapes'}", *overrides], progress=progress)
    report["data"] = str(data)
    report["demo_wall_s"] = round(time.time() - t0, 1)
    write_json(out / "report.json", report)
    print("\n" + format_table(report))
    print(f"\nreport: {out / 'runs' / 'report.md'}, {out / 'runs' / 'report.png'}; demo wall time {report['demo_wall_s']:.0f} s")
    return report
