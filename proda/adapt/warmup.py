"""Warm-up: source cross-entropy plus output-space adversarial alignment (docs/method.md 1.1).

A fully-convolutional discriminator sees softmax maps (upsampled to the crop) and tells source (label 0)
from target (label 1); the segmentation network is pushed to make target maps look like source ones.
Both losses are returned together and back-propagated once: the generator's adversarial term runs the
discriminator with *detached* parameters (``torch.func.functional_call``), so it sends gradients into the
segmentation network only, and the discriminator's own loss sees detached softmax maps, so it trains the
discriminator only. This equals the original's alternating freeze/unfreeze without touching requires_grad.

Distributed: the segmentation network and the discriminator are both DDP-wrapped. The discriminator's own
loss runs through its wrapper (twice, one backward: gradients averaged once); the generator's term calls the
bare module with detached parameters, which DDP never sees (no gradient reaches the discriminator there).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..data.readers import target_reader
from ..engine.data import AugmentedDataset
from ..models.build import normalize, upsample
from ..models.discriminator import FCDiscriminator
from .base import Stage, labelled_stream, segmentation_model, weak_view_fn
from .supervised import segmentation_loss

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def adversarial_loss(d_out: torch.Tensor, label: float, gan: str) -> torch.Tensor:
    """Least-squares (MSE to the label) or vanilla (BCE with logits) GAN loss, computed in float32."""
    d_out = d_out.float()
    target = torch.full_like(d_out, label)
    if gan == "ls":
        return F.mse_loss(d_out, target)
    return F.binary_cross_entropy_with_logits(d_out, target)


class WarmupStage(Stage):
    name = "warmup"
    ddp_modules = ("model", "discriminator")

    def __init__(self, cfg, device: torch.device, model: torch.nn.Module, streams=None):
        super().__init__(cfg, device, model, streams)
        w = cfg.warmup
        if w.freeze_bn:
            self.model.freeze_bn(True)
        disc = FCDiscriminator(cfg.data.num_classes, ndf=w.disc_width).to(device)
        self.modules["discriminator"] = disc
        self.optimizers["discriminator"] = torch.optim.Adam(disc.parameters(), lr=w.disc_lr, betas=tuple(w.disc_betas))

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "WarmupStage":
        model = segmentation_model(cfg)
        return cls(cfg, device, model, {
            "source": labelled_stream(cfg, "source", progress),
            "target": AugmentedDataset(target_reader(cfg, with_labels=False), weak_view_fn(cfg, with_label=False)),
        })

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        cfg, w = self.cfg, self.cfg.warmup
        src, tgt = batch["source"], batch["target"]
        disc = self.modules["discriminator"]  # bare: for the functional call with detached parameters
        disc_train = self.trained("discriminator")  # its DDP wrapper when distributed
        mean, std = cfg.model.mean, cfg.model.std

        src_out = self.model(normalize(src["image"], mean, std))["out"]
        tgt_out = self.model(normalize(tgt["image"], mean, std))["out"]
        src_prob = upsample(src_out, tuple(src["image"].shape[-2:])).float().softmax(1)
        tgt_prob = upsample(tgt_out, tuple(tgt["image"].shape[-2:])).float().softmax(1)

        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        fool = adversarial_loss(functional_call(disc, frozen, (tgt_prob,)), SOURCE_LABEL, w.gan)
        d_loss = (adversarial_loss(disc_train(src_prob.detach()), SOURCE_LABEL, w.gan)
                  + adversarial_loss(disc_train(tgt_prob.detach()), TARGET_LABEL, w.gan))
        return {
            "source_ce": segmentation_loss(src_out, src["label"]),
            "adv": w.adv_weight * fool,
            "disc": d_loss,
        }
