"""The state one synthetic scene is drawn with, and the random draws that place things in it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .painter import _Painter, _pick
from .styles import _MUTED, DomainStyle, _Colour


@dataclass
class _Street:
    """The street in world X (road, sidewalks, facades), and the depth spans taken in each lane."""

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


class _SceneState:
    """What every drawing step of one scene shares: its generator and style, the camera (``p``), the street
    (set when the layout is drawn, before any object is placed) and the objects to draw far to near."""

    street: _Street

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

