"""Stages 2 and 3: self-distillation into a student (docs/method.md 2.2).

The student (stage 2: a self-supervised backbone with the extra BN and a fresh head; stage 3: the stage-2
model) learns on the target strong view from the previous stage's hard pseudo labels, thresholded at load
time (one confidence threshold, optionally with a class-balanced share of each class) and carried into the
strong view with the exact geometry the image got, and from the frozen previous
stage itself (KL on the same strong image). The labelled source keeps its cross-entropy.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.labels import IGNORE_INDEX
from ..data.pseudo_labels import PseudoLabelStore, hard_labels_for_crop, threshold_labels
from ..data.readers import target_reader
from ..data.strong import labels_to_strong, strong_view
from ..data.transforms import WeakCropper, image_to_tensor
from ..engine import dist
from ..engine.data import AugmentedDataset
from ..engine.pseudo_label_generation import selection_thresholds
from ..models.build import normalize, upsample
from ..models.weights import load_model_for_config
from .base import Stage, labelled_stream, segmentation_model
from .stage1 import grid_size
from .losses import distillation_kl
from .supervised import segmentation_loss


class DistillTargetView:
    """Strong view of a weak target crop, with the thresholded hard labels of the weak crop on the loss grid."""

    def __init__(self, cfg, keep_above: float | np.ndarray):
        d, k = cfg.data, cfg.distill
        self.cropper = WeakCropper.from_config(d)
        self.grid = grid_size(self.cropper.crop_size, k.loss_stride)
        self.strong_ops, self.cutout = k.strong_ops, k.cutout
        self.keep_above = keep_above  # one threshold or one per class (distill.class_keep)
        self.root = k.pseudo_labels
        self._store: PseudoLabelStore | None = None

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if self._store is None:
            self._store = PseudoLabelStore.open(self.root, kind="hard")
        geom, crop, _ = self.cropper(rng, sample["image"])
        strong, transform = strong_view(crop, rng, n_ops=self.strong_ops, cutout=self.cutout)
        label, conf = self._store.read_hard(sample["name"])
        pseudo = threshold_labels(label, conf, self.keep_above)
        return {
            "strong": image_to_tensor(strong),
            "strong_transform": transform.to_tensor(),
            "pseudo_weak": hard_labels_for_crop(pseudo, geom, self.grid),
            "name": sample["name"],
        }


class DistillStage(Stage):
    name = "distill"

    image_keys = frozenset({"image", "strong"})

    def __init__(self, cfg, device: torch.device, model: torch.nn.Module, teacher: torch.nn.Module,
                 teacher_input: tuple, keep_above: float | np.ndarray, streams=None):
        """``teacher``: the frozen previous-stage model (not checkpointed: it is the file ``distill.teacher``),
        fed with its own input normalisation ``teacher_input`` = (mean, std); ``keep_above``: the confidence
        threshold of the hard labels, one or one per class (what the streams' target view applies)."""
        super().__init__(cfg, device, model, streams)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.to(device).eval()
        self.teacher_input = teacher_input
        self.keep_above = keep_above
        self.grid = grid_size(tuple(cfg.data.crop_size), cfg.distill.loss_stride)

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "DistillStage":
        k = cfg.distill
        model = segmentation_model(cfg)
        teacher, meta = load_model_for_config(k.teacher, cfg, device)
        store = PseudoLabelStore.open(k.pseudo_labels, kind="hard", num_classes=cfg.data.num_classes)  # fail early
        target = target_reader(cfg, with_labels=False)
        keep_above = selection_thresholds(store, [s.name for s in target.samples], k.threshold, k.class_keep,
                                          device=device, collective=True, progress=progress)
        if k.class_keep > 0 and dist.is_main():
            shown = " ".join(f"{t:.3f}" for t in keep_above)
            print(f"pseudo labels kept per class above (confidence > {k.threshold} or the top "
                  f"{100 * k.class_keep:.0f}% of the class): {shown}")
        streams = {
            "source": labelled_stream(cfg, "source", progress),
            "target": AugmentedDataset(target, DistillTargetView(cfg, keep_above)),
        }
        return cls(cfg, device, model, teacher, (meta["input"]["mean"], meta["input"]["std"]), keep_above, streams)

    def train_mode(self) -> None:
        self.model.train()
        self.teacher.eval()

    def final_metrics(self) -> dict[str, Any]:
        if np.ndim(self.keep_above) == 0:
            return {}
        return {"pseudo_label_thresholds": [round(float(t), 6) for t in self.keep_above]}

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.cfg.distill
        mean, std = cfg.model.mean, cfg.model.std
        src, tgt = batch["source"], batch["target"]
        gw, gh = self.grid
        losses = {"source_ce": segmentation_loss(self.model(normalize(src["image"], mean, std))["out"], src["label"])}
        pseudo = labels_to_strong(tgt["pseudo_weak"], tgt["strong_transform"], IGNORE_INDEX)
        student = upsample(self.model(normalize(tgt["strong"], mean, std))["out"], (gh, gw))
        losses["target_ce"] = k.ce_weight * segmentation_loss(student, pseudo)
        if k.kd_weight > 0:
            with torch.no_grad():
                teacher = upsample(self.teacher(normalize(tgt["strong"], *self.teacher_input))["out"], (gh, gw))
            losses["distill"] = k.kd_weight * distillation_kl(student, teacher, form=k.kd_form)
        return losses
