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
    stages: {source_only: source_only.yaml, oracle: oracle.yaml, warmup: warmup.yaml, stage1: stage1.yaml,
             ssl: ssl.yaml, stage2: stage2.yaml, stage3: stage3.yaml}
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import load_config
from .errors import ConfigError

STEP_ORDER = ("source_only", "oracle", "warmup", "soft_labels", "stage1", "hard_labels_1", "ssl", "stage2",
              "hard_labels_2", "stage3")
OPTIONAL = {"oracle", "ssl"}
TRAINED = ("source_only", "oracle", "warmup", "stage1", "ssl", "stage2", "stage3")


@dataclass
class PipelineSpec:
    path: Path
    out_dir: Path
    stages: dict[str, Path]  # stage name -> its config file
    warmup_from_source_only: bool = False
    overrides: list[str] = field(default_factory=list)

    @staticmethod
    def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "PipelineSpec":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: pipeline file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        known = {"out_dir", "stages", "warmup_from_source_only", "overrides"}
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
        out_dir = Path(raw.get("out_dir", "runs/pipeline"))
        for item in overrides:
            if item.startswith("out_dir="):
                out_dir = Path(item.split("=", 1)[1])
        return PipelineSpec(
            path=path, out_dir=out_dir, stages={k: path.parent / v for k, v in stages.items()},
            warmup_from_source_only=bool(raw.get("warmup_from_source_only", False)),
            overrides=[*raw.get("overrides", []), *(o for o in overrides if not o.startswith("out_dir="))],
        )

    def steps(self) -> list[str]:
        return [s for s in STEP_ORDER if s not in OPTIONAL or s in self.stages]


class Pipeline:
    def __init__(self, spec: PipelineSpec, progress: bool = True):
        self.spec, self.progress = spec, progress
        self.out = spec.out_dir
        self.report: dict[str, Any] = {"pipeline": str(spec.path), "stages": {}, "pseudo_labels": {}}

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
            init = ([f"model.init={self.ckpt('ssl')}", "model.init_format=proda_backbone"]
                    if "ssl" in self.spec.stages else [])
            return [*init, f"distill.teacher={self.ckpt('stage1')}",
                    f"distill.pseudo_labels={self.run_dir('stage1') / 'pseudo_hard'}"]
        if stage == "stage3":
            return [f"model.init={self.ckpt('stage2')}", "model.init_format=proda",
                    f"distill.teacher={self.ckpt('stage2')}",
                    f"distill.pseudo_labels={self.run_dir('stage2') / 'pseudo_hard'}"]
        return []

    # ------------------------------------------------------------------------------------------------
    def run(self, start_from: str | None = None) -> dict[str, Any]:
        steps = self.spec.steps()
        if start_from is not None:
            if start_from not in steps:
                raise ConfigError(f"--from {start_from}: not a step of this pipeline ({', '.join(steps)})")
            for step in steps[steps.index(start_from):]:
                self.clear(step)
        self.out.mkdir(parents=True, exist_ok=True)
        for step in steps:
            print(f"\n== {step} ==", flush=True)
            t0 = time.time()
            self.run_step(step)
            if step not in TRAINED:
                self.report["pseudo_labels"].setdefault(step, {})["wall_s"] = round(time.time() - t0, 1)
            self.write_report()
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
        from .engine.trainer import train

        if step in TRAINED:
            result = train(self.config(step), progress=self.progress)
            entry: dict[str, Any] = {"wall_s": round(result.wall_s, 1), "run_dir": str(result.run_dir)}
            if "miou" in result.final:
                entry.update(target_miou=result.final["miou"], per_class_iou=result.final["per_class_iou"])
                if "miou_13" in result.final:
                    entry["target_miou_13"] = result.final["miou_13"]
            if "pseudo_label_miou" in result.final:
                entry["pseudo_label_miou"] = result.final["pseudo_label_miou"]
            self.report["stages"][step] = entry
        elif step == "soft_labels":
            self.soft_labels()
        else:
            self.hard_labels("stage1" if step == "hard_labels_1" else "stage2", step)

    def soft_labels(self) -> None:
        from .engine.prototypes import prototypes_command
        from .engine.pseudo_label import pseudo_label_command

        cfg = self.config("warmup")
        protos = self.run_dir("warmup") / "prototypes.pth"
        if not protos.is_file():
            prototypes_command(str(self.ckpt("warmup")), cfg, str(protos), progress=self.progress)
        pseudo_label_command(str(self.ckpt("warmup")), cfg, soft=True, out=str(self.run_dir("warmup") / "pseudo_soft"),
                             progress=self.progress)

    def hard_labels(self, stage: str, step: str) -> None:
        from .engine.pseudo_label import hard_label_quality, pseudo_label_command

        cfg = self.config(stage)
        folder = pseudo_label_command(str(self.ckpt(stage)), cfg, soft=False, out=str(self.run_dir(stage) / "pseudo_hard"),
                                      progress=self.progress)
        following = "stage2" if stage == "stage1" else "stage3"
        threshold = load_config(self.spec.stages[following], [*self.spec.overrides, *self.links(following)]).distill.threshold
        quality = hard_label_quality(cfg, folder, threshold, progress=self.progress)
        if quality:
            self.report["pseudo_labels"].setdefault(step, {}).update(quality)

    # ------------------------------------------------------------------------------------------------
    def write_report(self) -> None:
        from .report import finish_report

        finish_report(self.report, self.out)


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "report.json").read_text())


def run_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = (), start_from: str | None = None,
                 progress: bool = True, hook: Callable[[Pipeline], None] | None = None) -> dict[str, Any]:
    pipe = Pipeline(PipelineSpec.load(path, overrides), progress=progress)
    if hook is not None:
        hook(pipe)
    return pipe.run(start_from)
