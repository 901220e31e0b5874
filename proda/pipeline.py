"""`proda pipeline`: every ProDA stage in order, each into its own folder, resumable, with a report.

Steps: source-only baseline, oracle (optional), warm-up, prototypes and soft pseudo labels of the warm-up
model, stage 1, hard pseudo labels of stage 1, self-supervised pre-training (optional: where the stage-2
student has no SimCLRv2 file), stage 2, hard pseudo labels of stage 2, stage 3. The links between steps
(which checkpoint initialises or teaches which stage, which labels it reads) are set here, so a stage
config only says how that stage trains. A finished step is skipped, an interrupted one resumes; ``--from``
deletes the outputs of a step and of every later one and runs them again.

The pipeline file (e.g. ``configs/synthetic/pipeline.yaml``)::

    out_dir: runs/synthetic
    warmup_from_source_only: true      # else the warm-up config's model.init (ImageNet) is used
    student_init: stage1               # stage-2 student: ssl (the ssl stage's backbone), stage1 (the stage-1
                                       # model) or config (the stage-2 config's model.init, e.g. SimCLRv2)
    background_oracle: true            # train the oracle in a second process beside the source-only run
    stages: {source_only: source_only.yaml, oracle: oracle.yaml, warmup: warmup.yaml, stage1: stage1.yaml,
             stage2: stage2.yaml, stage3: stage3.yaml}              # + ssl: ssl.yaml when student_init is ssl

report.json and report.md are rewritten after every step, report.png once the run ends. ``--seeds 1337,1,2``
(:func:`run_seeds`) runs the whole pipeline once per training seed, each in ``OUT/seed_N``, and reports each
stage's mean +- std over them in ``OUT``.

The background oracle splits the CPU threads with the source-only run (same budget, so they end together;
the pipeline waits for it there); it changes when the oracle finishes, not what it computes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .config import load_config, resolve_config_path
from .errors import ConfigError, ProdaError, StalePseudoLabelsError
from .engine import dist
from .io import write_bytes, write_json

STEP_ORDER = ("source_only", "oracle", "warmup", "soft_labels", "stage1", "hard_labels_1", "ssl", "stage2",
              "hard_labels_2", "stage3")
OPTIONAL = {"oracle", "ssl"}
TRAINED = ("source_only", "oracle", "warmup", "stage1", "ssl", "stage2", "stage3")
LABEL_STEPS = ("soft_labels", "hard_labels_1", "hard_labels_2")  # every other step trains a model
STUDENT_INITS = ("ssl", "stage1", "config")
#: Settings that may change between the runs of a pipeline without rerunning a stage: where the data and the
#: run live, and how a run is logged, checkpointed and evaluated (Pipeline.training_settings).
BOOKKEEPING_SETTINGS = frozenset({
    "data.source_root", "data.target_root", "data.source_list", "data.val_split", "data.val_size",
    "data.val_batch_size", "data.num_workers", "data.preflight_samples", "data.source_label_cache",
    "data.target_label_cache", "run.out_dir", "run.device", "run.eval_every", "run.checkpoint_every",
    "run.keep_last", "run.log_every", "run.tensorboard", "run.eval_max_images", "run.panel_every",
    "run.panel_images", "run.resume", "run.max_nonfinite_steps",
})


@dataclass
class PipelineSpec:
    path: Path
    out_dir: Path
    stages: dict[str, Path]  # stage name -> its config file
    warmup_from_source_only: bool = False
    student_init: str = "config"
    background_oracle: bool = False
    overrides: list[str] = field(default_factory=list)

    @staticmethod
    def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "PipelineSpec":
        path = resolve_config_path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: pipeline file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        known = {"out_dir", "stages", "warmup_from_source_only", "student_init", "background_oracle", "overrides"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key {unknown[0]}; valid keys: {', '.join(sorted(known))}")
        stages = raw.get("stages") or {}
        bad = sorted(set(stages) - set(TRAINED))
        if bad:
            raise ConfigError(f"{path}: unknown stage {bad[0]}; valid stages: {', '.join(TRAINED)}")
        missing = [s for s in TRAINED if s not in OPTIONAL and s not in stages]
        if missing:
            raise ConfigError(f"{path}: stages is missing {', '.join(missing)}")
        student_init = raw.get("student_init", "ssl" if "ssl" in stages else "config")
        if student_init not in STUDENT_INITS:
            raise ConfigError(f"{path}: student_init must be one of {', '.join(STUDENT_INITS)}, got {student_init!r}")
        if student_init == "ssl" and "ssl" not in stages:
            raise ConfigError(f"{path}: student_init is ssl, but stages has no ssl config")
        out_dir = Path(raw.get("out_dir", "runs/pipeline"))
        for item in overrides:
            if item.startswith("out_dir="):
                out_dir = Path(item.split("=", 1)[1])
        return PipelineSpec(
            path=path, out_dir=out_dir, stages={k: path.parent / v for k, v in stages.items()},
            warmup_from_source_only=bool(raw.get("warmup_from_source_only", False)),
            student_init=student_init, background_oracle=bool(raw.get("background_oracle", False)),
            overrides=[*raw.get("overrides", []), *(o for o in overrides if not o.startswith("out_dir="))],
        )

    def steps(self) -> list[str]:
        return [s for s in STEP_ORDER if s not in OPTIONAL or s in self.stages]


class Pipeline:
    def __init__(self, spec: PipelineSpec, progress: bool = True):
        self.spec, self.progress = spec, progress
        self.out = spec.out_dir
        self.report: dict[str, Any] = {"pipeline": str(spec.path), "stages": {}, "pseudo_labels": {}}

    def steps(self) -> list[str]:
        return self.spec.steps()

    def run_dir(self, stage: str) -> Path:
        return self.out / stage

    def ckpt(self, stage: str) -> Path:
        return self.run_dir(stage) / "latest.pth"

    def config(self, stage: str):
        links = self.links(stage)
        return load_config(self.spec.stages[stage], [f"run.out_dir={self.run_dir(stage)}", *self.spec.overrides, *links])

    def links(self, stage: str) -> list[str]:
        """The overrides that connect a stage to the outputs of the earlier ones."""
        if stage == "warmup" and self.spec.warmup_from_source_only:
            return [f"model.init={self.ckpt('source_only')}", "model.init_format=proda"]
        if stage == "stage1":
            return [f"model.init={self.ckpt('warmup')}", "model.init_format=proda",
                    f"stage1.soft_labels={self.run_dir('warmup') / 'pseudo_soft'}",
                    f"stage1.prototypes={self.run_dir('warmup') / 'prototypes.pth'}"]
        if stage == "stage2":
            init = {"ssl": [f"model.init={self.ckpt('ssl')}", "model.init_format=proda_backbone"],
                    "stage1": [f"model.init={self.ckpt('stage1')}", "model.init_format=proda"],
                    "config": []}[self.spec.student_init]
            return [*init, f"distill.teacher={self.ckpt('stage1')}",
                    f"distill.pseudo_labels={self.run_dir('stage1') / 'pseudo_hard'}"]
        if stage == "stage3":
            return [f"model.init={self.ckpt('stage2')}", "model.init_format=proda",
                    f"distill.teacher={self.ckpt('stage2')}",
                    f"distill.pseudo_labels={self.run_dir('stage2') / 'pseudo_hard'}"]
        return []

    # ------------------------------------------------------------------------------------------------
    def run(self, start_from: str | None = None) -> dict[str, Any]:
        steps = self.steps()
        if start_from is not None:
            if start_from not in steps:
                raise ConfigError(f"--from {start_from}: not a step of this pipeline ({', '.join(steps)})")
            if dist.is_main():
                for step in steps[steps.index(start_from):]:
                    self.clear(step)
            dist.barrier()
        self.out.mkdir(parents=True, exist_ok=True)
        # the oracle depends on nothing: it trains in the background beside the source-only run (one process
        # only: under torchrun every stage, the oracle included, uses all processes in turn)
        background = (BackgroundRun(self, "oracle") if self.spec.background_oracle and "oracle" in steps
                      and dist.world_size() == 1 else None)
        try:
            for step in steps:
                if background is not None and step == background.step:
                    continue
                if dist.is_main():
                    print(f"\n== {step} ==", flush=True)
                t0 = time.time()
                self.run_step(step)
                if step in LABEL_STEPS:
                    self.report["pseudo_labels"].setdefault(step, {})["wall_s"] = round(time.time() - t0, 1)
                if background is not None and step == "source_only":  # always the first step
                    background.finish()  # same budget, so both end together; later stages get every thread
                self.write_report(plot=False)  # the tables after every step, the figure once at the end
        finally:
            if background is not None:
                background.stop()
        self.write_report(plot=True)
        return self.report

    def clear(self, step: str) -> None:
        """Remove what ``step`` wrote, so it runs again."""
        targets = {
            "soft_labels": [self.run_dir("warmup") / "pseudo_soft", self.run_dir("warmup") / "prototypes.pth"],
            "hard_labels_1": [self.run_dir("stage1") / "pseudo_hard"],
            "hard_labels_2": [self.run_dir("stage2") / "pseudo_hard"],
        }.get(step, [self.run_dir(step)])
        for path in targets:
            if path.is_dir():
                shutil.rmtree(path)
                print(f"removed {path}")
            elif path.exists():
                path.unlink()
                print(f"removed {path}")

    def run_step(self, step: str) -> None:
        from .adapt.registry import train

        if step not in LABEL_STEPS:
            self.check_inputs(step)
            result = train(self.config(step), progress=self.progress)
            self.record(step, result.final, result.wall_s, result.run_dir)
        else:
            try:
                if step == "soft_labels":
                    self.soft_labels()
                else:
                    self.hard_labels("stage1" if step == "hard_labels_1" else "stage2", step)
            except StalePseudoLabelsError as exc:  # the model was retrained since: say which step reruns
                raise ConfigError(f"{exc}; in this pipeline: rerun with --from {step}") from None

    def input_fingerprints(self, step: str) -> dict[str, str]:
        """Content digests of what the links give ``step`` (checkpoints, label folders' meta.json), keyed by
        the path relative to the pipeline's folder: a copied or moved run folder still matches."""
        from .checkpoint_io import content_digest

        prints = {}
        for item in self.links(step):
            value = Path(item.split("=", 1)[1])
            path = value / "meta.json" if value.is_dir() else value
            if path.is_file():
                key = os.path.relpath(path, self.out) if path.is_relative_to(self.out) else str(path)
                prints[key] = content_digest(path)
        return prints

    def training_settings(self, step: str) -> dict[str, Any]:
        """What decides what ``step`` learns, as flat ``section.key`` values: data, model, optimiser, run and
        the stage's own section, less where things are (paths; linked inputs count by content) and how the run
        is logged, checkpointed and evaluated."""
        cfg = self.config(step)
        values = cfg.to_dict()
        linked = {item.split("=", 1)[0] for item in self.links(step)}
        flat = {}
        for section in ("data", "model", "optim", "run", cfg.stage):
            for key, value in values[section].items():
                name = f"{section}.{key}"
                if name not in linked and name not in BOOKKEEPING_SETTINGS:
                    flat[name] = value
        return json.loads(json.dumps(flat))  # tuples as lists, as the record reads back

    def check_inputs(self, step: str) -> None:
        """A stage resumed or skipped must still have the inputs and the settings it started from: an earlier
        stage rerun by hand (not with --from) would otherwise leave it resuming with a stale teacher or labels,
        and a stage rerun with other settings would be skipped with the old run's figures."""
        record = self.run_dir(step) / "pipeline_inputs.json"
        now = {"inputs": self.input_fingerprints(step), "settings": self.training_settings(step)}
        if record.is_file() and (self.run_dir(step) / "latest.pth").is_file():
            before = json.loads(record.read_text())
            if "inputs" not in before:  # written before the settings were recorded: inputs only
                before = {"inputs": before, "settings": now["settings"]}
            changed = _differences(before["inputs"], now["inputs"])
            if changed:
                raise ConfigError(f"{self.run_dir(step)}: {step} started from other inputs than now "
                                  f"({', '.join(changed)} changed); rerun with --from {step}")
            old, new = before["settings"], now["settings"]
            changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in _differences(old, new)]
            if changed:
                raise ConfigError(f"{self.run_dir(step)}: {step} ran with other settings than now "
                                  f"({'; '.join(changed)}); rerun with --from {step}")
            return
        if dist.is_main():
            self.run_dir(step).mkdir(parents=True, exist_ok=True)
            write_json(record, now)

    def record(self, step: str, final: dict[str, Any], wall_s: float, run_dir: Path) -> None:
        entry: dict[str, Any] = {"wall_s": round(wall_s, 1), "run_dir": str(run_dir)}
        if "miou" in final:
            entry.update(target_miou=final["miou"], per_class_iou=final["per_class_iou"])
            if "miou_13" in final:
                entry["target_miou_13"] = final["miou_13"]
        if "pseudo_label_miou" in final:
            entry["pseudo_label_miou"] = final["pseudo_label_miou"]
        self.report["stages"][step] = entry

    def soft_labels(self) -> None:
        from .adapt.prototypes import prototypes_command
        from .engine.pseudo_label_generation import pseudo_label_command

        cfg = self.config("warmup")
        protos = self.run_dir("warmup") / "prototypes.pth"
        if not protos.is_file():
            prototypes_command(str(self.ckpt("warmup")), cfg, str(protos), progress=self.progress)
        pseudo_label_command(str(self.ckpt("warmup")), cfg, soft=True, out=str(self.run_dir("warmup") / "pseudo_soft"),
                             progress=self.progress)

    def hard_labels(self, stage: str, step: str) -> None:
        from .engine.pseudo_label_generation import hard_label_quality, pseudo_label_command

        cfg = self.config(stage)
        folder = pseudo_label_command(str(self.ckpt(stage)), cfg, soft=False, out=str(self.run_dir(stage) / "pseudo_hard"),
                                      progress=self.progress)
        following = "stage2" if stage == "stage1" else "stage3"
        selection = load_config(self.spec.stages[following], [*self.spec.overrides, *self.links(following)]).distill
        quality = (hard_label_quality(cfg, folder, selection.threshold, selection.class_keep, progress=self.progress)
                   if dist.is_main() else {})
        if quality:
            self.report["pseudo_labels"].setdefault(step, {}).update(quality)

    # ------------------------------------------------------------------------------------------------
    def write_report(self, plot: bool = True) -> None:
        """report.json and report.md; ``plot``: report.png too."""
        from .report import finish_report

        if not dist.is_main():
            return
        finish_report(self.report, self.out, plot=plot)


class BackgroundRun:
    """One training step in a child process (`proda train`), beside the rest of the pipeline.

    The CPU threads are split between the two processes while both run; the child's output goes to
    RUN_DIR/train.log. A finished run is skipped by `proda train` itself, an interrupted one resumes.
    """

    def __init__(self, pipe: Pipeline, step: str):
        import torch

        self.pipe, self.step = pipe, step
        self.run_dir = pipe.run_dir(step)
        pipe.check_inputs(step)  # makes the folder
        self.log = self.run_dir / "train.log"
        self.main_threads = torch.get_num_threads()
        child_threads = max(1, self.main_threads // 2)
        torch.set_num_threads(max(1, self.main_threads - child_threads))
        cmd = [sys.executable, "-m", "proda", "train", "--no-progress", str(pipe.spec.stages[step]),
               f"run.out_dir={self.run_dir}", *pipe.spec.overrides, *pipe.links(step)]
        env = {**os.environ, "OMP_NUM_THREADS": str(child_threads)}
        print(f"\n== {step} == (in the background: {self.log})", flush=True)
        self.t0 = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def finish(self) -> None:
        """Wait for the child, give the main process every thread back and record the run."""
        import torch

        if self.proc.poll() is None:
            print(f"\nwaiting for the background {self.step} run ({self.log})", flush=True)
        code = self.proc.wait()
        torch.set_num_threads(self.main_threads)
        if code != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ProdaError(f"the background {self.step} run failed (exit status {code}); see {self.log}: "
                             + " | ".join(tail))
        result = json.loads((self.run_dir / "result.json").read_text())
        self.pipe.record(self.step, result["final"], result["wall_s"], self.run_dir)

    def stop(self) -> None:
        """Terminate the child if the pipeline stops early (it resumes from its checkpoint next time)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose value differs between two records (missing on one side counts), sorted."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "report.json").read_text())


def run_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = (), start_from: str | None = None,
                 progress: bool = True, hook: Callable[[Pipeline], None] | None = None) -> dict[str, Any]:
    pipe = Pipeline(PipelineSpec.load(path, overrides), progress=progress)
    dist.init_from_env(pipe.config("source_only").run.device)  # under torchrun: every stage on every process
    if hook is not None:
        hook(pipe)
    return pipe.run(start_from)


# -------------------------------------------------------------------------------------------------- seeds
# How much of a result is luck shows only over training seeds (DAFormer and HRDA report mean +- std of 3).
# Each seed is a whole pipeline in OUT/seed_N; OUT/report.json and report.md put them side by side.


def seed_dir(out_dir: Path, seed: int) -> Path:
    return out_dir / f"seed_{seed}"


def refuse_seed_override(overrides: list[str] | tuple[str, ...]) -> None:
    if any(o.startswith("run.seed=") for o in overrides):
        raise ConfigError("run.seed=... and --seeds both set the training seed: give the seeds with --seeds only")


def seed_overrides(overrides: list[str] | tuple[str, ...], seed: int, out_dir: Path) -> list[str]:
    """The overrides of one seed's pipeline: its own folder below ``out_dir`` and ``run.seed``."""
    refuse_seed_override(overrides)
    return [*(o for o in overrides if not o.startswith("out_dir=")), f"out_dir={seed_dir(out_dir, seed)}",
            f"run.seed={seed}"]


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean and standard deviation (numpy's: population, ddof 0) of the figures there are (None: not run yet)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(present)), "std": float(np.std(present))}


def seed_rows(reports: dict[int, dict[str, Any]], seeds: list[int], rows: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{row: {"miou": [per seed, None where it has not run], "mean": m, "std": s}}`` from each seed's
    pipeline report; ``rows`` maps a row to the stage of the report that gives its target mIoU. Rows no seed
    has reached yet are left out."""
    out = {}
    for row, stage in rows.items():
        values = [reports.get(seed, {}).get("stages", {}).get(stage, {}).get("target_miou") for seed in seeds]
        if any(v is not None for v in values):
            out[row] = {"miou": values, **spread(values)}
    return out


def format_seed_table(rows: dict[str, dict[str, Any]], seeds: list[int], label: str = "stage",
                      extra: dict[str, dict[str, str]] | None = None) -> str:
    """Markdown: a line per row with its mean +- std over the seeds, the ``extra`` columns ({header: {row:
    cell}}), then each seed's figure ("-": not run yet)."""
    extra = extra or {}
    header = [label, "target mIoU (mean ± std)", *extra, *(f"seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, f"{row['mean']:.2f} ± {row['std']:.2f}", *(column.get(name, "-") for column in extra.values()),
                 *("-" if v is None else f"{v:.2f}" for v in row["miou"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_summary(path: Path, seeds: list[int], reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Every stage's target mIoU and share of the gap closed over the seeds (report.json of ``--seeds``)."""
    stages = list(dict.fromkeys(stage for report in reports.values() for stage in report["stages"]))
    gaps = {}
    for stage in dict.fromkeys(stage for report in reports.values() for stage in report.get("gap_closed", {})):
        shares = [reports.get(seed, {}).get("gap_closed", {}).get(stage) for seed in seeds]
        gaps[stage] = {"share": shares, **spread(shares)}
    return {"pipeline": str(path), "seeds": list(seeds), "runs": {str(s): f"seed_{s}" for s in seeds},
            "stages": seed_rows(reports, seeds, {s: s for s in stages}), "gap_closed": gaps}


def format_seeds_summary(summary: dict[str, Any]) -> str:
    gaps = {stage: f"{100 * g['mean']:.0f} ± {100 * g['std']:.0f} %" for stage, g in summary["gap_closed"].items()}
    return format_seed_table(summary["stages"], summary["seeds"], extra={"gap closed (mean ± std)": gaps})


def run_seeds(path: str | Path, overrides: list[str] | tuple[str, ...], seeds: list[int], start_from: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """The pipeline once per training seed (``run.seed=N``), each in ``OUT/seed_N``, then ``OUT/report.json``
    and ``OUT/report.md``: each stage's mean +- std over the seeds and every seed's figure (each seed's own
    report stays in its folder). One seed is the plain pipeline with that seed, in ``OUT`` itself."""
    if len(seeds) == 1:
        refuse_seed_override(overrides)
        return run_pipeline(path, [*overrides, f"run.seed={seeds[0]}"], start_from, progress)
    spec = PipelineSpec.load(path, overrides)
    reports: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    for seed in seeds:
        if dist.is_main():
            print(f"\n==== seed {seed} ({seed_dir(spec.out_dir, seed)}) ====", flush=True)
        reports[seed] = run_pipeline(path, seed_overrides(overrides, seed, spec.out_dir), start_from, progress)
        summary = seeds_summary(spec.path, seeds, reports)
        if dist.is_main():  # after every seed, so an interrupted run still shows what finished
            write_json(spec.out_dir / "report.json", summary)
            text = (f"# proda pipeline report: {len(seeds)} training seeds\n\n{format_seeds_summary(summary)}\n\n"
                    "Standard deviation over the seeds as numpy's (population); each seed's own report, with "
                    "per-class IoU and pseudo-label quality: "
                    + ", ".join(f"seed_{s}/report.md" for s in seeds) + ".\n")
            write_bytes(spec.out_dir / "report.md", text.encode())
    return summary
