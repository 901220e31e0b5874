"""Stored pseudo labels of a full image, carried into the weak crop a training view was cut from."""
from __future__ import annotations

import numpy as np
import torch

from ..transforms import WeakGeometry, full_to_weak, weak_nearest_indices


def soft_labels_for_crop(
    soft: np.ndarray | torch.Tensor, geom: WeakGeometry, out_size: tuple[int, int]
) -> torch.Tensor:
    """P0 on the (w, h) = ``out_size`` grid of the weak crop ``geom``: float32 [C, out_h, out_w].

    ``soft`` is at network output resolution of the *full* image. Only the crop window is resampled
    (bilinear, :func:`~proda.data.transforms.full_to_weak`), where the original upsampled the whole map to
    full and then to the random scale (up to [C, 1650, 3300]) before cropping and downsampling by 4.
    """
    t = torch.as_tensor(np.asarray(soft) if not isinstance(soft, torch.Tensor) else soft).float()
    if t.dim() != 3:
        raise ValueError(f"soft labels must be [C, h, w], got {tuple(t.shape)}")
    return full_to_weak(t[None], [geom], out_size)[0]


def hard_labels_for_crop(label: np.ndarray | torch.Tensor, geom: WeakGeometry, out_size: tuple[int, int]) -> torch.Tensor:
    """Label ids on the (w, h) = ``out_size`` grid of the weak crop ``geom``: long [out_h, out_w].

    ``label`` ([H, W], at the full image's resolution) is sampled NEAREST at the positions where
    :func:`soft_labels_for_crop` samples bilinearly, so ignore values never blend into class ids, and with
    the rule of the weak view's own labels (:func:`~proda.data.transforms.weak_nearest_indices`), so each
    label lands on the image pixel it was predicted for.
    """
    t = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    if t.dim() != 2:
        raise ValueError(f"label must be [H, W], got {tuple(t.shape)}")
    if (t.shape[1], t.shape[0]) != tuple(geom.full_size):
        raise ValueError(f"label of size {(t.shape[1], t.shape[0])} for an image of size {geom.full_size}")
    rows, cols = weak_nearest_indices(geom, out_size)
    return t[torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]].long()
