"""The pipeline on a tiny dataset: every step runs once, a finished run is skipped, --from reruns."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fixtures import write_tiny_domains
from proda.pipeline import Pipeline, PipelineSpec, run_pipeline
from proda.report import gap_closed
from proda.errors import ConfigError

PIPELINE = Path(__file__).parents[1] / "proda" / "configs" / "synthetic" / "pipeline.yaml"
TINY = ["data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16", "optim.iterations=2",
        "run.eval_every=2", "warmup.disc_width=4", "run.tensorboard=false", "ssl.proj_hidden=16", "ssl.proj_dim=8"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    overrides = [f"out_dir={root / 'runs'}", *write_tiny_domains(root), *TINY]
    report = run_pipeline(PIPELINE, overrides, progress=False)
    return root, overrides, report


def test_every_step_ran_and_the_report_is_complete(finished):
    root, _, report = finished
    runs = root / "runs"
    # the oracle trains in the background beside the source-only run and is recorded when that one ends
    assert list(report["stages"]) == ["source_only", "oracle", "warmup", "stage1", "stage2", "stage3"]
    for stage in ("source_only", "oracle", "warmup", "stage1", "stage2", "stage3"):
        assert 0.0 <= report["stages"][stage]["target_miou"] <= 100.0
        assert (runs / stage / "config.yaml").is_file() and (runs / stage / "metrics.jsonl").is_file()
    assert "target val mIoU" in (runs / "oracle" / "train.log").read_text()
    assert set(report["stages"]["stage1"]["pseudo_label_miou"]) == {"raw", "rectified"}
    assert (runs / "warmup" / "prototypes.pth").is_file()
    assert json.loads((runs / "report.json").read_text())["stages"].keys() == report["stages"].keys()
    assert (runs / "report.md").read_text().startswith("# proda pipeline report")
    assert (runs / "report.png").stat().st_size > 10_000
    assert set(report["gap_closed"]) <= {"warmup", "stage1", "stage2", "stage3"}
    # the synthetic distillation keeps each class's most confident 20 % besides confidence > 0.95
    thresholds = json.loads((runs / "stage2" / "result.json").read_text())["final"]["pseudo_label_thresholds"]
    assert len(thresholds) == 19 and all(0.0 <= t <= 0.95 for t in thresholds)
    assert "stage-1 hard labels, confidence > 0.95 or top 20% of its class" in (runs / "report.md").read_text()
    assert report["pseudo_labels"]["hard_labels_1"]["class_keep"] == 0.2


def test_a_finished_pipeline_is_skipped(finished):
    root, overrides, report = finished
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/latest.pth")}
    again = run_pipeline(PIPELINE, overrides, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/latest.pth")} == stamps
    assert again["stages"]["stage3"]["target_miou"] == report["stages"]["stage3"]["target_miou"]


def test_a_copied_pipeline_folder_is_skipped_too(finished, tmp_path):
    """Inputs are recognised by content, not path or modification time: a copy of the run folder (cp -r
    gives new mtimes) is a finished pipeline, not 'inputs changed'."""
    import shutil

    root, overrides, report = finished
    copy = tmp_path / "runs"
    shutil.copytree(root / "runs", copy, copy_function=shutil.copyfile)
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("*/latest.pth")}
    moved = [f"out_dir={copy}", *[o for o in overrides if not o.startswith("out_dir=")]]
    again = run_pipeline(PIPELINE, moved, progress=False)
    assert {p: p.stat().st_mtime_ns for p in copy.glob("*/latest.pth")} == stamps
    assert again["stages"]["stage3"]["target_miou"] == report["stages"]["stage3"]["target_miou"]


def test_a_stage_rerun_with_other_settings_is_refused_not_skipped(finished):
    """A finished stage asked for with another training setting would be skipped and report the old run's
    figures as the new setting's: refused, naming the setting. Evaluation and logging settings still skip."""
    root, overrides, report = finished
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/latest.pth")}
    with pytest.raises(ConfigError, match=r"stage1 ran with other settings than now \(stage1.sce_alpha: 0.0 -> "
                                          r"0.5\); rerun with --from stage1"):
        run_pipeline(PIPELINE, [*overrides, "stage1.sce_alpha=0.5"], progress=False)
    record = root / "runs" / "stage2" / "pipeline_inputs.json"  # as written before settings were recorded
    original = record.read_text()
    record.write_text(json.dumps(json.loads(original)["inputs"]))
    try:
        again = run_pipeline(PIPELINE, [*overrides, "run.eval_every=1", "run.keep_last=3"], progress=False)
    finally:
        record.write_text(original)  # the module's finished pipeline, as the other tests expect it
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/latest.pth")} == stamps
    assert again["stages"]["stage3"]["target_miou"] == report["stages"]["stage3"]["target_miou"]


def test_from_reruns_that_step_and_the_later_ones_only(finished):
    root, overrides, _ = finished
    runs = root / "runs"
    before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/latest.pth")}
    run_pipeline(PIPELINE, overrides, start_from="stage2", progress=False)
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/latest.pth")}
    for stage in ("source_only", "oracle", "warmup", "stage1"):
        assert after[stage] == before[stage], stage
    for stage in ("stage2", "stage3"):
        assert after[stage] != before[stage], stage
    with pytest.raises(ConfigError, match="--from stage9: not a step"):
        run_pipeline(PIPELINE, overrides, start_from="stage9", progress=False)


def test_links_between_stages(tmp_path):
    pipe = Pipeline(PipelineSpec.load(PIPELINE, [f"out_dir={tmp_path}", "data.source_root=s", "data.target_root=t"]))
    cfg = pipe.config("stage3")
    assert cfg.model.init == str(tmp_path / "stage2" / "latest.pth")
    assert cfg.distill.teacher == str(tmp_path / "stage2" / "latest.pth")
    assert cfg.distill.pseudo_labels == str(tmp_path / "stage2" / "pseudo_hard")
    assert pipe.config("stage2").model.init == str(tmp_path / "stage1" / "latest.pth")
    assert pipe.config("stage2").model.init_format == "proda"
    assert pipe.config("warmup").model.init == str(tmp_path / "source_only" / "latest.pth")


def _pipeline_file(tmp_path, **keys) -> Path:
    raw = yaml.safe_load(PIPELINE.read_text())
    raw["stages"] = {k: str(PIPELINE.parent / v) for k, v in raw["stages"].items()}
    raw.update(keys)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_student_can_start_from_a_self_supervised_backbone(tmp_path):
    stages = {**yaml.safe_load(PIPELINE.read_text())["stages"], "ssl": "ssl.yaml"}
    path = _pipeline_file(tmp_path, student_init="ssl", stages={k: str(PIPELINE.parent / v) for k, v in stages.items()})
    pipe = Pipeline(PipelineSpec.load(path, [f"out_dir={tmp_path}", "data.source_root=s", "data.target_root=t"]))
    assert pipe.spec.steps().index("ssl") < pipe.spec.steps().index("stage2")
    cfg = pipe.config("stage2")
    assert (cfg.model.init, cfg.model.init_format) == (str(tmp_path / "ssl" / "latest.pth"), "proda_backbone")


@pytest.mark.parametrize("keys, message", [
    ({"student_init": "imagenet"}, "student_init must be one of ssl, stage1, config"),
    ({"student_init": "ssl"}, "student_init is ssl, but stages has no ssl config"),
    ({"parallel": True}, "unknown key parallel"),
])
def test_bad_pipeline_files_are_named(tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message):
        PipelineSpec.load(_pipeline_file(tmp_path, **keys))


def test_a_failing_background_run_is_reported_with_its_log(tmp_path):
    path = _pipeline_file(tmp_path)
    overrides = [f"out_dir={tmp_path / 'runs'}", f"data.source_root={tmp_path / 'missing'}",
                 f"data.target_root={tmp_path / 'missing'}"]
    pipe = Pipeline(PipelineSpec.load(path, overrides), progress=False)
    from proda.pipeline import BackgroundRun
    from proda.errors import ProdaError

    run = BackgroundRun(pipe, "oracle")
    with pytest.raises(ProdaError, match=r"background oracle run failed \(exit status 2\); see .*train.log"):
        run.finish()


def test_gap_closed():
    report = {"stages": {"source_only": {"target_miou": 20.0}, "oracle": {"target_miou": 60.0},
                         "stage1": {"target_miou": 40.0}, "stage3": {"target_miou": 50.0}}}
    assert gap_closed(report) == {"stage1": 0.5, "stage3": 0.75}


def test_the_pipeline_runs_under_torchrun(finished, tmp_path):
    """2 gloo processes run every step (the oracle in turn, not in the background); rank 0 writes the report."""
    import subprocess
    import sys

    root, overrides, _ = finished
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "proda",
           "pipeline", str(PIPELINE), "--no-progress", f"out_dir={runs}",
           *[o for o in overrides if not o.startswith("out_dir=")], "data.batch_size=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((runs / "report.json").read_text())
    assert set(report["stages"]) == {"source_only", "oracle", "warmup", "stage1", "stage2", "stage3"}
    assert not (runs / "oracle" / "train.log").exists()
    assert "world_size=2" in done.stdout and done.stdout.count("| stage3 |") == 1  # one table, from rank 0
    assert (runs / "stage1" / "pseudo_hard" / "meta.json").is_file()


def test_a_stage_whose_inputs_changed_is_not_resumed(finished):
    """stage 1 rerun by hand after its hard labels and stage 2 were made: the labels are refused first (they
    are the old model's), then, with fresh labels, stage 2 (it would resume with a stale teacher)."""
    from proda.checkpoint_io import load_checkpoint, save_checkpoint

    root, overrides, _ = finished
    runs = root / "runs"
    teacher, meta = runs / "stage1" / "latest.pth", runs / "stage1" / "pseudo_hard" / "meta.json"
    original, original_meta = teacher.read_bytes(), meta.read_bytes()
    state = load_checkpoint(teacher)
    save_checkpoint(teacher, {**state, "wall_s": state["wall_s"] + 1.0})  # a rerun: other content
    try:
        with pytest.raises(ConfigError, match=r"stage1/pseudo_hard: existing pseudo labels come from another "
                                              r"checkpoint.*rerun with --from hard_labels_1"):
            run_pipeline(PIPELINE, overrides, progress=False)
        teacher.write_bytes(original)
        meta.write_text(meta.read_text().replace('"date": "', '"date": "1999'))  # labels made again
        with pytest.raises(ConfigError, match=r"stage2 started from other inputs than now \(stage1/pseudo_hard/"
                                              r"meta.json changed\); rerun with --from stage2"):
            run_pipeline(PIPELINE, overrides, progress=False)
    finally:
        meta.write_bytes(original_meta)
        teacher.write_bytes(original)
