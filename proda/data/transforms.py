"""Training views that record their geometry, so maps aligned to one view can follow it exactly.

The weak view (ProDA's RandomSized -> RandomCrop -> RandomHorizontallyFlip) is described by a
:class:`WeakGeometry`: the rescaled size, the crop box in rescaled pixels and the flip. With it, any map
computed on the full image (EMA features, soft pseudo labels) is carried into the crop by resampling only
the crop window (:func:`full_to_weak`), never the whole map at the rescaled size.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WeakGeometry:
    full_size: tuple[int, int]  # (W, H) of the image the view was cut from
    scaled_size: tuple[int, int]  # (W, H) after the random rescale
    crop_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in rescaled pixels
    flip: bool

    def to_tensor(self) -> torch.Tensor:
        """Packed as float64[9] so a DataLoader can batch it."""
        return torch.tensor([*self.full_size, *self.scaled_size, *self.crop_box, float(self.flip)], dtype=torch.float64)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> "WeakGeometry":
        v = [int(round(float(x))) for x in t.tolist()]
        return WeakGeometry((v[0], v[1]), (v[2], v[3]), (v[4], v[5], v[6], v[7]), bool(v[8]))


def sample_weak_geometry(
    rng: np.random.Generator,
    full_size: tuple[int, int],
    crop_size: tuple[int, int],
    resize_width: int | None,
    scale_range: tuple[float, float],
    hflip: bool,
) -> WeakGeometry:
    """Random rescale (width = U(scale_range) * resize_width, aspect kept), random crop, random flip."""
    w, h = full_size
    base = resize_width if resize_width is not None else w
    sw = max(1, int(rng.uniform(scale_range[0], scale_range[1]) * base))
    sh = max(1, int(sw * h / w))  # at least one pixel: a very wide image (or tiny resize_width) divided by 0
    cw, ch = crop_size
    # The config check (configured sizes) and the start-up check of sampled images (proda.data.check.preflight)
    # refuse crops that do not fit; the odd image of another size that gets through is upscaled.
    if sw < cw or sh < ch:
        factor = max(cw / sw, ch / sh)
        sw, sh = int(np.ceil(sw * factor)), int(np.ceil(sh * factor))
    x0 = int(rng.integers(0, sw - cw + 1))
    y0 = int(rng.integers(0, sh - ch + 1))
    flip = bool(hflip and rng.random() < 0.5)
    return WeakGeometry((w, h), (sw, sh), (x0, y0, x0 + cw, y0 + ch), flip)


def apply_weak_geometry(
    geom: WeakGeometry, image: np.ndarray, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale (image bilinear, label nearest: :func:`weak_nearest_indices`), crop and flip: the original's
    weak augmentation, except that shrinking does not antialias.

    The original resizes with PIL's bilinear filter, whose triangle kernel widens with the factor when
    shrinking (antialiasing); cv2.INTER_LINEAR weighs the two nearest pixels at every scale. On the
    synthetic demo (scales 0.75-1.25, training seed 1337) resizing like the original (cv2.INTER_AREA below
    scale 1) lost 2.4 / 3.3 / 3.4 target mIoU in source-only / warm-up / stage 1, so the sharper sampling
    stays.
    """
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box
    image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
    if geom.flip:
        image = image[:, ::-1]
    if label is not None:
        ys, xs = weak_nearest_indices(geom, (x1 - x0, y1 - y0))  # only the crop is resampled; flip included
        label = label[np.ix_(ys, xs)]
    return np.ascontiguousarray(image), label


@dataclass(frozen=True)
class WeakCropper:
    """The weak view's settings (from ``cfg.data``) and the one way every training view draws and applies it."""

    crop_size: tuple[int, int]
    resize_width: int | None
    scale_range: tuple[float, float]
    hflip: bool

    @staticmethod
    def from_config(data_cfg) -> "WeakCropper":
        return WeakCropper(tuple(data_cfg.crop_size), data_cfg.resize_width, tuple(data_cfg.scale_range), data_cfg.hflip)

    def __call__(self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray | None = None
                 ) -> tuple[WeakGeometry, np.ndarray, np.ndarray | None]:
        h, w = image.shape[:2]
        geom = sample_weak_geometry(rng, (w, h), self.crop_size, self.resize_width, self.scale_range, self.hflip)
        crop, label_crop = apply_weak_geometry(geom, image, label)
        return geom, crop, label_crop


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3, H, W] in [0, 1] (ProDA's input range; normalisation is the model's)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(label)).long()


def full_to_weak(maps: torch.Tensor, geoms: list[WeakGeometry], out_size: tuple[int, int]) -> torch.Tensor:
    """Carry maps aligned to the full image ([B, C, h, w], any resolution) into each weak crop.

    Convention (the one of the network's stride-8 outputs, upsampled with align_corners=True): a map of
    n samples over a span of N pixels has its samples on pixel indices j*(N-1)/(n-1). The result is
    [B, C, out_h, out_w] on the same convention over the crop, sampled bilinearly. Only the crop window
    is resampled, so the cost does not depend on the random scale.
    """
    grid = weak_sampling_grid(geoms, out_size).to(device=maps.device, dtype=maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def weak_sampling_grid(geoms: list[WeakGeometry], out_size: tuple[int, int]) -> torch.Tensor:
    """float64 [B, out_h, out_w, 2]: where each (w, h) = ``out_size`` crop sample lies in its full image.

    ``grid_sample`` coordinates (x, y) in [-1, 1] with align_corners=True, the grid :func:`full_to_weak`
    samples bilinearly; exposed so that other maps (hard labels, nearest) follow exactly the same positions.
    """
    out_w, out_h = out_size
    grids = []
    for geom in geoms:
        w, h = geom.full_size
        sw, sh = geom.scaled_size
        x0, y0, x1, y1 = geom.crop_box
        gx = _crop_grid_to_full(out_w, x0, x1 - x0, sw, w)
        gy = _crop_grid_to_full(out_h, y0, y1 - y0, sh, h)
        if geom.flip:
            gx = gx.flip(0)
        grids.append(torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1))
    return torch.stack(grids)


def weak_nearest_indices(geom: WeakGeometry, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """int64 rows [out_h] and columns [out_w] of the full image that NEAREST resampling puts on the (w, h) =
    ``out_size`` grid of the weak crop ``geom``: ``full[np.ix_(rows, cols)]`` is that crop, flip included.

    At the crop size these are the pixels the weak view's own labels take: cv2.INTER_NEAREST_EXACT, which
    reproduces the PIL resize of the original's labels (on a half-pixel tie their fixed-step arithmetic
    decides, the lower pixel about as often as the upper), applied to the index row and column so that
    only the crop is gathered. A coarser grid then takes the crop pixel nearest to each of its positions
    (those of :func:`weak_sampling_grid`). grid_sample's "nearest" cannot stand in for this: it rounds
    ties to even, which at some scales moved whole columns of labels one pixel against the image.
    """
    w, h = geom.full_size
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box
    cols = _nearest_source_pixels(w, sw)[x0:x1]
    rows = _nearest_source_pixels(h, sh)[y0:y1]
    if geom.flip:
        cols = cols[::-1]
    return rows[_nearest_positions(out_size[1], y1 - y0)], cols[_nearest_positions(out_size[0], x1 - x0)]


def _nearest_source_pixels(full: int, scaled: int) -> np.ndarray:
    """int64 [scaled]: the source pixel of each pixel of a ``full`` -> ``scaled`` NEAREST resize."""
    index = np.arange(full, dtype=np.int32)[None]
    return cv2.resize(index, (scaled, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0].astype(np.int64)


def _nearest_positions(n: int, length: int) -> np.ndarray:
    """int64 [n]: the crop pixel nearest to each of n grid samples spanning ``length`` pixels."""
    return np.floor(_crop_positions(n, length) + 0.5).astype(np.int64)


def _crop_positions(n: int, length: int) -> np.ndarray:
    """float64 [n]: crop pixel index of each of n grid samples spanning a crop of ``length`` pixels
    (align_corners=True: the first and last samples on the first and last pixels; 0, 1, 2, ... when n == length)."""
    return np.arange(n, dtype=np.float64) * ((length - 1) / max(n - 1, 1))


def _crop_grid_to_full(n: int, start: int, length: int, scaled: int, full: int) -> torch.Tensor:
    """Normalised full-image coordinates (align_corners=True) of n grid samples spanning a crop."""
    t = torch.from_numpy(_crop_positions(n, length))
    u = (start + t + 0.5) * full / scaled - 0.5  # full-image pixel index (cv2's half-pixel rescale)
    return u / max(full - 1, 1) * 2 - 1
