"""ProDA's strong view (RandAugmentMC(2, 10) + flip + cutout), recorded as one affine map plus a cutout box.

The strong image is made from the weak crop. Maps aligned to the weak crop (distances to the prototypes,
pseudo labels) must follow it exactly into the strong view, at any resolution (the crop itself, or the crop/4
grid of ProDA's target losses). The original re-applied the geometric ops to those maps in a fixed dict order,
kept only the last value of an op drawn twice and scaled TranslateX by W/H (docs/method.md 9.6). Here the
flip and every applied geometric op are composed, in the order they were drawn, into ONE 2x3 matrix that maps
strong-image pixel coordinates to weak-crop pixel coordinates; the image is warped once with it
(:func:`cv2.warpAffine`) and maps are sampled with it (:func:`warp_to_strong`), so the two agree by
construction and the image is resampled once instead of once per op.

Conventions
-----------
* Pixel coordinates are in index units: pixel ``(i, j)`` (row, column) has its centre at ``(x, y) = (j, i)``;
  the image covers ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``. This is what :func:`cv2.warpAffine` uses with
  ``WARP_INVERSE_MAP``: ``strong[y, x] = weak(M @ (x, y, 1))``.
* Each geometric op reproduces PIL's semantics in the original (``Image.rotate`` about the image centre,
  ``Image.transform(AFFINE)`` for shear/translate, shear about the image's top-left corner), translated from
  PIL's continuous coordinates (pixel centres at ``+0.5``) to index units.
* Photometric ops run first, in their drawn order, on the weak crop (PIL ``ImageOps``/``ImageEnhance``, as
  the original); then the single warp; then cutout. Pointwise ops (Brightness, Color, Posterize, Solarize,
  Identity) commute with the warp up to rounding at interpolated edges, and Sharpness (a 3x3 filter) up to the
  footprint of its kernel. The global-statistics ops (AutoContrast, Equalize, Contrast's mean) see the unwarped
  crop instead of the warped one with its gray fill; and the fill stays exactly ``fill`` instead of being
  recoloured by an op drawn after a geometric one. Both only matter where there is no content, and keep "gray"
  meaning "nothing here" in every strong image.
* Cutout is a half-open box ``[x0, x1) x [y0, y1)`` in strong pixels: the square of side ``min(W, H) // 3``
  centred at a uniform point, intersected with the image (the original shifted, rather than clipped, a box
  crossing the left/top edge, and filled one more row/column in the image than it masked in the maps).
* Maps of ``n`` samples over a side of ``N`` pixels have sample ``j`` at pixel ``j * (N - 1) / (n - 1)``
  (the ``align_corners=True`` convention of :func:`proda.data.transforms.full_to_weak`), so ``n == N`` is the
  pixel grid itself. A strong-view sample is valid when the weak-crop point it comes from lies inside the crop's
  pixel area and the sample itself is outside the cutout box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import cv2
import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import torch
import torch.nn.functional as F

GEOMETRIC_OPS: tuple[str, ...] = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
PHOTOMETRIC_OPS: tuple[str, ...] = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Sharpness", "Solarize",
)
# FixMatch's pool, in the original's order (the order only matters for which op a given random draw picks).
FIXMATCH_POOL: tuple[str, ...] = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
_SIGNED_OPS = frozenset(GEOMETRIC_OPS)
_PARAMETER_MAX = 10  # RandAugment's fixed scale: parameter = v * max_v / 10, whatever the magnitude bound

# Packed layout: W, H, matrix (row-major, 6), cutout x0, y0, x1, y1, flip.
PACKED_LEN = 13

ForcedOp = Union[tuple[str, int], tuple[str, int, int]]
Transforms = Union[Sequence["StrongTransform"], torch.Tensor]


@dataclass(frozen=True)
class StrongOp:
    """One drawn op, for logging: its magnitude ``v``, the parameter it gives (signed), and whether it ran."""

    name: str
    v: int
    value: float | int | None  # factor, bits, threshold, degrees, shear or pixels; None for parameter-free ops
    applied: bool


@dataclass(frozen=True, eq=False)
class StrongTransform:
    """The geometry of one strong view: enough to carry any weak-crop-aligned map into it."""

    size: tuple[int, int]  # (W, H) of the weak crop and of the strong image
    matrix: np.ndarray  # float64 [2, 3]: strong pixel (x, y, 1) -> weak-crop pixel (index units)
    cutout: tuple[int, int, int, int] | None  # half-open (x0, y0, x1, y1) in strong pixels
    flip: bool
    ops: tuple[StrongOp, ...] = field(default=())

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64).reshape(2, 3)
        m.flags.writeable = False
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.cutout is not None:
            object.__setattr__(self, "cutout", tuple(int(c) for c in self.cutout))
        object.__setattr__(self, "ops", tuple(self.ops))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StrongTransform):
            return NotImplemented
        return (
            self.size == other.size
            and np.array_equal(self.matrix, other.matrix)
            and self.cutout == other.cutout
            and self.flip == other.flip
            and self.ops == other.ops
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array; compare, don't hash

    def to_tensor(self) -> torch.Tensor:
        """float64[PACKED_LEN], so a DataLoader can batch it; the ops log is not packed."""
        box = self.cutout if self.cutout is not None else (0, 0, 0, 0)
        return torch.tensor(
            [*self.size, *self.matrix.reshape(-1).tolist(), *box, float(self.flip)], dtype=torch.float64
        )

    @staticmethod
    def from_tensor(t: torch.Tensor) -> "StrongTransform":
        v = t.detach().to("cpu", torch.float64).reshape(-1).tolist()
        if len(v) != PACKED_LEN:
            raise ValueError(f"a packed StrongTransform has {PACKED_LEN} values, got {len(v)}")
        box = tuple(int(round(c)) for c in v[8:12])
        cutout = box if box[2] > box[0] and box[3] > box[1] else None
        return StrongTransform(
            (int(round(v[0])), int(round(v[1]))), np.array(v[2:8]).reshape(2, 3), cutout, bool(round(v[12]))
        )


def pack_transforms(transforms: Sequence[StrongTransform]) -> torch.Tensor:
    """[B, PACKED_LEN] float64: what a DataLoader's default collate makes of per-sample ``to_tensor()``."""
    if len(transforms) == 0:
        return torch.zeros(0, PACKED_LEN, dtype=torch.float64)
    return torch.stack([t.to_tensor() for t in transforms])


def unpack_transforms(packed: torch.Tensor) -> list[StrongTransform]:
    return [StrongTransform.from_tensor(row) for row in _check_packed(packed)]


# ------------------------------------------------------------------------------------------------- the view


def strong_view(
    image: np.ndarray,
    rng: np.random.Generator,
    n_ops: int = 2,
    magnitude_max: int = 10,
    flip_p: float = 0.5,
    cutout: bool = True,
    fill: int = 127,
    ops: Sequence[ForcedOp] | None = None,
    pool: Sequence[str] | None = None,
) -> tuple[np.ndarray, StrongTransform]:
    """RandAugmentMC on a weak crop (HxWx3 uint8): flip, ``n_ops`` ops drawn with replacement, cutout.

    Random draw (``ops=None``): each op is drawn from ``pool`` (default :data:`FIXMATCH_POOL`) with
    ``v = rng.integers(1, magnitude_max)`` and runs with probability 0.5; signed ops get a random sign.
    Forced ops (``ops=[("Rotate", 9), ("TranslateX", 5, -1), ...]``): exactly these, in this order, each
    applied, sign +1 unless given; ``n_ops`` and ``pool`` are then unused (flip and cutout stay random).
    The flip is drawn first, then the ops, then the cutout centre, so a seed fixes the whole view.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    flip = bool(rng.random() < flip_p)
    if ops is not None:
        drawn = [_forced_op(op, (w, h)) for op in ops]
    else:
        drawn = _draw_ops(rng, n_ops, magnitude_max, tuple(pool) if pool is not None else FIXMATCH_POOL, (w, h))

    out = _apply_photometric(image, [op for op in drawn if op.applied and op.name in PHOTOMETRIC_OPS])
    # Each op maps its output pixel to its input pixel; strong = op_n(...op_1(flip(weak))), so
    # strong -> weak is flip @ M_1 @ ... @ M_n, every applied op counted once, in the drawn order.
    matrix = np.eye(3)
    if flip:
        matrix = matrix @ np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for op in drawn:
        if op.applied and op.name in GEOMETRIC_OPS:
            matrix = matrix @ geometric_op_matrix(op.name, op.value, (w, h))  # type: ignore[arg-type]
    matrix = matrix[:2]
    if not np.array_equal(matrix, np.eye(3)[:2]):
        out = cv2.warpAffine(
            out, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(fill, fill, fill),
        )

    box = _cutout_box(rng, (w, h)) if cutout else None
    if box is not None:
        out = out.copy() if not out.flags.writeable or out is image else out
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = fill
    return np.ascontiguousarray(out), StrongTransform((w, h), matrix, box, flip, tuple(drawn))


def op_value(name: str, v: int, sign: int, size: tuple[int, int]) -> float | int | None:
    """The parameter RandAugmentMC gives op ``name`` at magnitude ``v`` (the original's exact expressions)."""
    w, h = size
    if name in ("AutoContrast", "Equalize", "Identity"):
        return None
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return float(v) * 0.9 / _PARAMETER_MAX + 0.05
    if name == "Posterize":
        return int(v * 4 / _PARAMETER_MAX) + 4
    if name == "Solarize":
        return 256 - int(v * 256 / _PARAMETER_MAX)
    if name == "Rotate":
        return sign * int(v * 30 / _PARAMETER_MAX)
    if name in ("ShearX", "ShearY"):
        return sign * float(v) * 0.3 / _PARAMETER_MAX
    if name == "TranslateX":
        return sign * int(float(v) * 0.3 / _PARAMETER_MAX * w)
    if name == "TranslateY":
        return sign * int(float(v) * 0.3 / _PARAMETER_MAX * h)
    raise ValueError(f"unknown op {name!r}; known: {FIXMATCH_POOL}")


def geometric_op_matrix(name: str, value: float, size: tuple[int, int]) -> np.ndarray:
    """3x3 map from an op's output pixel to its input pixel (index units), as PIL does it in the original.

    PIL's ``AFFINE`` data ``(a, b, c, d, e, f)`` maps output to input in continuous coordinates, where the
    centre of pixel ``x`` is ``x + 0.5``; in index units that is ``A (p + 0.5) + t - 0.5``.
    """
    w, h = size
    if name == "Rotate":  # Image.rotate(value): about (w/2, h/2), angle -radians(value) in its reverse matrix
        a = -math.radians(value)
        cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
        cx, cy = w / 2, h / 2
        data = (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
    elif name == "ShearX":
        data = (1.0, value, 0.0, 0.0, 1.0, 0.0)
    elif name == "ShearY":
        data = (1.0, 0.0, 0.0, value, 1.0, 0.0)
    elif name == "TranslateX":
        data = (1.0, 0.0, value, 0.0, 1.0, 0.0)
    elif name == "TranslateY":
        data = (1.0, 0.0, 0.0, 0.0, 1.0, value)
    else:
        raise ValueError(f"{name!r} is not a geometric op; geometric ops: {GEOMETRIC_OPS}")
    a_, b_, c_, d_, e_, f_ = (float(x) for x in data)
    lin = np.array([[a_, b_], [d_, e_]])
    offset = np.array([c_, f_]) + lin @ np.array([0.5, 0.5]) - 0.5
    return np.array([[a_, b_, offset[0]], [d_, e_, offset[1]], [0.0, 0.0, 1.0]])


def _draw_ops(
    rng: np.random.Generator, n_ops: int, magnitude_max: int, pool: tuple[str, ...], size: tuple[int, int]
) -> list[StrongOp]:
    if magnitude_max < 2:
        raise ValueError("magnitude_max must be >= 2 (v is drawn from 1..magnitude_max-1)")
    for name in pool:
        op_value(name, 1, 1, size)  # validates the name
    drawn = []
    for _ in range(n_ops):
        name = pool[int(rng.integers(len(pool)))]
        v = int(rng.integers(1, magnitude_max))
        applied = bool(rng.random() < 0.5)
        sign = -1 if rng.random() < 0.5 else 1
        drawn.append(StrongOp(name, v, op_value(name, v, sign, size), applied))
    return drawn


def _forced_op(op: ForcedOp, size: tuple[int, int]) -> StrongOp:
    name, v = op[0], int(op[1])
    sign = int(op[2]) if len(op) > 2 else 1  # type: ignore[misc]
    if sign not in (-1, 1):
        raise ValueError(f"sign must be +1 or -1, got {sign} in {op}")
    return StrongOp(name, v, op_value(name, v, sign, size), True)


def _apply_photometric(image: np.ndarray, ops: list[StrongOp]) -> np.ndarray:
    """The original's PIL photometric ops, in order (parameter-free and pointwise ops need no geometry)."""
    if not ops:
        return image
    img = PIL.Image.fromarray(image)
    for op in ops:
        if op.name == "AutoContrast":
            img = PIL.ImageOps.autocontrast(img)
        elif op.name == "Equalize":
            img = PIL.ImageOps.equalize(img)
        elif op.name == "Posterize":
            img = PIL.ImageOps.posterize(img, int(op.value))  # type: ignore[arg-type]
        elif op.name == "Solarize":
            img = PIL.ImageOps.solarize(img, int(op.value))  # type: ignore[arg-type]
        elif op.name in ("Brightness", "Color", "Contrast", "Sharpness"):
            img = getattr(PIL.ImageEnhance, op.name)(img).enhance(float(op.value))  # type: ignore[arg-type]
    return np.asarray(img)


def _cutout_box(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    w, h = size
    side = min(w, h) // 3
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    if side == 0:
        return None
    x0, y0 = math.floor(cx - side / 2), math.floor(cy - side / 2)
    return max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)


# ---------------------------------------------------------------------------------------------- maps


def strong_grid(transforms: Transforms, out_size: tuple[int, int], device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sample of an ``out_size`` (w, h) strong-view map comes from in the weak crop.

    Returns ``grid`` [B, h, w, 2] float64, normalised for ``grid_sample(align_corners=True)`` (independent of
    the map's resolution, since a map's corner samples sit on the corner pixels), and ``valid`` [B, h, w]:
    the source point lies in the weak crop's pixel area and the sample is not in the cutout box.
    """
    packed = _check_packed(_as_packed(transforms)).to(device=device, dtype=torch.float64)
    w, h = out_size
    big_w, big_h = packed[:, 0, None, None], packed[:, 1, None, None]
    m = packed[:, 2:8].reshape(-1, 2, 3)[:, :, :, None, None]
    j = torch.arange(w, dtype=torch.float64, device=device)[None, None, :]
    i = torch.arange(h, dtype=torch.float64, device=device)[None, :, None]
    qx = j * (big_w - 1) / max(w - 1, 1)  # strong pixel coordinates of the samples
    qy = i * (big_h - 1) / max(h - 1, 1)
    px = m[:, 0, 0] * qx + m[:, 0, 1] * qy + m[:, 0, 2]  # weak-crop pixel coordinates
    py = m[:, 1, 0] * qx + m[:, 1, 1] * qy + m[:, 1, 2]
    inside = (px >= -0.5) & (px < big_w - 0.5) & (py >= -0.5) & (py < big_h - 0.5)
    x0, y0, x1, y1 = (packed[:, k, None, None] for k in range(8, 12))
    in_cutout = (qx >= x0 - 0.5) & (qx < x1 - 0.5) & (qy >= y0 - 0.5) & (qy < y1 - 0.5)
    grid = torch.stack([px / (big_w - 1).clamp(min=1) * 2 - 1, py / (big_h - 1).clamp(min=1) * 2 - 1], dim=-1)
    return grid, inside & ~in_cutout


def warp_to_strong(
    maps: torch.Tensor, transforms: Transforms, mode: str = "nearest", fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry maps aligned to the weak crop ([B, C, h, w], any resolution) into the strong views.

    ``transforms`` is a list of :class:`StrongTransform` or their DataLoader-batched packed form [B, K].
    Returns the maps on the same grid over the strong image, ``fill`` where invalid, and ``valid`` [B, h, w]
    (False out of frame and in the cutout). Points within half a pixel outside the outer samples take the
    edge value (border padding), matching the image, whose edge pixels cover that half pixel too.
    """
    if maps.dim() != 4:
        raise ValueError(f"expected maps [B, C, h, w], got {tuple(maps.shape)}")
    b, _, h, w = maps.shape
    grid, valid = strong_grid(transforms, (w, h), maps.device)
    if grid.shape[0] != b:
        raise ValueError(f"{grid.shape[0]} transforms for a batch of {b}")
    out = F.grid_sample(maps, grid.to(maps.dtype), mode=mode, padding_mode="border", align_corners=True)
    return out.masked_fill(~valid[:, None], fill), valid


def labels_to_strong(labels: torch.Tensor, transforms: Transforms, ignore_index: int = 255) -> torch.Tensor:
    """Integer label maps [B, h, w] into the strong views (nearest); out of frame and cutout -> ignore_index."""
    if labels.dim() != 3:
        raise ValueError(f"expected labels [B, h, w], got {tuple(labels.shape)}")
    out, valid = warp_to_strong(labels[:, None].double(), transforms, mode="nearest")
    return out[:, 0].round().long().masked_fill(~valid, ignore_index)


def _as_packed(transforms: Transforms) -> torch.Tensor:
    if isinstance(transforms, torch.Tensor):
        return transforms
    return pack_transforms(list(transforms))


def _check_packed(packed: torch.Tensor) -> torch.Tensor:
    if packed.dim() != 2 or packed.shape[1] != PACKED_LEN:
        raise ValueError(f"expected packed transforms [B, {PACKED_LEN}], got {tuple(packed.shape)}")
    return packed
