"""Running a trained network on whole images, and scoring it on a labelled split.

Evaluation follows ProDA: single scale, the image fed at its (configured) input size, logits upsampled
to the full label resolution, argmax, one confusion matrix (reduced across processes when distributed).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data.transforms import image_to_tensor
from ..models.build import normalize, upsample
from . import dist
from .metrics import ConfusionMatrix


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    out_size: tuple[int, int],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> [B,C,out_h,out_w] logits (whole-image, single scale)."""
    out = model(normalize(images, mean, std))["out"]
    return upsample(out.float(), out_size)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    device: torch.device,
    num_classes: int,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    max_images: int | None = None,
    progress: bool = True,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over a labelled reader (each process takes every W-th image)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = range(dist.rank(), n, dist.world_size())
    for i in tqdm(indices, desc="evaluate", leave=False, disable=not (progress and dist.is_main())):
        sample = dataset[i]
        label = torch.from_numpy(sample["label"]).long().to(device)
        image = sample["image"]
        if input_size is not None and (image.shape[1], image.shape[0]) != tuple(input_size):
            image = cv2.resize(image, tuple(input_size), interpolation=cv2.INTER_LINEAR)
        logits = predict_logits(model, image_to_tensor(image)[None].to(device), tuple(label.shape), mean, std)
        cm.update(logits.argmax(1)[0], label)
    cm.reduce_()
    model.train(was_training)
    return cm


def labels_to_numpy(pred: torch.Tensor) -> np.ndarray:
    return pred.to(torch.uint8).cpu().numpy()
