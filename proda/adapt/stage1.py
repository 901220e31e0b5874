"""Stage 1: online prototypical pseudo-label denoising and target structure learning (docs/method.md 2.1).

Per iteration, on the crop/``loss_stride`` grid of each target weak crop:

1. the EMA model sees the full target image; its features are carried into the weak crop (``full_to_weak``);
2. distances to the class prototypes give rectification weights omega = softmax(-T (d - min d)), and the
   pseudo label is argmax(omega * P0) with P0 the warm-up model's fixed soft label (``stage1.rectify=false``:
   argmax P0 itself under the same threshold, plain self-training, the ablation's baseline);
3. the student is trained on the weak crop with symmetric cross-entropy against it, plus the
   anti-degeneration regulariser;
4. structure learning: the EMA's prototype assignment, carried into the strong view with the exact
   geometry the strong image got, supervises the student's assignment on the strong image (masked KL);
5. after the optimizer step, the EMA and the prototypes (from the EMA's full-image argmax) move on.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.labels import IGNORE_INDEX
from ..data.pseudo_labels import PseudoLabelStore, soft_labels_for_crop
from ..data.readers import target_reader
from ..data.strong import strong_view, warp_to_strong
from ..data.transforms import WeakCropper, WeakGeometry, full_to_weak, image_to_tensor, label_to_tensor
from ..engine import dist
from ..engine.data import AugmentedDataset
from ..engine.metrics import ConfusionMatrix
from ..models.build import normalize, upsample
from .base import Stage, labelled_stream, segmentation_model
from .ema import ema_update, init_ema
from .losses import (
    mean_log_prob_regularizer, prototype_consistency_kl, prototype_distances, rectification_weights,
    rectified_scores, rectify_pseudo_labels, symmetric_cross_entropy,
)
from .prototypes import PrototypeBank, class_mean_features
from .supervised import segmentation_loss

#: gathers per-image class means [B,C,D] / presence [B,C] of every process in rank order (engine.dist.all_gather_rows)
Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _no_gather(means: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return means, present


def grid_size(crop_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(w, h) of the loss grid of a crop (crop/4 in the original: 896x512 -> 224x128)."""
    return crop_size[0] // stride, crop_size[1] // stride


def labels_on_grid(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest samples of a crop-aligned label on a (w, h) grid with the corner-aligned map convention."""
    h, w = label.shape
    gw, gh = size
    ys = np.rint(np.arange(gh) * (h - 1) / max(gh - 1, 1)).astype(int)
    xs = np.rint(np.arange(gw) * (w - 1) / max(gw - 1, 1)).astype(int)
    return label[np.ix_(ys, xs)]


class Stage1TargetView:
    """Weak crop, strong view of it, full image, P0 on the loss grid and (if known) the true labels there."""

    def __init__(self, cfg, soft_root: str):
        d, s1 = cfg.data, cfg.stage1
        self.cropper = WeakCropper.from_config(d)
        self.grid = grid_size(self.cropper.crop_size, s1.loss_stride)
        self.strong_ops, self.cutout = s1.strong_ops, s1.cutout
        self.soft_root = soft_root
        self._store: PseudoLabelStore | None = None  # opened lazily, inside each DataLoader worker

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if self._store is None:
            self._store = PseudoLabelStore.open(self.soft_root, kind="soft")
        image = sample["image"]
        geom, crop, label_crop = self.cropper(rng, image, sample.get("label"))
        strong, transform = strong_view(crop, rng, n_ops=self.strong_ops, cutout=self.cutout)
        out = {
            "image": image_to_tensor(crop),
            "strong": image_to_tensor(strong),
            "strong_transform": transform.to_tensor(),
            "geometry": geom.to_tensor(),
            "full": image_to_tensor(image),
            "soft": soft_labels_for_crop(self._store.read_soft(sample["name"]), geom, self.grid),
            "name": sample["name"],
        }
        if label_crop is not None:
            out["label_grid"] = label_to_tensor(labels_on_grid(label_crop, self.grid))
        return out


class Stage1(Stage):
    name = "stage1"
    image_keys = frozenset({"image", "strong", "full"})

    def __init__(self, cfg, device: torch.device, model: torch.nn.Module, bank: PrototypeBank,
                 streams: dict[str, AugmentedDataset] | None = None, soft_labels: PseudoLabelStore | None = None,
                 has_target_labels: bool = False, gather: Gather = _no_gather):
        """``bank``: the prototypes (moved on in place); ``soft_labels``: the store of P0 that the pseudo-label
        quality measurement and the panels read (the training stream opens its own); ``gather``: how the
        per-image class means of all processes are collected before the prototypes move."""
        super().__init__(cfg, device, model, streams)
        if bank.num_classes != cfg.data.num_classes or bank.dim != model.feat_channels:
            raise ValueError(f"prototypes are {bank.num_classes}x{bank.dim}, the model needs "
                             f"{cfg.data.num_classes}x{model.feat_channels}")
        self.modules["ema"] = init_ema(model)
        self.bank = bank.to(device)
        self.soft_labels, self.has_target_labels, self.gather = soft_labels, has_target_labels, gather
        self.grid = grid_size(tuple(cfg.data.crop_size), cfg.stage1.loss_stride)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # EMA outputs of this iteration's micro-batches
        self._pending_iteration = -1
        n = cfg.data.num_classes
        self.pl_raw, self.pl_rect = ConfusionMatrix(n, device), ConfusionMatrix(n, device)

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "Stage1":
        s1 = cfg.stage1
        model = segmentation_model(cfg)
        bank = PrototypeBank.load(s1.prototypes, map_location=device)
        if bank.dim != model.feat_channels or bank.num_classes != cfg.data.num_classes:
            raise ValueError(f"{s1.prototypes}: prototypes are {bank.num_classes}x{bank.dim}, the model needs "
                             f"{cfg.data.num_classes}x{model.feat_channels}")
        store = PseudoLabelStore.open(s1.soft_labels, kind="soft", num_classes=cfg.data.num_classes)
        target = target_reader(cfg, with_labels=True)
        streams = {
            "source": labelled_stream(cfg, "source", progress),
            "target": AugmentedDataset(target, Stage1TargetView(cfg, s1.soft_labels)),
        }
        return cls(cfg, device, model, bank, streams, soft_labels=store, has_target_labels=target.has_labels,
                   gather=dist.all_gather_rows)

    @property
    def ema(self) -> torch.nn.Module:
        return self.modules["ema"]

    def train_mode(self) -> None:
        self.model.train()
        self.ema.train(self.cfg.stage1.ema_train_mode)

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        cfg, s1 = self.cfg, self.cfg.stage1
        mean, std = cfg.model.mean, cfg.model.std
        src, tgt = batch["source"], batch["target"]
        protos = self.bank.prototypes
        gw, gh = self.grid
        losses = {"source_ce": segmentation_loss(self.model(normalize(src["image"], mean, std))["out"], src["label"])}

        with torch.no_grad():
            ema_out = self.ema(normalize(tgt["full"], mean, std))
            geoms = [WeakGeometry.from_tensor(g) for g in tgt["geometry"].cpu()]
            feat_weak = full_to_weak(ema_out["feat"].float(), geoms, (gw, gh))
            distances = prototype_distances(feat_weak, protos)
            soft = tgt["soft"].float()
            # rectify=false: weights 1, the warm-up's own labels (argmax P0) under the same threshold
            weights = rectification_weights(distances, s1.temperature) if s1.rectify else torch.ones_like(soft)
            pseudo = rectify_pseudo_labels(soft, weights, s1.pseudo_threshold)
        if iteration != self._pending_iteration:  # outputs of a skipped (non-finite) step must not move prototypes
            self._pending.clear()
            self._pending_iteration = iteration
        self._pending.append((ema_out["feat"].detach(), ema_out["out"].detach()))

        # The weak view's forward runs even when no loss weights it: its batch statistics go into BatchNorm's
        # running estimates, the only clean-target statistics among the three views (measured on the demo:
        # skipping it takes stage 1 from 30.6 to 27.7 target mIoU with the pseudo-label terms at 0).
        logits_weak = upsample(self.model(normalize(tgt["image"], mean, std))["out"], (gh, gw))
        losses["target_sce"] = symmetric_cross_entropy(logits_weak, pseudo, s1.sce_alpha, s1.sce_beta)
        if s1.regular_weight > 0:
            losses["regular"] = s1.regular_weight * mean_log_prob_regularizer(logits_weak)
        if s1.consistency_weight > 0:
            teacher_strong, valid = warp_to_strong(distances, tgt["strong_transform"], mode="nearest")
            feat_strong = upsample(self.model(normalize(tgt["strong"], mean, std))["feat"], (gh, gw))
            losses["consistency"] = s1.consistency_weight * prototype_consistency_kl(
                teacher_strong, valid, feat_strong, protos, s1.temperature)

        if "label_grid" in tgt:  # pseudo-label quality against the true target labels (benchmarks only)
            truth = tgt["label_grid"]
            self.pl_raw.update(soft.argmax(1), truth)
            kept = pseudo != IGNORE_INDEX  # a thresholded-away pixel is no label, not a wrong one
            self.pl_rect.update(pseudo.masked_fill(~kept, 0), truth.masked_fill(~kept, IGNORE_INDEX))
        return losses

    def after_step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, float]:
        s1 = self.cfg.stage1
        ema_update(self.ema, self.model, s1.ema_momentum)
        for feat, logits in self._pending:
            # the original assigns on the EMA's full-image output resized to full/4
            h, w = batch["target"]["full"].shape[-2:]
            size = (max(1, h // 4), max(1, w // 4))
            feat_full, assign = upsample(feat.float(), size), upsample(logits.float(), size).argmax(1)
            means, present = class_mean_features(feat_full, assign, self.bank.num_classes, s1.prototype_min_pixels)
            means, present = self.gather(means, present)
            self.bank.momentum_update(means, present, s1.prototype_momentum)
        self._pending.clear()
        return {}

    def eval_metrics(self) -> dict[str, float]:
        """mIoU of the raw (argmax P0) and rectified pseudo labels since the last evaluation."""
        if not self.has_target_labels or self.pl_raw.mat.sum() == 0:
            return {}
        self.pl_raw.reduce_()
        self.pl_rect.reduce_()
        out = {"pseudo_label_miou_raw": self.pl_raw.miou(), "pseudo_label_miou_rectified": self.pl_rect.miou()}
        self.pl_raw.reset()
        self.pl_rect.reset()
        return out

    @torch.no_grad()
    def final_metrics(self) -> dict[str, Any]:
        """Raw and rectified pseudo-label mIoU over the whole target training set, with the final EMA
        features and prototypes, at full label resolution (the stage's central claim, measured)."""
        if not self.has_target_labels or self.soft_labels is None:
            return {}
        cfg = self.cfg
        reader = self.streams["target"].reader
        raw, rect = ConfusionMatrix(cfg.data.num_classes, self.device), ConfusionMatrix(cfg.data.num_classes, self.device)
        self.ema.eval()
        for i in tqdm(range(dist.rank(), len(reader), dist.world_size()), desc="pseudo-label quality",
                      leave=False, disable=not (self.progress and dist.is_main())):
            sample = reader[i]
            image = image_to_tensor(sample["image"])[None].to(self.device)
            label = torch.from_numpy(sample["label"]).long().to(self.device)[None]
            raw_pl, rect_pl = self.pseudo_labels(image, self._soft_of(sample), tuple(label.shape[-2:]))
            raw.update(raw_pl, label)
            rect.update(rect_pl, label)
        raw.reduce_()
        rect.reduce_()
        return {"pseudo_label_miou": {"raw": raw.miou(), "rectified": rect.miou()}}

    @torch.no_grad()
    def pseudo_labels(self, image: torch.Tensor, soft: torch.Tensor,
                      size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (argmax P0) and rectified (argmax omega * P0) pseudo labels [B,H,W] at ``size`` (H, W) of full
        target images [B,3,h,w] in [0,1] with their soft labels P0 [B,C,h',w'], using the EMA as it is now
        (the caller sets its mode) and the current prototypes."""
        cfg = self.cfg
        out = self.ema(normalize(image, cfg.model.mean, cfg.model.std))
        if soft.shape[-2:] != out["feat"].shape[-2:]:
            soft = upsample(soft, tuple(out["feat"].shape[-2:]))
        weights = rectification_weights(prototype_distances(out["feat"].float(), self.bank.prototypes),
                                        cfg.stage1.temperature)
        return upsample(soft, size).argmax(1), upsample(rectified_scores(soft, weights), size).argmax(1)

    def _soft_of(self, sample: dict[str, Any]) -> torch.Tensor:
        """P0 [1,C,h,w] of one target training sample, from the soft-label store."""
        return torch.from_numpy(self.soft_labels.read_soft(sample["name"])).float().to(self.device)[None]

    def panel_reader(self):
        """Target *training* images: where the soft labels P0 live."""
        return self.streams["target"].reader if self.soft_labels is not None and "target" in self.streams else None

    def panel_maps(self, sample: dict[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Raw (argmax P0) and rectified (argmax omega * P0) pseudo labels with the current EMA and prototypes."""
        if self.panel_reader() is None:
            return {}
        ema_mode = self.ema.training
        self.ema.eval()
        try:
            image = image_to_tensor(sample["image"])[None].to(self.device)
            raw, rect = self.pseudo_labels(image, self._soft_of(sample), size)
        finally:
            self.ema.train(ema_mode)
        return {"raw PL": raw[0], "rectified PL": rect[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": self.bank.state_dict(), "pl_raw": self.pl_raw.mat.clone(), "pl_rect": self.pl_rect.mat.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "prototypes" in state:
            self.bank.load_state_dict(state["prototypes"])
        if "pl_raw" in state:
            self.pl_raw.mat.copy_(state["pl_raw"])
            self.pl_rect.mat.copy_(state["pl_rect"])
