"""An embedded synthetic domain-shift benchmark: procedurally generated street scenes, "GTA5" -> "Cityscapes".

The real GTA5 -> Cityscapes setting needs ~60 GB of data and a GPU. This module draws a small stand-in that
runs the whole ProDA pipeline on a laptop CPU and shows the same kind of gap:

* **source** (``gta5/``): "rendered" scenes: flat, saturated colours, crisp edges, uniform lighting, little
  noise, large sidewalk slabs and clean asphalt; many cars and trucks, wide roads, a wide-angle camera;
* **target** (``cityscapes/``): the *same* scene grammar (geometry, layout, context, object shapes) seen
  through a systematic "real camera" transformation: moderate per-class colour shifts, a per-image colour
  cast, gamma and contrast change, low-frequency illumination and cast shadows, texture and sensor noise,
  blur; different materials (small paving tiles, patched asphalt, framed windows, leafier trees, muted car
  and clothing colours); a different object mix (more persons and bicycles, fewer cars and trucks), narrower
  roads, a lower horizon, a longer focal length and the ego-vehicle hood along the bottom edge.

The appearance change is a transformation of the source look, never a swap of class appearances, so
self-training on confident pseudo labels, prototype denoising and photometric-augmentation consistency can
recover much of the gap; photometric augmentation alone recovers only part of it (the materials and the
object mix need target data). Every knob lives in :class:`DomainStyle` (:data:`SOURCE_STYLE`,
:data:`TARGET_STYLE`); ``dataclasses.replace(TARGET_STYLE, ...)`` gives a variant, and ``write_benchmark``
records both styles in ``meta.json``.

Files use the official layouts (see ``DATASETS.md``), so the real readers load them unchanged:

* ``out/gta5/images/NNNNN.png`` (RGB) + ``out/gta5/labels/NNNNN.png``: 8-bit palette PNG, index = Cityscapes
  label id, palette = Cityscapes colours (as real GTA5 labels);
* ``out/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png`` +
  ``out/cityscapes/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png`` (8-bit grey,
  raw label ids).

Labels hold RAW Cityscapes label ids (7 road, 8 sidewalk, 11 building, ...), including ignored ones: 1 ego
vehicle (target), 4 static (bins, bollards, sign backs), 9 parking (target), 10 rail track (under trams).

Every image is drawn from its own generator seeded with ``(seed, domain, index)``: the same seed gives
byte-identical files, and changing a count never changes the images that both runs share. Scenes are drawn
in world units (1 = camera height) through a pinhole camera whose focal length is relative to the image
height, so any size works.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ...io import write_json, write_palette_png, write_png, write_bytes
from ..labels import CITYSCAPES_LABELS

GENERATOR_VERSION = 1
DEFAULT_SIZE = (192, 96)
DEFAULT_N_SOURCE = 500
DEFAULT_N_TARGET = 500
DEFAULT_N_VAL = 100
# Synthetic city names (train and val cities are disjoint, as in Cityscapes); image i goes to city i % len.
TRAIN_CITIES = ("aachsynth", "bochpixel", "darmvoxel", "kolnraster")
VAL_CITIES = ("frankmesh", "lindaupoly")
CITYSCAPES_FRAME = 19  # every real Cityscapes fine image is frame 000019 of its sequence

# Domain codes that seed each image's generator together with the benchmark seed and the index.
DOMAIN_CODES = {"source": 0, "target_train": 1, "target_val": 2}

_ID = {lab.name: lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0}
ROAD, SIDEWALK, BUILDING, WALL, FENCE = _ID["road"], _ID["sidewalk"], _ID["building"], _ID["wall"], _ID["fence"]
POLE, LIGHT, SIGN, VEGETATION, TERRAIN = _ID["pole"], _ID["traffic light"], _ID["traffic sign"], _ID["vegetation"], _ID["terrain"]
SKY, PERSON, RIDER, CAR, TRUCK, BUS = _ID["sky"], _ID["person"], _ID["rider"], _ID["car"], _ID["truck"], _ID["bus"]
TRAIN, MOTORCYCLE, BICYCLE = _ID["train"], _ID["motorcycle"], _ID["bicycle"]
UNLABELED, EGO, STATIC, PARKING, RAIL = _ID["unlabeled"], _ID["ego vehicle"], _ID["static"], _ID["parking"], _ID["rail track"]

# Palette of the GTA5-style label PNGs: index = Cityscapes label id, colour = its Cityscapes colour.
LABEL_PALETTE = np.zeros((max(_ID.values()) + 1, 3), dtype=np.uint8)
for _lab in CITYSCAPES_LABELS:
    if _lab.id >= 0:
        LABEL_PALETTE[_lab.id] = _lab.color

_Colour = tuple[float, float, float]
_ClassShift = tuple[int, float, float, float, float]  # (label id, R gain, G gain, B gain, saturation factor)


@dataclass(frozen=True)
class DomainStyle:
    """Everything that differs between the two domains. Ranges are ``(low, high)``, sampled uniformly per image.

    World units: 1 = camera height (about 1.5 m): a lane is ~2.3, a car 1.2 wide and 1 high, a person 1.15.
    """

    name: str
    # ------------------------------------------------------------------ camera and layout
    horizon: tuple[float, float]  # horizon height, as a fraction of the image height from the top
    focal: tuple[float, float]  # focal length in image heights (1.0 = 90 degree horizontal FOV at 2:1)
    lanes: tuple[int, int]  # number of road lanes (inclusive range)
    lane_width: tuple[float, float]  # world units
    sidewalk_width: tuple[float, float]  # world units, each side
    verge_prob: float  # chance of a terrain (grass) strip between sidewalk and facades, per side
    building_prob: float  # chance that a facade segment is a building (else wall / fence / hedge / open field)
    max_depth: float  # objects stand up to this depth (world units; pedestrians and two-wheelers up to 0.7x)
    # ------------------------------------------------------------------ object mix: expected count per image (Poisson)
    cars: float  # moving cars in the lanes
    parked_cars: float  # cars parked along the curbs
    trucks: float
    buses: float
    trains: float  # trams (probability of one per image)
    persons: float  # pedestrians, mostly on sidewalks, some crossing
    cyclists: float  # riders on bicycles
    motorcyclists: float  # riders on motorcycles
    bicycles: float  # parked bicycles (no rider)
    motorcycles: float  # parked motorcycles (no rider)
    poles: float  # poles along the curbs; each may carry lights and signs
    light_prob: float  # chance that a pole carries a traffic light
    sign_prob: float  # chance that a pole carries a traffic sign
    trees: float
    statics: float  # bins, bollards, benches (label 4 "static", ignored in evaluation)
    ego_vehicle: float  # chance of the ego-vehicle hood (label 1) at the bottom edge
    parking_prob: float  # chance of a parking bay (label 9, ignored) along a curb
    # ------------------------------------------------------------------ materials (drawn into the scene, label unchanged)
    paving: float  # chance that the sidewalks are paved with small tiles (fine grid) instead of large slabs
    road_patches: float  # expected repaired-asphalt patches and cracks per image
    facade_detail: float  # chance that a building has framed windows and balconies
    foliage_detail: float  # leaf blobs per tree crown / hedge, relative to the source's few large blobs
    muted_paint: float  # chance that a car, truck, bus or clothing colour comes from a muted grey/black/white palette
    # ------------------------------------------------------------------ appearance
    saturation: float  # global saturation factor (> 1: the saturated "rendered" look)
    class_shift: tuple[_ClassShift, ...]  # systematic per-class colour transform (RGB gains, then saturation)
    instance_jitter: float  # std of per-instance colour gain: colour alone is never a perfect cue
    cast: _Colour  # mean per-image RGB gain (global colour cast)
    cast_jitter: float  # std of the per-image, per-channel gain around ``cast``
    gamma: tuple[float, float]  # per-image gamma (out = in ** gamma, in [0, 1])
    contrast: tuple[float, float]  # per-image contrast factor around the image mean (1 = unchanged)
    brightness: tuple[float, float]  # per-image brightness gain
    illumination: float  # amplitude (log gain) of a smooth random illumination field
    shadows: float  # expected number of cast shadows (dark ground polygons) per image
    shadow_strength: tuple[float, float]  # brightness factor inside a shadow
    texture: float  # amplitude of the multiplicative texture noise (scaled per class)
    texture_scale: float  # correlation length of the texture noise, as a fraction of the image height
    blur: tuple[float, float]  # Gaussian blur sigma, as a fraction of the image height
    noise: float  # std of the additive sensor noise, in 0..255 levels
    edge_soften: bool  # anti-aliased edges (False: crisp "rendered" edges)


SOURCE_STYLE = DomainStyle(
    name="source",
    horizon=(0.36, 0.48),
    focal=(0.95, 1.15),
    lanes=(2, 4),
    lane_width=(2.1, 2.6),
    sidewalk_width=(1.0, 2.2),
    verge_prob=0.25,
    building_prob=0.6,
    max_depth=28.0,
    cars=4.0,
    parked_cars=1.0,
    trucks=1.0,
    buses=0.4,
    trains=0.25,
    persons=2.0,
    cyclists=0.35,
    motorcyclists=0.6,
    bicycles=0.3,
    motorcycles=0.4,
    poles=4.0,
    light_prob=0.35,
    sign_prob=0.45,
    trees=3.0,
    statics=1.0,
    ego_vehicle=0.0,
    parking_prob=0.0,
    paving=0.1,
    road_patches=0.3,
    facade_detail=0.15,
    foliage_detail=1.0,
    muted_paint=0.25,
    saturation=1.2,
    class_shift=(),
    instance_jitter=0.08,
    cast=(1.0, 1.0, 1.0),
    cast_jitter=0.02,
    gamma=(1.0, 1.0),
    contrast=(1.0, 1.0),
    brightness=(0.97, 1.03),
    illumination=0.0,
    shadows=0.0,
    shadow_strength=(1.0, 1.0),
    texture=0.05,
    texture_scale=0.02,
    blur=(0.0, 0.0),
    noise=1.5,
    edge_soften=False,
)

TARGET_STYLE = DomainStyle(
    name="target",
    horizon=(0.40, 0.52),
    focal=(1.1, 1.35),
    lanes=(1, 3),
    lane_width=(1.9, 2.3),
    sidewalk_width=(1.4, 2.8),
    verge_prob=0.35,
    building_prob=0.55,
    max_depth=24.0,
    cars=2.0,
    parked_cars=2.0,
    trucks=0.5,
    buses=0.3,
    trains=0.25,
    persons=5.0,
    cyclists=1.2,
    motorcyclists=0.4,
    bicycles=1.2,
    motorcycles=0.4,
    poles=4.5,
    light_prob=0.4,
    sign_prob=0.5,
    trees=3.5,
    statics=1.5,
    ego_vehicle=0.9,
    parking_prob=0.3,
    paving=0.9,
    road_patches=3.0,
    facade_detail=0.8,
    foliage_detail=3.0,
    muted_paint=0.7,
    saturation=0.9,
    class_shift=(
        (ROAD, 1.08, 1.06, 1.03, 0.7),  # lighter, slightly warm asphalt
        (SIDEWALK, 0.94, 0.96, 1.0, 0.7),
        (BUILDING, 0.96, 0.98, 1.04, 0.7),  # greyer, bluish facades
        (WALL, 1.0, 0.99, 0.96, 0.7),
        (FENCE, 0.96, 0.96, 0.96, 0.7),
        (POLE, 0.93, 0.93, 0.96, 0.8),
        (SIGN, 1.0, 0.96, 0.9, 0.85),
        (VEGETATION, 1.07, 0.96, 0.8, 0.9),  # olive foliage
        (TERRAIN, 1.07, 0.96, 0.86, 0.85),  # browner grass
        (SKY, 1.1, 1.07, 1.0, 0.55),  # hazy, whitish sky
        (PERSON, 0.9, 0.9, 0.93, 0.8),
        (RIDER, 0.9, 0.9, 0.93, 0.8),
        (CAR, 0.96, 0.96, 1.0, 0.8),
        (TRUCK, 0.96, 0.96, 1.0, 0.8),
        (BUS, 0.96, 0.96, 1.0, 0.8),
        (TRAIN, 0.96, 0.96, 1.0, 0.8),
        (MOTORCYCLE, 0.93, 0.93, 0.96, 0.8),
        (BICYCLE, 0.93, 0.93, 0.96, 0.8),
    ),
    instance_jitter=0.1,
    cast=(0.985, 1.015, 0.965),
    cast_jitter=0.05,
    gamma=(0.86, 1.2),
    contrast=(0.75, 0.93),
    brightness=(0.85, 1.11),
    illumination=0.18,
    shadows=0.85,
    shadow_strength=(0.65, 0.86),
    texture=0.1,
    texture_scale=0.02,
    blur=(0.003, 0.007),
    noise=3.25,
    edge_soften=True,
)


def style_for(domain: str, source_style: DomainStyle = SOURCE_STYLE, target_style: DomainStyle = TARGET_STYLE) -> DomainStyle:
    if domain not in DOMAIN_CODES:
        raise ValueError(f"domain must be one of {list(DOMAIN_CODES)}, got {domain!r}")
    return source_style if domain == "source" else target_style


# ====================================================================================== materials
# Shared by both domains (before the style transformation): lists of base colours, one picked per instance.
_CAR_PAINTS: tuple[_Colour, ...] = (
    (190, 30, 30), (30, 60, 160), (225, 225, 225), (35, 35, 38), (150, 152, 158), (30, 90, 50),
    (220, 180, 40), (110, 20, 30), (90, 110, 150), (200, 200, 190), (80, 80, 85),
)
_TRUCK_BOXES: tuple[_Colour, ...] = ((230, 230, 230), (200, 200, 205), (60, 90, 160), (180, 40, 40), (230, 200, 60), (90, 120, 80))
_BUS_PAINTS: tuple[_Colour, ...] = ((200, 40, 40), (230, 190, 40), (40, 80, 170), (235, 235, 235), (60, 140, 90))
_TRAIN_PAINTS: tuple[_Colour, ...] = ((235, 235, 230), (230, 200, 50), (190, 40, 45), (60, 90, 140))
_BUILDING_PAINTS: tuple[_Colour, ...] = (
    (180, 160, 130), (150, 80, 60), (130, 130, 135), (200, 190, 170), (110, 100, 90), (170, 120, 90), (150, 150, 160),
)
_WALL_PAINTS: tuple[_Colour, ...] = ((150, 150, 145), (130, 120, 110), (175, 165, 150), (120, 125, 130))
_FENCE_PAINTS: tuple[_Colour, ...] = ((120, 120, 125), (140, 100, 60), (90, 110, 90), (170, 170, 165))
_POLE_PAINTS: tuple[_Colour, ...] = ((130, 130, 135), (70, 75, 70), (160, 160, 160), (45, 60, 50))
_GREENS: tuple[_Colour, ...] = ((60, 110, 40), (45, 95, 35), (80, 125, 50), (55, 100, 60))
_TERRAINS: tuple[_Colour, ...] = ((110, 150, 60), (125, 145, 70), (140, 120, 80), (95, 135, 55))
_SHIRTS: tuple[_Colour, ...] = (
    (200, 40, 40), (40, 60, 150), (230, 230, 230), (30, 30, 30), (60, 130, 70), (220, 180, 50), (120, 60, 140),
    (150, 150, 150), (200, 110, 40), (90, 60, 40),
)
_TROUSERS: tuple[_Colour, ...] = ((40, 45, 70), (30, 30, 30), (90, 80, 70), (60, 60, 65), (150, 130, 100), (40, 60, 110))
_SKINS: tuple[_Colour, ...] = ((230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50))
_MUTED: tuple[_Colour, ...] = ((40, 40, 42), (90, 90, 92), (150, 150, 152), (200, 200, 198), (235, 235, 232), (70, 60, 55))
_GLASS: _Colour = (45, 55, 70)
_TYRE: _Colour = (25, 25, 28)

# Pedestrians and riders are drawn wider than life, so that they stay a few pixels wide at CPU-demo sizes.
_BODY_WIDTH = 1.4

# Relative strength of the texture noise per label id (1 elsewhere).
_TEXTURE_GAIN = np.ones(256, dtype=np.float32)
for _lid, _g in ((VEGETATION, 1.8), (TERRAIN, 1.5), (ROAD, 0.9), (SIDEWALK, 1.0), (SKY, 0.3), (BUILDING, 1.1), (EGO, 0.3)):
    _TEXTURE_GAIN[_lid] = _g


# ====================================================================================== drawing
_UNIT_CIRCLES: dict[int, np.ndarray] = {}

class _Painter:
    """A pinhole camera at height 1 looking down +Z, drawing label ids and colours with the same polygons."""

    SHIFT = 4  # cv2 fixed-point bits: sub-pixel polygon vertices
    NEAR = 0.25  # near clipping depth

    def __init__(self, width: int, height: int, horizon: float, cx: float, focal: float, soft: bool) -> None:
        self.W, self.H = width, height
        self.hy = horizon * height
        self.cx = cx
        self.f = focal * height
        self.img = np.zeros((height, width, 3), np.float32)
        self.lbl = np.zeros((height, width), np.uint8)
        self.line_type = cv2.LINE_AA if soft else cv2.LINE_8

    # ---------------------------------------------------------------- projection
    def project(self, X: Any, Y: Any, Z: Any) -> np.ndarray:
        """World points -> ``[..., 2]`` pixel coordinates (depths clipped to the near plane)."""
        X, Y = np.asarray(X, float), np.asarray(Y, float)
        Z = np.maximum(np.asarray(Z, float), self.NEAR)
        k = self.f / Z
        u = self.cx + X * k
        v = self.hy + (1.0 - Y) * k
        out = np.empty(np.broadcast_shapes(u.shape, v.shape) + (2,))
        out[..., 0] = u
        out[..., 1] = v
        return out

    def scale(self, Z: float) -> float:
        """Pixels per world unit at depth Z."""
        return self.f / max(Z, self.NEAR)

    def ground_v(self, Z: float) -> float:
        return self.hy + self.f / max(Z, self.NEAR)

    # ---------------------------------------------------------------- primitives (pixel coordinates)
    def _fix(self, pts: Any) -> np.ndarray:
        pts = np.asarray(pts, float) * (1 << self.SHIFT)
        pts = np.minimum(np.maximum(pts, -1e7), 1e7)  # far-off vertices of near-clipped planes
        return np.rint(pts).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, pts: Any, label: int | None, colour: _Colour) -> None:
        p = self._fix(pts)
        cv2.fillPoly(self.img, [p], colour, self.line_type, self.SHIFT)
        if label is not None:
            cv2.fillPoly(self.lbl, [p], int(label), cv2.LINE_8, self.SHIFT)

    def fill_many(self, polys: list[np.ndarray] | np.ndarray, label: int | None, colour: _Colour) -> None:
        """Several polygons of one colour; ``polys`` is a list of [k, 2] arrays or one [N, k, 2] array."""
        if len(polys) == 0:
            return
        if isinstance(polys, np.ndarray):
            fixed = self._fix(polys).reshape(polys.shape[0], polys.shape[1], 1, 2)
            ps = list(fixed)
        else:
            ps = [self._fix(p) for p in polys]
        cv2.fillPoly(self.img, ps, colour, self.line_type, self.SHIFT)
        if label is not None:
            cv2.fillPoly(self.lbl, ps, int(label), cv2.LINE_8, self.SHIFT)

    def line(self, p0: Any, p1: Any, width: float, label: int | None, colour: _Colour) -> None:
        t = max(1, int(round(width)))
        m = 1 << self.SHIFT
        a = (int(round(min(max(float(p0[0]), -1e5), 1e5) * m)), int(round(min(max(float(p0[1]), -1e5), 1e5) * m)))
        b = (int(round(min(max(float(p1[0]), -1e5), 1e5) * m)), int(round(min(max(float(p1[1]), -1e5), 1e5) * m)))
        cv2.line(self.img, a, b, colour, t, self.line_type, self.SHIFT)
        if label is not None:
            cv2.line(self.lbl, a, b, int(label), t, cv2.LINE_8, self.SHIFT)

    @staticmethod
    def ellipse_pts(cx: float, cy: float, rx: float, ry: float, n: int = 14) -> np.ndarray:
        unit = _UNIT_CIRCLES.get(n)
        if unit is None:
            a = np.linspace(0, 2 * np.pi, n, endpoint=False)
            unit = _UNIT_CIRCLES[n] = np.stack([np.cos(a), np.sin(a)], axis=-1)
        return unit * (rx, ry) + (cx, cy)

    # ---------------------------------------------------------------- world-space helpers
    def ground(self, X0: float, X1: float, Z0: float, Z1: float, label: int | None, colour: _Colour) -> None:
        self.fill(self.project([X0, X1, X1, X0], 0.0, [Z0, Z0, Z1, Z1]), label, colour)

    def xplane(self, X: float, Y0: float, Y1: float, Z0: float, Z1: float, label: int | None, colour: _Colour) -> None:
        self.fill(self.project(X, [Y0, Y0, Y1, Y1], [Z0, Z1, Z1, Z0]), label, colour)

    def zplane(self, X0: float, X1: float, Y0: float, Y1: float, Z: float, label: int | None, colour: _Colour) -> None:
        self.fill(self.project([X0, X1, X1, X0], [Y0, Y0, Y1, Y1], Z), label, colour)

    def box(self, X0: float, X1: float, Y0: float, Y1: float, Z0: float, Z1: float, label: int, colour: _Colour,
            front: _Colour | None = None) -> None:
        """Visible faces of an axis-aligned box (side faces darker, top lighter)."""
        c = np.asarray(colour, float)
        if X0 > 0:
            self.xplane(X0, Y0, Y1, Z0, Z1, label, _shade(c, 0.78))
        if X1 < 0:
            self.xplane(X1, Y0, Y1, Z0, Z1, label, _shade(c, 0.78))
        if Y1 < 1:
            self.fill(self.project([X0, X1, X1, X0], Y1, [Z0, Z0, Z1, Z1]), label, _shade(c, 1.12))
        elif Y0 > 1:
            self.fill(self.project([X0, X1, X1, X0], Y0, [Z0, Z0, Z1, Z1]), label, _shade(c, 0.6))
        self.zplane(X0, X1, Y0, Y1, Z0, label, tuple(front) if front is not None else tuple(c))

    def sprite(self, u: float, v: float, s: float, pts: Any, label: int | None, colour: _Colour) -> None:
        """A polygon given in world units relative to a foot point (u, v) in pixels, ``s`` pixels per unit."""
        p = np.asarray(pts, float)
        self.fill(np.stack([u + p[:, 0] * s, v - p[:, 1] * s], axis=-1), label, colour)

    def sprite_line(self, u: float, v: float, s: float, a: Any, b: Any, width: float, label: int | None, colour: _Colour) -> None:
        self.line((u + a[0] * s, v - a[1] * s), (u + b[0] * s, v - b[1] * s), width * s, label, colour)


def _shade(c: Any, k: float) -> _Colour:
    r, g, b = (min(255.0, max(0.0, float(x) * k)) for x in c)
    return (r, g, b)


def _pick(rng: np.random.Generator, options: tuple[_Colour, ...], jitter: float) -> _Colour:
    base = np.asarray(options[int(rng.integers(len(options)))], float)
    gain = (1 + rng.normal(0, jitter)) * (1 + rng.normal(0, jitter / 3, 3))
    return _shade(base * gain, 1.0)


def _quad_poly(a: Any, b: Any, half_width: float) -> np.ndarray:
    """A thick segment from a to b (2D), as a quad."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * half_width
    return np.array([a + n, b + n, b - n, a - n])


# ====================================================================================== scene
@dataclass
class _Street:
    XL: float  # road edges (world X)
    XR: float
    lanes: int
    lane_w: float
    swL: float
    swR: float
    FL: float  # facade lines
    FR: float
    z_end: float  # depth of the building row closing the street
    lane_owner: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def lane_x(self, k: int) -> float:
        return self.XL + (k + 0.5) * self.lane_w

    def reserve(self, lane: int, z0: float, z1: float) -> bool:
        taken = self.lane_owner.setdefault(lane, [])
        if any(z0 < b + 0.8 and a < z1 + 0.8 for a, b in taken):
            return False
        taken.append((z0, z1))
        return True


def _poisson(rng: np.random.Generator, lam: float) -> int:
    return int(rng.poisson(lam)) if lam > 0 else 0


def _depth(rng: np.random.Generator, z0: float, z1: float) -> float:
    """Log-uniform depth: about as many objects per image height band near as far."""
    return float(math.exp(rng.uniform(math.log(z0), math.log(z1))))


class _Scene:
    def __init__(self, rng: np.random.Generator, width: int, height: int, style: DomainStyle) -> None:
        self.rng, self.style = rng, style
        horizon = rng.uniform(*style.horizon)
        focal = rng.uniform(*style.focal)
        cx = width / 2 + rng.normal(0, 0.04) * height
        self.p = _Painter(width, height, horizon, cx, focal, style.edge_soften)
        self.z_bottom = focal / (1 - horizon)  # depth of the ground at the bottom image row
        self.jit = style.instance_jitter
        self.objects: list[tuple[float, int, Callable[[], None]]] = []  # (depth, tie-break, draw)
        self.crossing: float | None = None  # depth of a zebra crossing, if any

    def paint(self, options: tuple[_Colour, ...]) -> _Colour:
        """An instance colour: from ``options``, or (style.muted_paint of the time) from the muted palette."""
        return _pick(self.rng, _MUTED if self.rng.random() < self.style.muted_paint else options, self.jit)

    def add(self, z: float, draw: Callable[[], None]) -> None:
        self.objects.append((z, len(self.objects), draw))

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        rng, st = self.rng, self.style
        lanes = int(rng.integers(st.lanes[0], st.lanes[1] + 1))
        lane_w = rng.uniform(*st.lane_width)
        cam_lane = int(rng.integers(lanes // 2, lanes)) if lanes > 1 else 0
        XL = -(cam_lane + 0.5) * lane_w + rng.normal(0, 0.15)
        XR = XL + lanes * lane_w
        swL, swR = rng.uniform(*st.sidewalk_width, size=2)
        vL = rng.uniform(0.8, 3.0) if rng.random() < st.verge_prob else 0.0
        vR = rng.uniform(0.8, 3.0) if rng.random() < st.verge_prob else 0.0
        self.street = _Street(XL, XR, lanes, lane_w, swL, swR, XL - swL - vL, XR + swR + vR, rng.uniform(40, 120))
        self.draw_sky()
        self.draw_background()
        self.draw_ground(vL, vR)
        for side in (-1, 1):
            self.draw_facades(side)
        self.place_objects()
        for _, _, draw in sorted(self.objects, key=lambda t: (-t[0], t[1])):
            draw()
        if rng.random() < st.ego_vehicle:
            self.draw_ego()

    def draw_sky(self) -> None:
        p, rng = self.p, self.rng
        top = np.array(_pick(rng, ((90, 150, 225), (110, 160, 220), (70, 130, 210)), 0.05))
        bottom = np.clip(top * 0.4 + np.array([200, 215, 235]) * 0.6, 0, 255)
        rows = np.clip(np.arange(p.H, dtype=np.float32) / max(p.hy, 1.0), 0, 1)[:, None]
        p.img[:] = (top[None, :] * (1 - rows) + bottom[None, :] * rows)[:, None, :]
        p.lbl[:] = SKY
        for _ in range(_poisson(rng, 1.0)):  # clouds: still sky
            cx, cy = rng.uniform(0, p.W), rng.uniform(0, p.hy * 0.7)
            r = rng.uniform(0.05, 0.15) * p.H
            white = _shade((235, 238, 245), rng.uniform(0.9, 1.02))
            for _ in range(3):
                p.fill(p.ellipse_pts(cx + rng.normal(0, r), cy + rng.normal(0, r * 0.3), r, r * 0.4), SKY, white)

    def draw_background(self) -> None:
        """Far ground and the row of buildings / trees that closes the street."""
        p, rng, s = self.p, self.rng, self.street
        p.ground(-400, 400, s.z_end, 2000, TERRAIN, _pick(rng, _TERRAINS, self.jit))
        x = -90.0
        while x < 90:
            w = rng.uniform(4, 16)
            if rng.random() < 0.75:
                h = rng.uniform(2, 14)
                c = _pick(rng, _BUILDING_PAINTS, self.jit)
                p.zplane(x, x + w, 0, h, s.z_end + rng.uniform(0, 10), BUILDING, c)
            else:
                self._tree_line(x, x + w, s.z_end + rng.uniform(0, 10), rng.uniform(1.5, 4))
            x += w

    def _tree_line(self, X0: float, X1: float, Z: float, h: float) -> None:
        """A bumpy vegetation silhouette facing the camera."""
        p, rng = self.p, self.rng
        n = 8
        xs = np.linspace(X0, X1, n)
        ys = h * (0.75 + 0.25 * rng.random(n))
        pts = np.concatenate([p.project(xs, ys, Z), p.project([X1, X0], [0, 0], Z)])
        p.fill(pts, VEGETATION, _pick(rng, _GREENS, self.jit))

    def draw_ground(self, vL: float, vR: float) -> None:
        p, rng, s, st = self.p, self.rng, self.street, self.style
        z0, z1 = 0.3, s.z_end
        road_c = _pick(rng, ((92, 92, 96), (80, 80, 84), (105, 102, 100)), self.jit * 0.6)
        p.ground(s.XL, s.XR, z0, z1, ROAD, road_c)
        for _ in range(_poisson(rng, st.road_patches)):  # repaired asphalt and cracks: still road
            zp = _depth(rng, max(self.z_bottom * 0.8, 0.5), 30)
            if rng.random() < 0.6:
                xa = rng.uniform(s.XL, s.XR - 0.5)
                p.ground(xa, min(s.XR, xa + rng.uniform(0.5, 3)), zp, zp + rng.uniform(0.5, 6), ROAD,
                         _shade(road_c, rng.uniform(0.7, 1.25)))
            else:
                xs = rng.uniform(s.XL, s.XR) + np.cumsum(rng.normal(0, 0.25, 6))
                pts = p.project(xs, 0.0, zp + np.linspace(0, rng.uniform(1, 4), 6))
                for a, b in zip(pts[:-1], pts[1:]):
                    p.line(a, b, 1, ROAD, _shade(road_c, 0.55))
        walk_c = _pick(rng, ((165, 160, 150), (150, 150, 155), (175, 150, 130)), self.jit * 0.6)
        curb_c = _shade(walk_c, 1.15)
        seam_c = _shade(walk_c, 0.8)
        paved = rng.random() < st.paving
        if paved:  # small tiles: lighter or reddish paving, a fine grid of darker joints
            walk_c = _pick(rng, ((185, 175, 165), (175, 130, 115), (160, 160, 165)), self.jit * 0.6)
            seam_c = _shade(walk_c, 0.7)
        for X0, X1 in ((s.XL - s.swL, s.XL), (s.XR, s.XR + s.swR)):
            p.ground(X0, X1, z0, z1, SIDEWALK, walk_c)
            step = 0.45 if paved else 1.2
            zs = np.arange(1.0, min(z1, 25.0), step)[:, None] + (0, 0, 0.05, 0.05)
            p.fill_many(p.project(np.array([X0, X1, X1, X0]), 0.0, zs), SIDEWALK, seam_c)
            if paved:
                xs = np.arange(X0 + 0.45, X1 - 0.1, 0.45)[:, None] + (0, 0.04, 0.04, 0)
                p.fill_many(p.project(xs, 0.0, np.array([z0, z0, min(z1, 25.0), min(z1, 25.0)])), SIDEWALK, seam_c)
        # curb strips (drawn as the road-side edge of each sidewalk)
        p.ground(s.XL - 0.15, s.XL, z0, z1, SIDEWALK, curb_c)
        p.ground(s.XR, s.XR + 0.15, z0, z1, SIDEWALK, curb_c)
        if vL > 0:
            p.ground(s.FL, s.XL - s.swL, z0, z1, TERRAIN, _pick(rng, _TERRAINS, self.jit))
        if vR > 0:
            p.ground(s.XR + s.swR, s.FR, z0, z1, TERRAIN, _pick(rng, _TERRAINS, self.jit))
        # parking bays (ignored label) along a curb
        for side in (-1, 1):
            if rng.random() < st.parking_prob:
                za = rng.uniform(3, 15)
                X0, X1 = (s.XL, s.XL + 1.0) if side < 0 else (s.XR - 1.0, s.XR)
                p.ground(X0, X1, za, za + rng.uniform(4, 12), PARKING, _shade(road_c, 1.12))
        # lane markings: white (or yellow) dashes; still road
        mark = (235, 235, 230)
        for k in range(1, s.lanes):
            X = s.XL + k * s.lane_w
            dash, gap = rng.uniform(1.5, 3), rng.uniform(2, 4)
            start = rng.uniform(0, dash + gap)
            centre = k == s.lanes // 2 and s.lanes > 1
            colour = (230, 190, 40) if centre and rng.random() < 0.3 else mark
            if centre and rng.random() < 0.5:
                p.ground(X - 0.07, X + 0.07, z0, min(z1, 80), ROAD, colour)
            else:
                zs = np.arange(start, min(z1, 60), dash + gap)[:, None] + (0, 0, dash, dash)
                p.fill_many(p.project(np.array([X - 0.06, X + 0.06, X + 0.06, X - 0.06]), 0.0, zs), ROAD, colour)
        if rng.random() < 0.5:  # edge lines
            for X in (s.XL + 0.25, s.XR - 0.25):
                p.ground(X - 0.05, X + 0.05, z0, min(z1, 80), ROAD, mark)
        if rng.random() < 0.3:  # zebra crossing
            zc = rng.uniform(max(self.z_bottom, 3), 15)
            xs = np.arange(s.XL + 0.2, s.XR - 0.2, 0.8)
            p.fill_many(p.project(xs[:, None] + (0, 0.4, 0.4, 0), 0.0, np.array([zc, zc, zc + 2, zc + 2])), ROAD, mark)
            self.crossing = zc
        else:
            self.crossing = None

    # ------------------------------------------------------------------ facades
    def draw_facades(self, side: int) -> None:
        p, rng, st, s = self.p, self.rng, self.style, self.street
        F = s.FL if side < 0 else s.FR
        segments = []
        z = 0.3
        while z < s.z_end:
            length = rng.uniform(3, 16) * max(1.0, z / 25)  # far segments are a few pixels: fewer, longer
            segments.append((z, min(z + length, s.z_end + 5)))
            z += length
        for z0, z1 in reversed(segments):
            r = rng.random()
            if r < st.building_prob:
                self._building(F + side * rng.choice([0.0, 0.0, 0.3, 0.8]), z0, z1, rng.uniform(2.5, 14))
            else:
                kind = int(rng.integers(4))
                # what lies behind a low front: ground, then vegetation or a set-back building
                p.ground(F, F + side * 40, z0, z1, TERRAIN, _pick(rng, _TERRAINS, self.jit))
                if rng.random() < 0.5:
                    self._building(F + side * rng.uniform(3, 12), z0, z1, rng.uniform(3, 12), windows=False)
                else:
                    self._hedge(F + side * rng.uniform(2, 10), z0, z1, rng.uniform(1.5, 5))
                if kind == 0:
                    hw = rng.uniform(0.6, 2.2)
                    c = _pick(rng, _WALL_PAINTS, self.jit)
                    p.xplane(F, 0, hw, z0, z1, WALL, c)
                    p.xplane(F, hw - 0.1, hw, z0, z1, WALL, _shade(c, 1.15))  # coping
                elif kind == 1:
                    self._fence(F, z0, z1, rng.uniform(0.9, 1.8))
                elif kind == 2:
                    self._hedge(F, z0, z1, rng.uniform(0.6, 1.5))
                else:
                    # open ground: trees further out
                    for zt in np.arange(z0 + rng.uniform(0, 3), z1, rng.uniform(3, 6)):
                        X = F + side * rng.uniform(1, 8)
                        self._tree(X, zt, rng.uniform(2.5, 5), rng.uniform(0.8, 2.0))

    def _building(self, F: float, z0: float, z1: float, h: float, windows: bool = True) -> None:
        p, rng = self.p, self.rng
        c = _pick(rng, _BUILDING_PAINTS, self.jit)
        p.xplane(F, 0, h, z0, z1, BUILDING, _shade(c, 0.9))
        p.xplane(F, h - 0.25, h, z0, z1, BUILDING, _shade(c, 0.7))  # cornice
        if rng.random() < 0.5:
            p.xplane(F, 0, 1.6, z0, z1, BUILDING, _shade(c, 0.6))  # shop fronts
        if not windows:
            return
        win = _pick(rng, ((45, 55, 70), (70, 85, 105), (30, 35, 45)), self.jit)
        col_w, col_gap = rng.uniform(0.5, 0.9), rng.uniform(0.5, 1.0)
        floor, win_h = rng.uniform(1.8, 2.3), rng.uniform(0.8, 1.2)
        zs = np.arange(z0 + 0.3, z1 - col_w, col_w + col_gap)
        ys = np.arange(2.0, h - win_h - 0.2, floor)
        if len(zs) == 0 or len(ys) == 0:
            return
        # skip windows that would be under a pixel wide
        width_px = p.f * abs(F) * (1 / zs - 1 / (zs + col_w))
        zs = zs[width_px > 0.8]
        if len(zs) == 0:
            return
        Z0, Y0 = np.meshgrid(zs, ys)
        Z0, Y0 = Z0.ravel(), Y0.ravel()
        if rng.random() < self.style.facade_detail:  # light window frames and dark balcony slabs
            e = 0.12
            Zs = np.stack([Z0 - e, Z0 + col_w + e, Z0 + col_w + e, Z0 - e], axis=1)
            Ys = np.stack([Y0 - e, Y0 - e, Y0 + win_h + e, Y0 + win_h + e], axis=1)
            p.fill_many(p.project(F, Ys, Zs), BUILDING, _shade(c, 1.35))
            Zs = np.stack([z0 + 0 * ys, z1 + 0 * ys, z1 + 0 * ys, z0 + 0 * ys], axis=1)
            Yb = np.stack([ys - 0.3, ys - 0.3, ys - 0.15, ys - 0.15], axis=1)
            p.fill_many(p.project(F, Yb, Zs), BUILDING, _shade(c, 0.55))
        Zs = np.stack([Z0, Z0 + col_w, Z0 + col_w, Z0], axis=1)
        Ys = np.stack([Y0, Y0, Y0 + win_h, Y0 + win_h], axis=1)
        p.fill_many(p.project(F, Ys, Zs), BUILDING, win)

    def _fence(self, F: float, z0: float, z1: float, h: float) -> None:
        p, rng = self.p, self.rng
        c = _pick(rng, _FENCE_PAINTS, self.jit)
        if rng.random() < 0.5:  # solid panel fence
            p.xplane(F, 0, h, z0, z1, FENCE, c)
            zs = np.arange(z0, z1, 0.5)[:, None] + (0, 0.08, 0.08, 0)
            p.fill_many(p.project(F, np.array([0, 0, h, h]), zs), FENCE, _shade(c, 0.75))
            return
        spacing = rng.uniform(0.15, 0.35)
        zs = np.arange(z0, z1, spacing)[:, None] + (0, 0.05, 0.05, 0)
        polys = list(p.project(F, np.array([0, 0, h, h]), zs))
        polys += [p.project(F, [y, y, y + 0.07, y + 0.07], [z0, z1, z1, z0]) for y in (0.1, h - 0.1)]
        if rng.random() < 0.5:  # lattice: diagonal-ish mid rail
            polys.append(p.project(F, [h * 0.5, h * 0.5, h * 0.5 + 0.06, h * 0.5 + 0.06], [z0, z1, z1, z0]))
        p.fill_many(polys, FENCE, c)

    def _hedge(self, F: float, z0: float, z1: float, h: float) -> None:
        p, rng = self.p, self.rng
        n = max(3, int((z1 - z0) / 0.8))
        zs = np.linspace(z0, z1, n)
        ys = h * (0.85 + 0.15 * rng.random(n))
        pts = np.concatenate([p.project(F, ys, zs), p.project(F, [0, 0], [z1, z0])])
        c = _pick(rng, _GREENS, self.jit)
        p.fill(pts, VEGETATION, c)
        for _ in range(int((z1 - z0) / 2 * self.style.foliage_detail)):  # leafy blobs
            zb = rng.uniform(z0, z1)
            u, v = p.project(F, rng.uniform(0.2, 0.8) * h, zb)
            r = 0.25 * p.scale(zb) / math.sqrt(self.style.foliage_detail)
            p.fill(p.ellipse_pts(u, v, r, r * 0.8, 8), VEGETATION, _shade(c, rng.uniform(0.75, 1.2)))

    def _tree(self, X: float, Z: float, h: float, crown: float) -> None:
        """Trunk and crown (both vegetation, as in Cityscapes); added to the depth-sorted objects."""
        rng = self.rng
        green = _pick(rng, _GREENS, self.jit)
        bark = _pick(rng, ((90, 70, 50), (70, 60, 50)), self.jit)
        n_blobs = max(3, int(round(5 * self.style.foliage_detail)))
        size = 1 / math.sqrt(self.style.foliage_detail)
        blobs = [(rng.normal(0, 0.4), rng.normal(0, 0.3), rng.uniform(0.55, 0.85) * size, rng.uniform(0.7, 1.25))
                 for _ in range(n_blobs)]
        terrain = _pick(rng, _TERRAINS, self.jit)
        pit = rng.random() < 0.5

        def draw() -> None:
            p = self.p
            if pit:
                p.ground(X - 0.5, X + 0.5, Z - 0.5, Z + 0.5, TERRAIN, terrain)
            u, v = p.project(X, 0, Z)
            sc = p.scale(Z)
            p.sprite(u, v, sc, [(-0.08, 0), (0.08, 0), (0.06, h), (-0.06, h)], VEGETATION, bark)
            cy = h + crown * 0.6
            p.sprite(u, v, sc, p.ellipse_pts(0, cy, crown, crown * 0.85), VEGETATION, green)
            for dx, dy, r, k in blobs:
                p.sprite(u, v, sc, p.ellipse_pts(dx * crown, cy + dy * crown, r * crown * 0.6, r * crown * 0.5, 10),
                         VEGETATION, _shade(green, k))

        self.add(Z, draw)

    # ------------------------------------------------------------------ objects
    def place_objects(self) -> None:
        rng, st, s = self.rng, self.style, self.street
        zb = max(self.z_bottom, 1.0)
        dmax = st.max_depth

        def walk_x(side: int, margin: float = 0.3) -> float:
            if side < 0:
                return rng.uniform(s.XL - s.swL + margin, s.XL - margin)
            return rng.uniform(s.XR + margin, s.XR + s.swR - margin)

        for _ in range(_poisson(rng, st.trees)):
            side = int(rng.choice([-1, 1]))
            X = (s.XL - 0.7 if side < 0 else s.XR + 0.7) if rng.random() < 0.7 else walk_x(side)
            self._tree(X, _depth(rng, zb * 1.2, 1.3 * dmax), rng.uniform(1.5, 3.0), rng.uniform(0.9, 2.2))
        for _ in range(_poisson(rng, st.poles)):
            side = int(rng.choice([-1, 1]))
            X = s.XL - 0.35 if side < 0 else s.XR + 0.35
            self._pole(X, _depth(rng, zb * 1.1, dmax), side)
        for _ in range(_poisson(rng, st.statics)):
            side = int(rng.choice([-1, 1]))
            self._static(walk_x(side), _depth(rng, zb * 1.1, 0.8 * dmax))
        for _ in range(_poisson(rng, st.persons)):
            if rng.random() < 0.8:
                X, Z, facing = walk_x(int(rng.choice([-1, 1]))), _depth(rng, zb * 1.05, 0.7 * dmax), int(rng.integers(3))
            else:
                Z = self.crossing + 1 if self.crossing is not None else _depth(rng, zb * 1.2, 0.7 * dmax)
                X, facing = rng.uniform(s.XL, s.XR), 2
            self._person(X, Z, facing)
        for _ in range(_poisson(rng, st.bicycles)):
            self._two_wheeler(walk_x(int(rng.choice([-1, 1])), 0.5), _depth(rng, zb * 1.05, 0.7 * dmax), motor=False, ridden=False,
                              k=rng.uniform(0.5, 1.0))
        for _ in range(_poisson(rng, st.motorcycles)):
            self._two_wheeler(walk_x(int(rng.choice([-1, 1])), 0.5), _depth(rng, zb * 1.05, 0.7 * dmax), motor=True, ridden=False,
                              k=rng.uniform(0.5, 1.0))
        # vehicles in lanes
        if rng.random() < st.trains:
            lane = int(rng.integers(s.lanes))
            Z = rng.uniform(max(zb, 4), max(zb, 4) + 0.6 * dmax)
            L = rng.uniform(14, 22)
            if s.reserve(lane, Z, Z + L):
                self._train(s.lane_x(lane), Z, L)
        for kind, lam in (("bus", st.buses), ("truck", st.trucks), ("car", st.cars), ("parked", st.parked_cars),
                          ("cyclist", st.cyclists), ("motorcyclist", st.motorcyclists)):
            for _ in range(_poisson(rng, lam)):
                self._vehicle(kind, zb)

    def _vehicle(self, kind: str, zb: float) -> None:
        rng, s = self.rng, self.street
        Z = _depth(rng, max(zb * 0.95, 2.0), self.style.max_depth * (0.7 if kind in ('cyclist', 'motorcyclist') else 1))
        if kind == "parked":
            lane = 0 if rng.random() < 0.5 else s.lanes - 1
            X = (s.XL + 0.75) if lane == 0 else (s.XR - 0.75)
        elif kind == "cyclist":
            lane = s.lanes - 1
            X = s.XR - rng.uniform(0.4, 0.9)
        else:
            lane = int(rng.integers(s.lanes))
            X = s.lane_x(lane) + rng.normal(0, 0.15)
        oncoming = X < -s.lane_w * 0.5 and kind not in ("parked",)
        length = {"bus": 8.0, "truck": 7.0, "car": 3.0, "parked": 3.0, "cyclist": 1.2, "motorcyclist": 1.5}[kind]
        if not s.reserve(lane if kind != "cyclist" else 100 + lane, Z, Z + length):
            return
        if kind == "bus":
            self._bus(X, Z, oncoming)
        elif kind == "truck":
            self._truck(X, Z, oncoming)
        elif kind in ("car", "parked"):
            self._car(X, Z, oncoming)
        else:
            self._two_wheeler(X, Z, motor=kind == "motorcyclist", ridden=True, k=rng.uniform(0.25, 0.6))

    def _car(self, X: float, Z: float, oncoming: bool) -> None:
        rng = self.rng
        paint = self.paint(_CAR_PAINTS)
        w = rng.uniform(1.15, 1.3) / 2
        L = rng.uniform(2.7, 3.2)
        tall = rng.random() < 0.25  # vans / SUVs
        body_top = rng.uniform(0.62, 0.72) + (0.12 if tall else 0)
        roof = body_top + rng.uniform(0.3, 0.38) + (0.15 if tall else 0)
        glass = _pick(rng, (_GLASS,), self.jit)
        lamp = (230, 40, 40) if not oncoming else (240, 240, 210)

        def draw() -> None:
            p = self.p
            for zw in (Z + 0.35, Z + L - 0.75):
                for xw in (X - w, X + w - 0.22):
                    p.box(xw, xw + 0.22, 0, 0.42, zw, zw + 0.4, CAR, _TYRE)
            p.box(X - w, X + w, 0.18, body_top, Z, Z + L, CAR, paint)
            ci = 0.1
            p.box(X - w + ci, X + w - ci, body_top, roof, Z + 0.5, Z + L - 0.6, CAR, paint, front=glass)
            # windows on the visible side of the cabin
            if X - w + ci > 0 or X + w - ci < 0:
                Xs = X - w + ci if X - w + ci > 0 else X + w - ci
                p.xplane(Xs, body_top + 0.05, roof - 0.06, Z + 0.6, Z + L - 0.7, CAR, glass)
            for xl in (X - w + 0.05, X + w - 0.25):
                p.zplane(xl, xl + 0.2, body_top - 0.16, body_top - 0.05, Z - 0.01, CAR, lamp)
            p.zplane(X - 0.2, X + 0.2, 0.3, 0.42, Z - 0.01, CAR, (215, 215, 205))  # plate (id -1 is never drawn)

        self.add(Z, draw)

    def _truck(self, X: float, Z: float, oncoming: bool) -> None:
        rng = self.rng
        cab_c = self.paint(_CAR_PAINTS)
        box_c = self.paint(_TRUCK_BOXES)
        w = rng.uniform(1.5, 1.7) / 2
        cab_L, box_L = rng.uniform(1.4, 1.8), rng.uniform(4, 6.5)
        cab_h, box_h = rng.uniform(1.7, 2.0), rng.uniform(2.2, 2.8)
        glass = _pick(rng, (_GLASS,), self.jit)

        def draw() -> None:
            p = self.p
            zc, zx = (Z, Z + cab_L + 0.1) if oncoming else (Z + box_L + 0.1, Z)
            for zw in (Z + 0.5, Z + cab_L + box_L - 1.0):
                for xw in (X - w, X + w - 0.28):
                    p.box(xw, xw + 0.28, 0, 0.6, zw, zw + 0.6, TRUCK, _TYRE)

            def cab() -> None:
                p.box(X - w, X + w, 0.35, cab_h, zc, zc + cab_L, TRUCK, cab_c)
                if oncoming:
                    p.zplane(X - w + 0.1, X + w - 0.1, cab_h * 0.6, cab_h - 0.12, zc - 0.01, TRUCK, glass)
                    p.zplane(X - w + 0.2, X + w - 0.2, 0.45, 0.75, zc - 0.01, TRUCK, _shade(cab_c, 0.5))  # grille

            def cargo() -> None:
                p.box(X - w, X + w, 0.4, box_h, zx, zx + box_L, TRUCK, box_c)
                if not oncoming:
                    p.zplane(X - 0.02, X + 0.02, 0.5, box_h - 0.1, zx - 0.01, TRUCK, _shade(box_c, 0.7))  # door seam
                    p.zplane(X - w, X + w, 0.4, 0.5, zx - 0.01, TRUCK, (40, 40, 40))  # bumper

            if oncoming:
                cargo()
                cab()
            else:
                cab()
                cargo()

        self.add(Z, draw)

    def _bus(self, X: float, Z: float, oncoming: bool) -> None:
        rng = self.rng
        c = self.paint(_BUS_PAINTS)
        w = rng.uniform(1.6, 1.75) / 2
        L, h = rng.uniform(7, 9), rng.uniform(2.0, 2.25)
        glass = _pick(rng, (_GLASS,), self.jit)

        def draw() -> None:
            p = self.p
            for zw in (Z + 1.0, Z + L - 2.0):
                for xw in (X - w, X + w - 0.28):
                    p.box(xw, xw + 0.28, 0, 0.6, zw, zw + 0.6, BUS, _TYRE)
            p.box(X - w, X + w, 0.25, h, Z, Z + L, BUS, c)
            if X - w > 0 or X + w < 0:  # window band on the visible side
                Xs = X - w if X - w > 0 else X + w
                p.xplane(Xs, 1.05, h - 0.25, Z + 0.3, Z + L - 0.3, BUS, glass)
            if oncoming:
                p.zplane(X - w + 0.08, X + w - 0.08, 0.95, h - 0.12, Z - 0.01, BUS, glass)
                p.zplane(X - w + 0.15, X + w - 0.15, h - 0.1, h - 0.02, Z - 0.02, BUS, (230, 140, 30))  # route display
            else:
                p.zplane(X - w + 0.15, X + w - 0.15, 1.3, h - 0.2, Z - 0.01, BUS, glass)
                for xl in (X - w + 0.08, X + w - 0.28):
                    p.zplane(xl, xl + 0.2, 0.5, 0.7, Z - 0.01, BUS, (220, 40, 40))

        self.add(Z, draw)

    def _train(self, X: float, Z: float, L: float) -> None:
        """A tram on rails (rail track, label 10, is ignored), with a pantograph on the roof."""
        rng = self.rng
        c = _pick(rng, _TRAIN_PAINTS, self.jit)
        stripe = _pick(rng, _TRAIN_PAINTS + ((40, 40, 45),), self.jit)
        w, h = 0.9, rng.uniform(2.15, 2.4)
        glass = _pick(rng, (_GLASS,), self.jit)
        rail = (120, 115, 110)

        def draw() -> None:
            p = self.p
            for xr in (X - 0.5, X + 0.45):
                p.ground(xr, xr + 0.06, max(self.z_bottom * 0.8, 0.3), Z + L + 30, RAIL, rail)
            p.box(X - w, X + w, 0.2, h, Z, Z + L, TRAIN, c)
            if X - w > 0 or X + w < 0:
                Xs = X - w if X - w > 0 else X + w
                p.xplane(Xs, 0.25, 0.6, Z, Z + L, TRAIN, stripe)
                p.xplane(Xs, 1.0, h - 0.35, Z + 0.4, Z + L - 0.4, TRAIN, glass)
            p.zplane(X - w + 0.1, X + w - 0.1, 0.95, h - 0.15, Z - 0.01, TRAIN, glass)
            p.zplane(X - w, X + w, 0.25, 0.6, Z - 0.01, TRAIN, stripe)
            zp = Z + L * 0.3
            a, b = p.project([X - 0.5, X], [h, h + 0.6], zp)
            c2 = p.project(X + 0.5, h, zp)
            sc = p.scale(zp)
            p.line(a, b, 0.05 * sc, TRAIN, (50, 50, 50))
            p.line(b, c2, 0.05 * sc, TRAIN, (50, 50, 50))

        self.add(Z, draw)

    def _pole(self, X: float, Z: float, side: int) -> None:
        rng, st = self.rng, self.style
        c = _pick(rng, _POLE_PAINTS, self.jit)
        h = rng.uniform(2.5, 5.0)
        pw = rng.uniform(0.08, 0.12)
        arm = rng.random() < 0.4 and h > 3.5
        arm_len = rng.uniform(1.0, 2.5)
        light = rng.random() < st.light_prob
        light_on_arm = arm and rng.random() < 0.5
        lamp_state = int(rng.integers(3))
        housing = _pick(rng, ((35, 35, 38), (45, 45, 40), (200, 170, 40)), self.jit)
        light_back = rng.random() < 0.2
        sign = rng.random() < st.sign_prob
        sign_kind = int(rng.integers(5))
        sign_h = rng.uniform(1.7, 2.4) if h > 2.8 else h - 0.5
        sign_r = rng.uniform(0.35, 0.5)
        sign_back = rng.random() < 0.15
        sign_blue = rng.random() < 0.6

        def draw() -> None:
            p = self.p
            p.zplane(X - pw, X + pw, 0, h, Z, POLE, c)
            ax = X - side * arm_len
            if arm:
                p.fill(p.project([X, ax, ax, X], [h - 0.07, h - 0.07, h, h], Z), POLE, c)
                p.zplane(ax - 0.18, ax + 0.18, h - 0.12, h, Z, POLE, _shade(c, 1.2))  # lamp head
            if light:
                lx, top = (ax, h - 0.15) if light_on_arm else (X, h + 0.75)
                p.zplane(lx - 0.2, lx + 0.2, top - 0.9, top, Z - 0.02, LIGHT, housing)
                if not light_back:
                    for k in range(3):
                        on = k == lamp_state
                        col = ((230, 40, 30), (240, 180, 30), (40, 220, 110))[k] if on else (60, 60, 60)
                        u, v = p.project(lx, top - 0.17 - k * 0.27, Z - 0.03)
                        r = 0.1 * p.scale(Z)
                        p.fill(p.ellipse_pts(u, v, r, r, 8), LIGHT, col)
            if sign:
                u, v = p.project(X, sign_h, Z - 0.03)
                r = sign_r * p.scale(Z)
                if sign_back:
                    p.fill(p.ellipse_pts(u, v, r, r, 12), STATIC, (150, 150, 150))
                elif sign_kind == 0:  # prohibition: red ring, white disc
                    p.fill(p.ellipse_pts(u, v, r, r, 12), SIGN, (210, 30, 30))
                    p.fill(p.ellipse_pts(u, v, r * 0.7, r * 0.7, 12), SIGN, (240, 240, 240))
                elif sign_kind == 1:  # mandatory: blue disc, white arrow
                    p.fill(p.ellipse_pts(u, v, r, r, 12), SIGN, (30, 80, 190))
                    p.fill([(u - r * 0.15, v + r * 0.6), (u + r * 0.15, v + r * 0.6), (u, v - r * 0.6)], SIGN, (240, 240, 240))
                elif sign_kind == 2:  # warning triangle
                    p.fill([(u - r, v + r * 0.8), (u + r, v + r * 0.8), (u, v - r)], SIGN, (210, 30, 30))
                    p.fill([(u - r * 0.6, v + r * 0.55), (u + r * 0.6, v + r * 0.55), (u, v - r * 0.45)], SIGN, (240, 240, 240))
                elif sign_kind == 3:  # priority diamond
                    p.fill([(u - r, v), (u, v - r), (u + r, v), (u, v + r)], SIGN, (240, 240, 240))
                    p.fill([(u - r * 0.6, v), (u, v - r * 0.6), (u + r * 0.6, v), (u, v + r * 0.6)], SIGN, (235, 190, 30))
                else:  # information panel
                    p.fill([(u - r * 1.4, v - r * 0.6), (u + r * 1.4, v - r * 0.6), (u + r * 1.4, v + r * 0.6), (u - r * 1.4, v + r * 0.6)],
                           SIGN, (30, 90, 170) if sign_blue else (30, 120, 60))

        self.add(Z, draw)

    def _static(self, X: float, Z: float) -> None:
        rng = self.rng
        kind = int(rng.integers(3))
        c = _pick(rng, ((60, 100, 60), (90, 90, 95), (150, 110, 60), (40, 40, 40)), self.jit)

        def draw() -> None:
            p = self.p
            if kind == 0:  # bin
                p.box(X - 0.17, X + 0.17, 0, 0.6, Z, Z + 0.35, STATIC, c)
            elif kind == 1:  # bollard
                p.box(X - 0.05, X + 0.05, 0, 0.5, Z, Z + 0.1, STATIC, c)
            else:  # bench
                p.box(X - 0.6, X + 0.6, 0.28, 0.35, Z, Z + 0.3, STATIC, c)
                p.zplane(X - 0.6, X + 0.6, 0.4, 0.65, Z + 0.3, STATIC, _shade(c, 0.85))
                for xl in (X - 0.55, X + 0.5):
                    p.zplane(xl, xl + 0.05, 0, 0.3, Z, STATIC, (50, 50, 50))

        self.add(Z, draw)

    def _person(self, X: float, Z: float, facing: int) -> None:
        """facing: 0 front, 1 back, 2 side (walking)."""
        rng = self.rng
        h = rng.uniform(0.95, 1.25)
        shirt = self.paint(_SHIRTS)
        trousers = _pick(rng, _TROUSERS, self.jit)
        skin = _pick(rng, _SKINS, self.jit)
        hair = _pick(rng, ((30, 25, 20), (90, 60, 30), (170, 140, 90), (120, 120, 120)), self.jit)
        stride = rng.uniform(0.05, 0.25) * (1 if rng.random() < 0.5 else -1)
        bag = rng.random() < 0.2
        self.add(Z, lambda: self._draw_person(X, Z, h, facing, shirt, trousers, skin, hair, stride, bag))

    def _draw_person(self, X: float, Z: float, h: float, facing: int, shirt: _Colour, trousers: _Colour, skin: _Colour,
                     hair: _Colour, stride: float, bag: bool) -> None:
        p = self.p
        u, v = p.project(X, 0, Z)
        s = p.scale(Z)

        def sp(pts: Any, label: int, colour: _Colour) -> None:  # sprite with the stylised body width
            q = np.array(pts, float)
            q[:, 0] *= _BODY_WIDTH
            p.sprite(u, v, s, q, label, colour)

        hip, sh = 0.5 * h, 0.82 * h
        if facing == 2:
            sp(_quad_poly((0, hip), (stride * h, 0), 0.045 * h), PERSON, trousers)
            sp(_quad_poly((0, hip), (-stride * h, 0), 0.045 * h), PERSON, _shade(trousers, 0.8))
            sp([(-0.07 * h, hip), (0.07 * h, hip), (0.075 * h, sh), (-0.075 * h, sh)], PERSON, shirt)
            sp(_quad_poly((0, sh - 0.03 * h), (-stride * 0.8 * h, hip), 0.03 * h), PERSON, _shade(shirt, 0.85))
        else:
            for dx in (-0.055, 0.055):
                sp([(dx * h - 0.04 * h, 0), (dx * h + 0.04 * h, 0), (dx * h + 0.045 * h, hip),
                                   (dx * h - 0.045 * h, hip)], PERSON, trousers)
            sp([(-0.11 * h, hip), (0.11 * h, hip), (0.13 * h, sh), (-0.13 * h, sh)], PERSON, shirt)
            for dx in (-1, 1):
                sp(_quad_poly((dx * 0.15 * h, sh - 0.02 * h), (dx * 0.17 * h, hip + 0.02 * h), 0.03 * h),
                         PERSON, _shade(shirt, 0.85))
        sp([(-0.025 * h, sh), (0.025 * h, sh), (0.025 * h, sh + 0.04 * h), (-0.025 * h, sh + 0.04 * h)], PERSON, skin)
        head = p.ellipse_pts(0, 0.91 * h, 0.065 * h, 0.075 * h, 10)
        sp(head, PERSON, skin if facing != 1 else hair)
        sp(p.ellipse_pts(0, 0.95 * h, 0.065 * h, 0.04 * h, 8), PERSON, hair)
        if bag:
            sp([(0.12 * h, hip), (0.24 * h, hip), (0.24 * h, hip + 0.12 * h), (0.12 * h, hip + 0.12 * h)],
                     PERSON, (60, 40, 30))

    def _two_wheeler(self, X: float, Z: float, motor: bool, ridden: bool, k: float) -> None:
        """A bicycle or motorcycle seen from the side, foreshortened by ``k`` (1 = pure side view), maybe ridden."""
        rng = self.rng
        d = k * (1 if rng.random() < 0.5 else -1)
        frame = _pick(rng, _CAR_PAINTS if motor else _SHIRTS, self.jit)
        label = MOTORCYCLE if motor else BICYCLE
        shirt = self.paint(_SHIRTS)
        trousers = _pick(rng, _TROUSERS, self.jit)
        skin = _pick(rng, _SKINS, self.jit)
        helmet = _pick(rng, _CAR_PAINTS, self.jit)

        def draw() -> None:
            p = self.p
            u, v = p.project(X, 0, Z)
            s = p.scale(Z)

            def pt(x: float, y: float) -> tuple[float, float]:
                return (x * d, y)

            if motor:
                wr, wb = 0.21, 0.45
                for x in (-wb, wb):
                    p.sprite(u, v, s, p.ellipse_pts(x * d, wr, wr * max(abs(d), 0.35), wr, 12), label, _TYRE)
                    p.sprite(u, v, s, p.ellipse_pts(x * d, wr, wr * 0.45 * max(abs(d), 0.35), wr * 0.45, 8), label, (150, 150, 155))
                body = [pt(-0.45, 0.38), pt(-0.15, 0.28), pt(0.25, 0.3), pt(0.42, 0.5), pt(0.3, 0.62), pt(0.05, 0.64),
                        pt(-0.12, 0.56), pt(-0.48, 0.58)]
                if abs(d) < 0.45:  # nearly rear view: give the body some width
                    body = [(-0.16, 0.3), (0.16, 0.3), (0.2, 0.62), (-0.2, 0.62)]
                p.sprite(u, v, s, body, label, frame)
                p.sprite(u, v, s, [pt(-0.42, 0.58), pt(-0.05, 0.58), pt(-0.05, 0.66), pt(-0.4, 0.66)], label, (30, 30, 30))
                p.sprite_line(u, v, s, pt(0.3, 0.62), pt(0.33, 0.85), 0.05, label, (60, 60, 60))
                p.sprite_line(u, v, s, (0.33 * d - 0.18, 0.85), (0.33 * d + 0.18, 0.85), 0.04, label, (60, 60, 60))
                seat, bar, knee, foot, shoulder = pt(-0.1, 0.7), pt(0.32, 0.85), pt(0.18, 0.55), pt(0.1, 0.3), pt(0.05, 1.12)
            else:
                wr, wb = 0.23, 0.36
                t = 0.05
                for x in (-wb, wb):
                    ring = p.ellipse_pts(x * d, wr, wr * max(abs(d), 0.15), wr, 14)
                    for a, b in zip(ring, np.roll(ring, -1, axis=0)):
                        p.sprite_line(u, v, s, a, b, t, label, _TYRE)
                    p.sprite_line(u, v, s, (x * d, 0.02), (x * d, 2 * wr - 0.02), 0.015, label, (150, 150, 150))
                bb, sp, hd = pt(0.0, 0.2), pt(-0.12, 0.55), pt(0.27, 0.55)
                for a, b in ((pt(-wb, wr), bb), (bb, sp), (sp, hd), (bb, hd), (hd, pt(wb, wr)), (pt(-wb, wr), sp)):
                    p.sprite_line(u, v, s, a, b, t, label, frame)
                p.sprite_line(u, v, s, pt(0.27, 0.55), pt(0.25, 0.66), t, label, frame)
                p.sprite_line(u, v, s, (0.25 * d - 0.14, 0.66), (0.25 * d + 0.14, 0.66), t, label, (40, 40, 40))
                p.sprite_line(u, v, s, pt(-0.2, 0.6), pt(-0.06, 0.6), 0.05, label, (30, 30, 30))
                seat, bar, knee, foot, shoulder = pt(-0.12, 0.62), pt(0.25, 0.66), pt(0.06, 0.45), pt(0.0, 0.15), pt(0.06, 1.05)
            if not ridden:
                return
            hw = 0.05 * _BODY_WIDTH
            p.sprite(u, v, s, _quad_poly(seat, knee, hw), RIDER, trousers)
            p.sprite(u, v, s, _quad_poly(knee, foot, hw * 0.8), RIDER, trousers)
            torso_w = (0.09 if abs(d) > 0.45 else 0.13) * _BODY_WIDTH
            p.sprite(u, v, s, _quad_poly(seat, shoulder, torso_w), RIDER, shirt)
            p.sprite(u, v, s, _quad_poly(shoulder, bar, 0.03 * _BODY_WIDTH), RIDER, _shade(shirt, 0.85))
            hx, hy = shoulder[0] + 0.03 * d, shoulder[1] + 0.12
            p.sprite(u, v, s, p.ellipse_pts(hx, hy, 0.075 * _BODY_WIDTH, 0.085, 10), RIDER, helmet if motor else skin)

        self.add(Z, draw)

    def draw_ego(self) -> None:
        """The hood of the recording car along the bottom edge (label 1 'ego vehicle', ignored)."""
        p, rng = self.p, self.rng
        e = rng.uniform(0.05, 0.1) * p.H
        xs = np.linspace(-0.05 * p.W, 1.05 * p.W, 16)
        ys = p.H - e * (1 - 0.5 * ((xs - p.W / 2) / (0.55 * p.W)) ** 2)
        pts = np.concatenate([np.stack([xs, ys], -1), [(1.05 * p.W, p.H + 2), (-0.05 * p.W, p.H + 2)]])
        c = _pick(rng, ((40, 45, 55), (160, 165, 170), (25, 25, 30)), self.jit)
        p.fill(pts, EGO, c)
        p.fill(np.stack([xs, ys + 0.25 * e], -1).tolist() + [(xs[-1], ys[-1] + 0.45 * e), (xs[0], ys[0] + 0.45 * e)],
               EGO, _shade(c, 1.4))

    # ------------------------------------------------------------------ shadows (image only)
    def shadow_mask(self) -> np.ndarray:
        """Smooth mask (1 = lit) of a few cast shadows: building shadows across the road, tree shadows."""
        rng, st, s, p = self.rng, self.style, self.street, self.p
        mask = np.ones((p.H, p.W), np.float32)
        for _ in range(_poisson(rng, st.shadows)):
            k = rng.uniform(*st.shadow_strength)
            side = -1 if rng.random() < 0.5 else 1
            z0 = _depth(rng, max(self.z_bottom * 0.7, 0.5), 40)
            z1 = z0 + rng.uniform(3, 20)
            reach = rng.uniform(0.3, 1.0) * (s.XR - s.XL + s.swL + s.swR)
            F = s.FL if side < 0 else s.FR
            X1 = F - side * reach
            pts = p.project([F, X1, X1 - side * rng.uniform(-2, 2), F], 0.0, [z0, z0, z1, z1])
            cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], float(k), cv2.LINE_AA, 4)
        return mask


# ====================================================================================== styling
def _class_tables(style: DomainStyle) -> tuple[np.ndarray, np.ndarray]:
    gains = np.ones((256, 3), np.float32)
    sats = np.ones(256, np.float32)
    for lid, r, g, b, sat in style.class_shift:
        gains[lid] = (r, g, b)
        sats[lid] = sat
    return gains, sats


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-std noise correlated over about ``cells`` pixels."""
    gh, gw = max(2, int(round(h / max(cells, 1.0)))), max(2, int(round(w / max(cells, 1.0))))
    n = rng.standard_normal((gh, gw)).astype(np.float32)
    n = cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC)
    return n / (n.std() + 1e-6)


def _apply_style(img: np.ndarray, lbl: np.ndarray, style: DomainStyle, rng: np.random.Generator,
                 shadow: np.ndarray | None) -> np.ndarray:
    """Colours in 0..255 float32 + label ids -> the domain's final uint8 image."""
    H, W = lbl.shape
    x = img / 255.0
    gains, sats = _class_tables(style)
    if style.class_shift:
        x = x * gains[lbl]
    # saturation: per class, then global
    sat = (sats[lbl] * style.saturation)[..., None]
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * sat
    if style.texture > 0:
        cells = style.texture_scale * H
        tex = 0.6 * _smooth_noise(rng, H, W, cells) + 0.4 * rng.standard_normal((H, W)).astype(np.float32)
        x = x * (1 + style.texture * _TEXTURE_GAIN[lbl] * tex)[..., None]
    if shadow is not None:
        x = x * shadow[..., None]
    if style.illumination > 0:
        field_ = _smooth_noise(rng, H, W, H / 2.5) * style.illumination * 0.5
        field_ += np.linspace(rng.normal(0, style.illumination), rng.normal(0, style.illumination), H, dtype=np.float32)[:, None]
        x = x * np.exp(field_)[..., None]
    cast = np.asarray(style.cast, np.float32) * (1 + rng.normal(0, style.cast_jitter, 3)).astype(np.float32)
    x = x * cast * rng.uniform(*style.brightness)
    c = rng.uniform(*style.contrast)
    if c != 1.0:
        m = x.mean()
        x = m + (x - m) * c
    x = np.clip(x, 0, 1)
    g = rng.uniform(*style.gamma)
    if g != 1.0:
        x = x ** g
    sigma = rng.uniform(*style.blur) * H
    if sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = x * 255.0
    if style.noise > 0:
        x = x + rng.normal(0, style.noise, x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ====================================================================================== public API
def image_rng(seed: int, domain: str, index: int) -> np.random.Generator:
    """The generator of one image: depends only on (seed, domain, index)."""
    return np.random.default_rng([int(seed), DOMAIN_CODES[domain], int(index), GENERATOR_VERSION])


def render_scene(
    seed: int,
    domain: str,
    index: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    source_style: DomainStyle = SOURCE_STYLE,
    target_style: DomainStyle = TARGET_STYLE,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(HxWx3 uint8 RGB image, HxW uint8 raw Cityscapes label ids)``.

    ``domain`` is ``'source'``, ``'target_train'`` or ``'target_val'``; ``size`` is ``(W, H)``.
    """
    width, height = _check_size(size)
    style = style_for(domain, source_style, target_style)
    rng = image_rng(seed, domain, index)
    scene = _Scene(rng, width, height, style)
    scene.build()
    shadow = scene.shadow_mask() if style.shadows > 0 else None
    image = _apply_style(scene.p.img, scene.p.lbl, style, rng, shadow)
    return image, scene.p.lbl.copy()


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise ValueError(f"size must be at least 16x16, got {width}x{height}")
    return width, height


def gta5_name(index: int) -> str:
    """File name of source image ``index`` (0-based): ``00001.png`` ..."""
    return f"{index + 1:05d}.png"


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """``(city, '<city>_<seq:06d>_<frame:06d>')`` of target image ``index`` of ``split`` ('train' or 'val')."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{CITYSCAPES_FRAME:06d}"


def benchmark_files(out: str | Path, n_source: int, n_target: int, n_val: int) -> list[tuple[str, int, Path, Path]]:
    """``(domain, index, image path, label path)`` of every file of a benchmark, in writing order."""
    out = Path(out)
    files = []
    for i in range(n_source):
        files.append(("source", i, out / "gta5" / "images" / gta5_name(i), out / "gta5" / "labels" / gta5_name(i)))
    for domain, split, n in (("target_train", "train", n_target), ("target_val", "val", n_val)):
        for i in range(n):
            city, stem = cityscapes_stem(split, i)
            files.append((domain, i,
                          out / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                          out / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))
    return files


def benchmark_meta(seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, n_source: int = DEFAULT_N_SOURCE,
                   n_target: int = DEFAULT_N_TARGET, n_val: int = DEFAULT_N_VAL, source_style: DomainStyle = SOURCE_STYLE,
                   target_style: DomainStyle = TARGET_STYLE) -> dict[str, Any]:
    """The content of ``meta.json``: everything the files depend on (plus where they are)."""
    width, height = _check_size(size)
    return {
        "generator": "proda.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": [width, height],
        "n_source": int(n_source),
        "n_target": int(n_target),
        "n_val": int(n_val),
        "source": {"dataset": "gta5", "root": "gta5"},
        "target": {"dataset": "cityscapes", "root": "cityscapes", "train_cities": list(TRAIN_CITIES),
                   "val_cities": list(VAL_CITIES)},
        "styles": {"source": _jsonable(asdict(source_style)), "target": _jsonable(asdict(target_style))},
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, so a re-read meta.json compares equal


_README = """\
proda synthetic domain-shift benchmark (generator version {version}, seed {seed})

A procedurally generated stand-in for GTA5 -> Cityscapes, written by proda.data.synthetic.write_benchmark.

gta5/images/NNNNN.png, gta5/labels/NNNNN.png        source, {n_source} images ("rendered" look)
cityscapes/leftImg8bit/train/<city>/*.png           target train, {n_target} images ("real camera" look)
cityscapes/leftImg8bit/val/<city>/*.png + gtFine     target val, {n_val} images
cityscapes/gtFine/train/<city>/*_gtFine_labelIds.png target train labels (for the oracle only)

Image size {width}x{height}. Labels are raw Cityscapes label ids (GTA5: palette PNG, index = label id;
Cityscapes: 8-bit grey). Ids 1 (ego vehicle), 4 (static), 9 (parking) and 10 (rail track) occur and are
ignored in evaluation. All parameters, including the domain styles, are in meta.json.
"""

_OWN_FILE = re.compile(r"^(\d{5}\.png|[a-z]+_\d{6}_\d{6}_(leftImg8bit|gtFine_labelIds)\.png)$")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove_stale(out: Path, keep: set[Path]) -> int:
    """Delete benchmark-named PNGs under the benchmark's own folders that the new parameters do not write."""
    removed = 0
    folders = [out / "gta5" / "images", out / "gta5" / "labels"]
    for kind in ("leftImg8bit", "gtFine"):
        for split in ("train", "val"):
            base = out / "cityscapes" / kind / split
            if base.is_dir():
                folders += [d for d in base.iterdir() if d.is_dir()]
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.is_file() and _OWN_FILE.match(f.name) and f not in keep:
                f.unlink()
                removed += 1
        if folder.parent.name in ("train", "val") and not any(folder.iterdir()):
            folder.rmdir()
    return removed


_CHUNK = 25  # images per task handed to a worker process
_WRITE_THREADS = 8


def _write_chunk(job: tuple[int, tuple[int, int], DomainStyle, DomainStyle, list[tuple[str, int, Path, Path]]]) -> int:
    """Render and write a list of images (runs in a worker process or inline); returns how many."""
    seed, size, source_style, target_style, items = job
    with ThreadPoolExecutor(_WRITE_THREADS) as writers:
        pending = []
        for domain, index, img_path, lbl_path in items:
            image, label = render_scene(seed, domain, index, size, source_style, target_style)
            pending.append(writers.submit(write_png, img_path, image))
            if domain == "source":
                pending.append(writers.submit(write_palette_png, lbl_path, label, LABEL_PALETTE))
            else:
                pending.append(writers.submit(write_png, lbl_path, label))
        for f in pending:
            f.result()  # re-raises a failed write
    return len(items)


def write_benchmark(
    out: str | Path,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_source: int = DEFAULT_N_SOURCE,
    n_target: int = DEFAULT_N_TARGET,
    n_val: int = DEFAULT_N_VAL,
    progress: bool = True,
    source_style: DomainStyle = SOURCE_STYLE,
    target_style: DomainStyle = TARGET_STYLE,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the benchmark under ``out`` (see the module docstring for the layout); return its meta data.

    If ``out/meta.json`` already describes the same parameters, nothing is written (``result['skipped']``
    is True). Otherwise the old ``meta.json`` is removed first, every file is (re)written, PNGs of an
    earlier, larger benchmark are deleted, and ``meta.json`` is written last: an interrupted run never
    looks complete.

    ``workers`` processes render in parallel (default: 2 when there are at least 200 images, else 1); the
    files do not depend on it. Each process writes through a small thread pool, since every write is an
    fsync-ed atomic replace and mostly waits on the disk.
    """
    out = Path(out)
    for name, n in (("n_source", n_source), ("n_target", n_target), ("n_val", n_val)):
        if int(n) < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if int(n_source) > 99999:
        raise ValueError(f"n_source must be <= 99999 (5-digit GTA5 names), got {n_source}")
    meta = benchmark_meta(seed, size, n_source, n_target, n_val, source_style, target_style)
    meta_path = out / "meta.json"
    if meta_path.is_file() and _read_meta(meta_path) == meta:
        return {**meta, "skipped": True, "seconds": 0.0}
    meta_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files = benchmark_files(out, n_source, n_target, n_val)
    removed = _remove_stale(out, {f for _, _, img, lbl in files for f in (img, lbl)})
    total = len(files)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= 200 else 1
    chunks = [files[i: i + _CHUNK] for i in range(0, total, _CHUNK)]
    jobs = [(int(seed), tuple(meta["size"]), source_style, target_style, chunk) for chunk in chunks]
    done, next_report = 0, max(1, total // 10)

    def report(n: int) -> None:
        nonlocal done, next_report
        done += n
        if progress and (done >= next_report or done == total):
            print(f"synth: {done}/{total} images ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
            next_report = done + max(1, total // 10)

    if workers <= 1 or len(chunks) <= 1:
        for job in jobs:
            report(_write_chunk(job))
    else:
        import multiprocessing

        # spawn, not fork: the caller may hold threads (torch, a DataLoader) that fork would copy half-way.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
            for n in pool.map(_write_chunk, jobs):
                report(n)
    write_bytes(out / "README.txt", _README.format(width=meta["size"][0], height=meta["size"][1], **meta).encode())
    write_json(meta_path, meta)
    seconds = time.perf_counter() - t0
    if progress and removed:
        print(f"synth: removed {removed} stale file(s) of an earlier benchmark", file=sys.stderr, flush=True)
    return {**meta, "skipped": False, "seconds": seconds}


__all__ = [
    "DEFAULT_N_SOURCE", "DEFAULT_N_TARGET", "DEFAULT_N_VAL", "DEFAULT_SIZE", "DomainStyle", "GENERATOR_VERSION",
    "LABEL_PALETTE", "SOURCE_STYLE", "TARGET_STYLE", "TRAIN_CITIES", "VAL_CITIES", "benchmark_files", "benchmark_meta",
    "cityscapes_stem", "gta5_name", "image_rng", "render_scene", "style_for", "write_benchmark",
]
