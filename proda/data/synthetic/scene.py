"""One synthetic street scene: the layout (sky, far background, road, sidewalks and markings, facades), the
placement of its objects, the ego-vehicle hood and the cast shadows.

:meth:`_Scene.build` fixes the order of every random draw, hence the images: layout first, then the objects
(placed, then painted far to near), then the hood.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .objects import _SceneObjects
from .painter import _pick, _shade
from .scene_state import _depth, _poisson, _Street
from .styles import (
    _BUILDING_PAINTS, _FENCE_PAINTS, _GREENS, _TERRAINS, _WALL_PAINTS, BUILDING, EGO, FENCE, PARKING, ROAD, SIDEWALK, SKY,
    TERRAIN, VEGETATION, WALL,
)


class _Scene(_SceneObjects):
    """One street scene, drawn by :meth:`build` into ``self.p`` (image and labels)."""

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

