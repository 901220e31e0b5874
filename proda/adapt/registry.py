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


def build_stage(cfg, device: torch.device):
    return STAGES[cfg.stage](cfg, device)
