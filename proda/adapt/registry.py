"""Stage names (the config's ``stage`` key) and the classes that implement them.

The CLI and the pipeline hand :func:`build_stage` to the trainer as its stage factory; the engine itself
never imports this package.
"""
from __future__ import annotations

import torch

from ..engine.trainer import Trainer, TrainResult
from .base import Stage
from .distill import DistillStage
from .ssl import SSLStage
from .stage1 import Stage1
from .supervised import SupervisedStage
from .warmup import WarmupStage

STAGES: dict[str, type[Stage]] = {
    "supervised": SupervisedStage,
    "warmup": WarmupStage,
    "stage1": Stage1,
    "distill": DistillStage,
    "ssl": SSLStage,
}


def build_stage(cfg, device: torch.device, progress: bool = True) -> Stage:
    """The stage ``cfg.stage`` names, built from the files its config names (``progress``: whether work
    done while building, e.g. reading every pseudo label once, shows a bar)."""
    return STAGES[cfg.stage].build(cfg, device, progress)


def train(cfg, progress: bool = True) -> TrainResult:
    """Train the stage ``cfg`` describes to the end (resuming its run folder): the CLI's ``proda train``."""
    return Trainer(cfg, build_stage, progress=progress).fit()
