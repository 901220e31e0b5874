"""The objects of a street scene: trees, poles with lights and signs, street furniture, pedestrians, and
vehicles (cars, trucks, buses, trams, bicycles and motorcycles, ridden or parked).

Each method draws its random attributes at once (the order of draws fixes the images) and queues the drawing
itself with :meth:`_SceneState.add`, so that objects are painted far to near.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .painter import _pick, _quad_poly, _shade
from .scene_state import _depth, _SceneState
from .styles import (
    _BUS_PAINTS, _CAR_PAINTS, _GLASS, _GREENS, _POLE_PAINTS, _SHIRTS, _SKINS, _TERRAINS, _TRAIN_PAINTS, _TROUSERS,
    _TRUCK_BOXES, _TYRE, BICYCLE, BUS, CAR, LIGHT, MOTORCYCLE, PERSON, POLE, RAIL, RIDER, SIGN, STATIC, TERRAIN, TRAIN,
    TRUCK, VEGETATION, _Colour,
)

# Pedestrians and riders are drawn wider than life, so that they stay a few pixels wide at CPU-demo sizes.
_BODY_WIDTH = 1.4


class _SceneObjects(_SceneState):
    """Draws one object of each kind at a given place; :class:`.scene._Scene` decides how many and where."""

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

