"""Weak view geometry: maps computed on the full image land on the weak crop (full_to_weak)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proda.data.transforms import (
    WeakGeometry, apply_weak_geometry, full_to_weak, sample_weak_geometry,
)


def smooth_field(w: int, h: int) -> np.ndarray:
    """[H, W, 3] smooth values of the pixel position (what a feature map of a smooth scene looks like)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([np.sin(x / 23.0) + y / h, np.cos(y / 17.0) * x / w, (x + 2 * y) / (w + 2 * h)], axis=-1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), stride=st.sampled_from([1, 4, 8]))
def test_full_to_weak_matches_the_crop(seed, stride):
    w, h = 256, 128
    field = smooth_field(w, h).astype(np.float32)
    rng = np.random.default_rng(seed)
    # crop 97x49 and grid 25x13: grid samples fall exactly on crop pixels (every 4th)
    geom = sample_weak_geometry(rng, (w, h), (97, 49), None, (0.6, 1.6), True)
    crop, _ = apply_weak_geometry(geom, field)
    # a stride-s map of the full image with the network's convention: samples on pixels j*(N-1)/(n-1)
    n_w, n_h = (w - 1) // stride + 1, (h - 1) // stride + 1
    xs = np.rint(np.arange(n_w) * (w - 1) / (n_w - 1)).astype(int)
    ys = np.rint(np.arange(n_h) * (h - 1) / (n_h - 1)).astype(int)
    full_map = torch.from_numpy(field[np.ix_(ys, xs)].transpose(2, 0, 1).copy())[None]
    grid_w, grid_h = 25, 13
    carried = full_to_weak(full_map.double(), [geom], (grid_w, grid_h))[0].numpy().transpose(1, 2, 0)
    expected = crop[::4, ::4]
    # exact at stride 1 (both are the same bilinear sample); coarser maps differ by interpolation only
    tol = 1e-5 if stride == 1 else 0.01 * stride
    assert np.abs(carried - expected).max() < tol


def test_geometry_packs_and_flip_mirrors():
    geom = WeakGeometry((64, 32), (80, 40), (5, 3, 37, 19), True)
    assert WeakGeometry.from_tensor(geom.to_tensor()) == geom
    ramp = torch.arange(64, dtype=torch.float64).repeat(32, 1)[None, None]
    plain = full_to_weak(ramp, [WeakGeometry((64, 32), (64, 32), (0, 0, 64, 32), False)], (64, 32))
    assert torch.allclose(plain, ramp)
    flipped = full_to_weak(ramp, [WeakGeometry((64, 32), (64, 32), (0, 0, 64, 32), True)], (64, 32))
    assert torch.allclose(flipped, ramp.flip(-1))


@pytest.mark.parametrize("size", [(48, 24), (2048, 1024)])
def test_weak_view_draws_within_bounds(size):
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = sample_weak_geometry(rng, size, (32, 16), None, (0.75, 1.25), True)
        x0, y0, x1, y1 = g.crop_box
        assert 0 <= x0 and x1 <= g.scaled_size[0] and 0 <= y0 and y1 <= g.scaled_size[1]
        assert (x1 - x0, y1 - y0) == (32, 16)


def test_weak_labels_are_the_nearest_resize_of_the_label():
    """Gathering only the crop gives exactly cv2.INTER_NEAREST_EXACT (= PIL NEAREST, the original's) of the
    whole label, then cropped and flipped, over random scales, odd sizes and both flips."""
    rng = np.random.default_rng(1)
    flips = set()
    for full in [(192, 96), (33, 17), (1914, 1052)]:
        w, h = full
        label = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        for _ in range(20):
            geom = sample_weak_geometry(rng, full, (24, 12), None, (0.3, 2.0), True)
            flips.add(geom.flip)
            _, carried = apply_weak_geometry(geom, np.zeros((h, w, 3), np.uint8), label)
            x0, y0, x1, y1 = geom.crop_box
            expected = cv2.resize(label, geom.scaled_size, interpolation=cv2.INTER_NEAREST_EXACT)[y0:y1, x0:x1]
            assert np.array_equal(carried, expected[:, ::-1] if geom.flip else expected)
    assert flips == {True, False}
