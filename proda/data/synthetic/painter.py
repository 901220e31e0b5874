"""Drawing primitives: a pinhole camera that paints label ids and colours with the same polygons.

Coordinates are world units (1 = camera height) projected into pixels; :func:`_pick` draws one instance colour.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .styles import _Colour

_UNIT_CIRCLES: dict[int, np.ndarray] = {}  # n -> the n-gon of the unit circle (ellipse_pts)


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
