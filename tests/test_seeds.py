"""`proda pipeline --seeds`: one pipeline per training seed in OUT/seed_N, and mean +- std over them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import proda.pipeline
from fixtures import write_tiny_domains
from proda.cli import main
from proda.pipeline import run_seeds, seeds_summary

PIPELINE = Path(__file__).parents[1] / "proda" / "configs" / "synthetic" / "pipeline.yaml"
TINY = ["data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16", "optim.iterations=1",
        "run.eval_every=1", "warmup.disc_width=4", "run.tensorboard=false", "run.panel_every=0"]


def test_each_seed_in_its_own_folder_and_the_mean_and_std_of_every_stage(tmp_path, capsys):
    data = write_tiny_domains(tmp_path)
    raw = yaml.safe_load(PIPELINE.read_text())  # without the oracle: fewer runs, same machinery
    raw["stages"] = {k: str(PIPELINE.parent / v) for k, v in raw["stages"].items() if k != "oracle"}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["pipeline", str(tmp_path / "pipeline.yaml"), "--no-progress", "--seeds", "7,8", f"out_dir={out}", *data, *TINY]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["seeds"] == [7, 8] and summary["runs"] == {"7": "seed_7", "8": "seed_8"}
    assert list(summary["stages"]) == ["source_only", "warmup", "stage1", "stage2", "stage3"]
    for seed in (7, 8):
        assert yaml.safe_load((out / f"seed_{seed}" / "stage3" / "config.yaml").read_text())["run"]["seed"] == seed
    per_seed = [json.loads((out / f"seed_{seed}" / "report.json").read_text()) for seed in (7, 8)]
    table = (out / "report.md").read_text()
    for stage, row in summary["stages"].items():
        assert row["miou"] == [report["stages"][stage]["target_miou"] for report in per_seed]
        assert (row["mean"], row["std"]) == (pytest.approx(np.mean(row["miou"])), pytest.approx(np.std(row["miou"])))
        assert f"| {stage} | {row['mean']:.2f} ± {row['std']:.2f} | - | {row['miou'][0]:.2f} | {row['miou'][1]:.2f} |" in table
    assert summary["gap_closed"] == {}  # no oracle, no gap
    assert "| stage | target mIoU (mean ± std) | gap closed (mean ± std) | seed 7 | seed 8 |" in capsys.readouterr().out
    assert not (out / "source_only").exists()  # nothing of a single-seed layout


def test_one_seed_is_the_plain_pipeline_with_that_seed(monkeypatch, tmp_path):
    calls = []

    def pipeline(path, overrides, *rest):
        calls.append(overrides)
        return {"stages": {}}

    monkeypatch.setattr(proda.pipeline, "run_pipeline", pipeline)
    run_seeds(PIPELINE, [f"out_dir={tmp_path}", "optim.lr=0.1"], [5])
    assert calls == [[f"out_dir={tmp_path}", "optim.lr=0.1", "run.seed=5"]]
    calls.clear()
    run_seeds(PIPELINE, [f"out_dir={tmp_path}", "optim.lr=0.1"], [5, 6])
    assert calls == [["optim.lr=0.1", f"out_dir={tmp_path / 'seed_5'}", "run.seed=5"],
                     ["optim.lr=0.1", f"out_dir={tmp_path / 'seed_6'}", "run.seed=6"]]


def test_the_summary_of_seeds_with_a_stage_one_seed_has_not_reached():
    reports = {
        1: {"stages": {"source_only": {"target_miou": 20.0}, "oracle": {"target_miou": 40.0}, "stage1": {"target_miou": 30.0}},
            "gap_closed": {"stage1": 0.5}},
        2: {"stages": {"source_only": {"target_miou": 22.0}, "oracle": {"target_miou": 42.0}}, "gap_closed": {}},
    }
    summary = seeds_summary(Path("p.yaml"), [1, 2], reports)
    assert summary["stages"]["source_only"] == {"miou": [20.0, 22.0], "mean": 21.0, "std": 1.0}
    assert summary["stages"]["stage1"] == {"miou": [30.0, None], "mean": 30.0, "std": 0.0}
    assert summary["gap_closed"] == {"stage1": {"share": [0.5, None], "mean": 0.5, "std": 0.0}}
    assert "| stage1 | 30.00 ± 0.00 | 50 ± 0 % | 30.00 | - |" in proda.pipeline.format_seeds_summary(summary)


def test_seeds_and_run_seed_together_are_refused(capsys):
    assert main(["pipeline", "synthetic/pipeline", "run.seed=3", "--seeds", "1,2"]) == 2
    assert "run.seed=... and --seeds both set the training seed" in capsys.readouterr().err
