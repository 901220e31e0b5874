"""Running a trained network on images, and scoring it on a labelled split.

Evaluation follows ProDA by default: single scale, the image fed at its (configured) input size, logits
upsampled to the full label resolution, argmax, one confusion matrix (reduced across processes when
distributed). :func:`infer_probabilities` is the one implementation of inference behind evaluation and
``proda predict``; it adds the usual test-time options on top of that default:

* ``mode='slide'``: overlapping ``crop_size`` windows (stride 2/3 of the window unless given), the logits of
  each window upsampled to the window and averaged where windows overlap; an image smaller than the
  window is padded at the right/bottom with zeros *after* normalisation (the mean colour) and cropped back;
* ``scales``: the (normalised) input resized bilinearly by each factor; scale 1 is fed untouched;
* ``flip``: the mirrored input is run in the same batch and its probabilities mirrored back.

Every view (scale x flip) is upsampled to the output size with ``align_corners=True`` and soft-maxed; the
result is the mean of the views' probabilities (one view: the plain softmax, so argmax is unchanged).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.transforms import image_to_tensor
from ..errors import ConfigError
from ..models.build import normalize, upsample
from . import dist
from .metrics import ConfusionMatrix

INFERENCE_MODES = ("whole", "slide")


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


def check_inference_options(
    mode: str,
    scales: Sequence[float],
    crop_size: tuple[int, int] | None,
    stride: tuple[int, int] | None = None,
) -> None:
    """ConfigError for options no inference can run with (checked before any image is read)."""
    check_mode_and_scales(mode, scales)
    if mode == "slide":
        if crop_size is None:
            raise ConfigError("slide inference needs a window size (crop_size WxH)")
        for name, size in (("crop_size", crop_size), ("stride", stride)):
            if size is not None and (len(size) != 2 or min(size) <= 0):
                raise ConfigError(f"{name} must be two positive integers (W, H), got {size}")


def check_mode_and_scales(mode: str, scales: Sequence[float]) -> None:
    """The part of :func:`check_inference_options` that needs no window size (checkable up front)."""
    if mode not in INFERENCE_MODES:
        raise ConfigError(f"inference mode must be one of {list(INFERENCE_MODES)}, got {mode!r}")
    if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
        raise ConfigError(f"scales must be positive numbers, got {list(scales)}")


def resolve_sizes(
    mode: str,
    input_size: tuple[int, int] | None,
    crop_size: tuple[int, int] | None,
    checkpoint_size: Sequence[int] | None,
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(input_size, crop_size) to use, both (W, H), from the user's choice and the checkpoint's input size.

    * whole: the image is resized to ``input_size``, by default the checkpoint's (its validation size,
      as evaluation does); no window;
    * slide: the image keeps its own resolution unless ``input_size`` is given, and the window defaults to
      the checkpoint's input size: sliding is how a model evaluated on downscaled images is run at full
      resolution. Without either there is no sensible window, which is an error.
    """
    check_mode_and_scales(mode, (1.0,))
    ckpt = tuple(int(v) for v in checkpoint_size) if checkpoint_size else None
    if mode == "whole":
        return (tuple(input_size) if input_size else ckpt), None  # type: ignore[return-value]
    crop = tuple(crop_size) if crop_size else ckpt
    if crop is None:
        raise ConfigError("slide inference needs a window size: pass a crop size (WxH); this checkpoint "
                          "records no input size to default to")
    return (tuple(input_size) if input_size else None), crop  # type: ignore[return-value]


@torch.no_grad()
def infer_probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    out_size: tuple[int, int],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    mode: str = "whole",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> [B,C,out_h,out_w] class probabilities averaged over scales and flips.

    ``out_size`` is (H, W); ``crop_size`` and ``stride`` are (W, H) like every image size in proda. See the
    module docstring for the geometry of each option.
    """
    check_inference_options(mode, scales, crop_size, stride)
    x = normalize(images.float(), mean, std)
    b = x.shape[0]
    total: torch.Tensor | None = None
    for scale in scales:
        xs = _rescale(x, scale)
        views = torch.cat([xs, xs.flip(-1)]) if flip else xs
        if mode == "whole":
            logits = model(views)["out"]
        else:
            assert crop_size is not None
            logits = _slide_logits(model, views, crop_size, stride)
        prob = upsample(logits.float(), out_size).softmax(1)
        if flip:
            prob = prob[:b] + prob[b:].flip(-1)
        total = prob if total is None else total + prob
    assert total is not None
    n_views = len(scales) * (2 if flip else 1)
    return total if n_views == 1 else total / n_views


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize by ``scale`` (half-pixel centres, as cv2.INTER_LINEAR); scale 1 is the identity."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of ``window`` px every ``stride`` px covering ``size`` px; the last one is flush
    with the end (so no window hangs over the edge and every pixel is covered)."""
    if size <= window:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


def default_stride(crop_size: tuple[int, int]) -> tuple[int, int]:
    """2/3 of the window: every pixel away from the border is seen by at least two windows."""
    return max(1, round(crop_size[0] * 2 / 3)), max(1, round(crop_size[1] * 2 / 3))


def _slide_logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    crop_size: tuple[int, int],
    stride: tuple[int, int] | None,
) -> torch.Tensor:
    """[B,C,H,W] logits at the input's resolution, averaged over overlapping windows (count map)."""
    cw, ch = int(crop_size[0]), int(crop_size[1])
    sw, sh = stride if stride is not None else default_stride((cw, ch))
    h, w = x.shape[-2:]
    ph, pw = max(h, ch), max(w, cw)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))  # zeros after normalisation = the mean colour
    total: torch.Tensor | None = None
    count = x.new_zeros(1, 1, ph, pw)
    for y0 in window_starts(ph, ch, sh):
        for x0 in window_starts(pw, cw, sw):
            out = upsample(model(x[..., y0:y0 + ch, x0:x0 + cw])["out"].float(), (ch, cw))
            if total is None:
                total = out.new_zeros(x.shape[0], out.shape[1], ph, pw)
            total[..., y0:y0 + ch, x0:x0 + cw] += out
            count[..., y0:y0 + ch, x0:x0 + cw] += 1
    assert total is not None
    return (total / count)[..., :h, :w]


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
    mode: str = "whole",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over a labelled reader (each process takes every W-th image).

    ``input_size`` (W, H) resizes each image before inference (any mode); the prediction is always made at
    the label's resolution. The defaults (whole image, one scale, no flip) are ProDA's evaluation.
    """
    check_inference_options(mode, scales, crop_size, stride)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = range(dist.rank(), n, dist.world_size())
    for i in tqdm(indices, desc="evaluate", leave=False, disable=not (progress and dist.is_main())):
        sample = dataset[i]
        label = torch.from_numpy(sample["label"]).long().to(device)
        image = resize_image(sample["image"], input_size)
        prob = infer_probabilities(model, image_to_tensor(image)[None].to(device), tuple(label.shape), mean, std,
                                   mode=mode, scales=scales, flip=flip, crop_size=crop_size, stride=stride)
        cm.update(prob.argmax(1)[0], label)
    cm.reduce_()
    model.train(was_training)
    return cm


def evaluate_per_condition(model: torch.nn.Module, dataset, device: torch.device, num_classes: int,
                           **options) -> dict[str, ConfusionMatrix]:
    """``{condition: matrix, ..., "all": matrix}`` over a reader whose samples record a condition (ACDC's
    weather, Dark Zurich's time of day: ``dataset.conditions`` and ``dataset.only(condition)``); a reader
    without conditions gives ``{"all": matrix}``. ``options`` are :func:`evaluate_model`'s (``max_images``
    caps each condition). Each image is scored once: "all" is the sum of the conditions' matrices, which
    equals the matrix of the whole reader.
    """
    conditions = tuple(getattr(dataset, "conditions", ()))
    if len(conditions) < 2:
        return {"all": evaluate_model(model, dataset, device, num_classes, **options)}
    matrices = {c: evaluate_model(model, dataset.only(c), device, num_classes, **options) for c in conditions}
    total = ConfusionMatrix(num_classes, device=device)
    for cm in matrices.values():
        total.mat += cm.mat
    return {**matrices, "all": total}


def format_condition_table(matrices: dict[str, ConfusionMatrix], images: dict[str, int]) -> str:
    """One mIoU row per condition and one for the whole (``images``: images scored per condition)."""
    width = max(9, *(len(c) for c in matrices))
    lines = [f"{'condition':<{width}}  {'images':>6}  {'mIoU %':>7}", "-" * (width + 17)]
    for condition, cm in matrices.items():
        miou = cm.miou()
        lines.append(f"{condition:<{width}}  {images[condition]:>6}  {'-' if math.isnan(miou) else f'{miou:.2f}':>7}")
    return "\n".join(lines)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """HxWx3 uint8 resized (bilinear) to ``size`` (W, H); untouched when ``size`` is None or already met."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(int(v) for v in size), interpolation=cv2.INTER_LINEAR)
