"""Stage names (the config's ``stage`` key) and the classes that implement them."""
from __future__ import annotations

import torch

from .denoise import Stage1
from .distill import DistillStage
from .ssl import SSLStage
from .supervised import SupervisedStage
from .warmup import WarmupStage

STAGES = {
    "supervised": SupervisedStage,
    "warmup": WarmupStage,
    "stage1": Stage1,
    "distill": DistillStage,
    "ssl": SSLStage,
}


def build_stage(cfg, device: torch.device, progress: bool = True):
    """The stage ``cfg.stage`` names; ``progress`` is set before its constructor runs, so that work done
    there (e.g. reading every pseudo label once) shows a bar only when wanted."""
    cls = STAGES[cfg.stage]
    stage = cls.__new__(cls)
    stage.progress = progress
    stage.__init__(cfg, device)
    return stage
