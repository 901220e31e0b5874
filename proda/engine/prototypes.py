"""Initial class prototypes: centroids of the head features over the target training set.

As the original ``calc_prototype.py``: the model in eval mode on un-augmented target images, pixels
assigned by the model's own argmax at network output resolution, per image and class with at least
``min_pixels`` pixels the mean feature, aggregated by a running mean. The original makes four identical
passes (issue #53 asks why; with deterministic eval passes they only re-weight once counts hit the cap):
one pass is made here.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import cv2
import torch
from tqdm import tqdm

from ..adapt.prototypes import PrototypeBank, class_mean_features, gather_class_means
from ..data.transforms import image_to_tensor
from ..models.build import normalize
from . import dist


@torch.no_grad()
def compute_prototypes(
    model: torch.nn.Module,
    reader,
    device: torch.device,
    num_classes: int,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    input_size: tuple[int, int] | None = None,
    min_pixels: int = 10,
    progress: bool = True,
) -> PrototypeBank:
    model.eval()
    bank: PrototypeBank | None = None
    n = len(reader)
    # every rank runs the same number of steps (all-gather needs them), padding with a repeat of its last image
    per_rank = -(-n // dist.world_size())
    for k in tqdm(range(per_rank), desc="prototypes", disable=not (progress and dist.is_main())):
        i = min(dist.rank() + k * dist.world_size(), n - 1)
        real = dist.rank() + k * dist.world_size() < n
        image = reader[i]["image"]
        if input_size is not None and (image.shape[1], image.shape[0]) != tuple(input_size):
            image = cv2.resize(image, tuple(input_size), interpolation=cv2.INTER_LINEAR)
        out = model(normalize(image_to_tensor(image)[None].to(device), mean, std))
        feat = out["feat"].float()
        if bank is None:
            bank = PrototypeBank(num_classes, feat.shape[1], device=device)
        means, present = class_mean_features(feat, out["out"].argmax(1), num_classes, min_pixels)
        present &= real
        means, present = gather_class_means(means, present)
        bank.accumulate_initial(means, present)
    if bank is None:
        raise ValueError("no target images to compute prototypes from")
    return bank


def prototypes_command(checkpoint: str, cfg, out: str | None, progress: bool = True) -> str:
    """`proda prototypes`: compute from a checkpoint over the config's target training split and save."""
    from ..data.readers import target_reader
    from ..models.checkpoints import load_model_for_config
    from .trainer import resolve_device

    device = resolve_device(cfg.run.device)
    dist.init_from_env(cfg.run.device)
    model, meta = load_model_for_config(checkpoint, cfg, device)
    reader = target_reader(cfg, with_labels=False)
    bank = compute_prototypes(model, reader, device, meta["num_classes"], meta["input"]["mean"], meta["input"]["std"],
                              min_pixels=cfg.stage1.prototype_min_pixels, progress=progress)
    path = out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "prototypes.pth")
    provenance: dict[str, Any] = {
        "checkpoint": os.path.abspath(checkpoint), "dataset": cfg.data.target_root, "split": cfg.data.target_split,
        "num_images": len(reader), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if dist.is_main():
        bank.save(path, provenance)
        unseen = bank.unseen_classes()
        names = meta["class_names"]
        print(f"wrote {path}: {bank.num_classes} prototypes of dimension {bank.dim} from {len(reader)} images"
              + (f"; never predicted (zero prototype): {', '.join(names[k] for k in unseen)}" if unseen else ""))
    return path
