"""A domain's appearance, applied to a drawn scene: per-class colour shifts, saturation, texture, shadows,
illumination, colour cast, brightness, contrast, gamma, blur and sensor noise."""
from __future__ import annotations

import cv2
import numpy as np

from .styles import BUILDING, EGO, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION, DomainStyle

# Relative strength of the texture noise per label id (1 elsewhere).
_TEXTURE_GAIN = np.ones(256, dtype=np.float32)
for _lid, _g in ((VEGETATION, 1.8), (TERRAIN, 1.5), (ROAD, 0.9), (SIDEWALK, 1.0), (SKY, 0.3), (BUILDING, 1.1), (EGO, 0.3)):
    _TEXTURE_GAIN[_lid] = _g



def _class_tables(style: DomainStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per label id: the RGB gains and the saturation factor of the style's class shift on this image, each
    shift's strength scaled by its own draw from [1 - spread, 1 + spread] (nothing drawn at spread 0)."""
    gains = np.ones((256, 3), np.float32)
    sats = np.ones(256, np.float32)
    spread, n = style.class_shift_spread, len(style.class_shift)
    strengths = rng.uniform(1 - spread, 1 + spread, n) if spread > 0 else np.ones(n)
    for (lid, r, g, b, sat), k in zip(style.class_shift, strengths):
        gains[lid] = [1 + k * (c - 1) for c in (r, g, b)]  # float64, so exact at k = 1
        sats[lid] = max(0.0, 1 + k * (sat - 1))
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
    gains, sats = _class_tables(style, rng)
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

