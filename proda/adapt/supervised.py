"""Supervised training on one labelled domain: the source-only baseline and the target oracle.

Both are the same stage with the same model, weak augmentation and budget as the adapted runs; only the
domain whose labels are used differs, which keeps the baselines honest.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data.labels import IGNORE_INDEX
from ..models.build import normalize, upsample
from .base import Stage, labelled_stream, segmentation_model


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of stride-8 logits upsampled to the label size; 255 ignored; 0 when all ignored."""
    logits = upsample(logits, tuple(labels.shape[-2:]))
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


class SupervisedStage(Stage):
    name = "supervised"

    def __init__(self, cfg, device: torch.device, model: torch.nn.Module, streams=None):
        super().__init__(cfg, device, model, streams)
        self.domain = cfg.supervised.domain

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "SupervisedStage":
        model = segmentation_model(cfg)
        domain = cfg.supervised.domain
        return cls(cfg, device, model, {domain: labelled_stream(cfg, domain, progress)})

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        data = batch[self.domain]
        images = normalize(data["image"], self.cfg.model.mean, self.cfg.model.std)
        out = self.model(images)
        return {f"{self.domain}_ce": segmentation_loss(out["out"], data["label"])}
