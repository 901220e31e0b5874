"""Self-supervised (SimCLR-style) pre-training of the backbone on unlabelled target images.

ProDA's stage-2 student starts from a SimCLRv2 ResNet-101, whose features suit learning from sparse,
confident pseudo labels. Where no such weights exist (the synthetic benchmark, another backbone), proda
pre-trains one itself: two random views of each target image (resized crop, flip, colour jitter,
greyscale, blur), the backbone's pooled features through a projection MLP, and the NT-Xent contrastive
loss. The checkpoint's backbone then initialises the stage-2 student (``model.init_format: backbone``).

Distributed: backbone features and projection head run as one DDP-wrapped module, and the embeddings of
every process are gathered (back-propagating) before the loss, so each embedding's negatives are the whole
global batch, as with one process and the combined batch (and as SimCLR does across devices).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.readers import target_reader
from ..data.transforms import image_to_tensor
from ..engine import dist
from ..engine.data import AugmentedDataset
from ..models.build import normalize
from .base import Stage, segmentation_model


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy for B positive pairs (z1[i], z2[i]).

    Each of the 2B embeddings must pick its partner among the other 2B-1 by cosine similarity / T.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class ContrastiveView:
    """Two independently augmented views of an image, each resized to ``size`` (w, h)."""

    def __init__(self, size: tuple[int, int], ssl_cfg):
        self.size = tuple(size)
        self.c = ssl_cfg

    def one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        c = self.c
        area = rng.uniform(*c.crop_scale) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))) * (w / h) / (self.size[0] / self.size[1])
        cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], self.size, interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            view = view[:, ::-1]
        view = view.astype(np.float32) / 255.0
        if rng.random() < c.color_p:
            s = c.color_jitter
            view = view * rng.uniform(1 - s, 1 + s)  # brightness
            mean = view.mean()
            view = (view - mean) * rng.uniform(1 - s, 1 + s) + mean  # contrast
            grey = view.mean(axis=2, keepdims=True)
            view = (view - grey) * rng.uniform(1 - s, 1 + s) + grey  # saturation
        if rng.random() < c.grayscale_p:
            view = np.repeat(view.mean(axis=2, keepdims=True), 3, axis=2)
        if rng.random() < c.blur_p:
            sigma = rng.uniform(0.1, 2.0) * min(self.size) / 96
            view = cv2.GaussianBlur(np.ascontiguousarray(view), (0, 0), sigma)
        view = np.clip(view, 0.0, 1.0)
        return (view * 255).astype(np.uint8)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = sample["image"]
        return {"view1": image_to_tensor(self.one(image, rng)), "view2": image_to_tensor(self.one(image, rng)),
                "name": sample["name"]}


class Projector(nn.Module):
    """Global average pool -> Linear -> BN -> ReLU -> Linear (SimCLR's projection head)."""

    def __init__(self, in_ch: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_ch, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.mean(dim=(2, 3)))


class Contrastive(nn.Module):
    """Backbone features -> projection head: what the SSL stage trains, as one module (DDP wraps it)."""

    def __init__(self, net: nn.Module, projector: nn.Module):
        super().__init__()
        self.net, self.projector = net, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.net.features(x))


class SSLStage(Stage):
    name = "ssl"
    evaluates = False  # no segmentation head is trained: a val mIoU would mean nothing
    ddp_modules = ()  # see wrap_distributed

    image_keys = frozenset({"view1", "view2"})

    def __init__(self, cfg, device: torch.device, model: torch.nn.Module, streams=None):
        super().__init__(cfg, device, model, streams)
        net = model
        projector = Projector(net.out_channels, cfg.ssl.proj_hidden, cfg.ssl.proj_dim).to(device)
        self.modules["projector"] = projector
        # the backbone and the projector learn; the segmentation head stays as initialised
        backbone = net.param_groups(cfg.optim.lr, 1.0)[0]["params"]
        self.optimizers["model"] = torch.optim.SGD(
            [{"params": backbone, "lr": cfg.optim.lr, "name": "backbone"},
             {"params": list(projector.parameters()), "lr": cfg.optim.lr * cfg.optim.head_lr_mult, "name": "projector"}],
            lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        )
        trained = {id(p) for g in self.optimizers["model"].param_groups for p in g["params"]}
        for p in net.parameters():  # the head gets no gradient: say so, which DDP needs
            if id(p) not in trained:
                p.requires_grad_(False)
        self.contrastive = Contrastive(net, projector)

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "SSLStage":
        model = segmentation_model(cfg)
        return cls(cfg, device, model, {"target": AugmentedDataset(target_reader(cfg, with_labels=False),
                                                                   ContrastiveView(tuple(cfg.data.crop_size), cfg.ssl))})

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        tgt = batch["target"]
        both = normalize(torch.cat([tgt["view1"], tgt["view2"]]), cfg.model.mean, cfg.model.std)
        z = self.ddp.get("contrastive", self.contrastive)(both)
        z1, z2 = (dist.all_gather_with_grad(v) for v in z.chunk(2))
        return {"nt_xent": nt_xent(z1, z2, cfg.ssl.temperature)}

    def wrap_distributed(self, device: torch.device) -> None:
        """One DDP wrapper around backbone features + projector (the segmentation head is not trained)."""
        self.ddp["contrastive"] = dist.wrap_ddp(self.contrastive, device)
