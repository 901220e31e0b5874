"""Building the segmentation network from a config, and the input/output conventions around it."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .deeplab import DeepLabV2


def build_model(model_cfg, num_classes: int) -> DeepLabV2:
    model = DeepLabV2(
        num_classes,
        depth=model_cfg.depth,
        width=model_cfg.width,
        head=model_cfg.head,
        head_mid=model_cfg.head_mid,
        bn_pretrain=model_cfg.bn_pretrain,
        dropout=model_cfg.dropout,
        output_stride=model_cfg.output_stride,
    )
    if getattr(model_cfg, "weight_init", "original") == "kaiming":
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # the convs that output logits start small, so early predictions do not saturate the softmax
        classifiers = [model.layer5.head[-1]] if model.head_name == "proda" else list(model.layer5.conv2d_list)
        for conv in classifiers:
            torch.nn.init.normal_(conv.weight, std=0.01)
    return model


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0,1] RGB -> network input. ProDA's own checkpoints use mean 0, std 1 (no-op)."""
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return images
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of stride-8 outputs to ``size`` (H, W), corners aligned as in the original.

    A stride-8 output of n samples covers the input's pixel centres 0 .. N-1 (ceil-mode geometry), so
    align_corners=True puts every output sample on its own input pixel.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
