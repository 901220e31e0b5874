"""Synthetic soft pseudo labels for tests and benchmarks (``from pseudo_label_fixtures import ...``).

Maps shaped like a stride-8 segmentation softmax, and prototype-rectification weights drawn as ProDA
computes them; ``benchmarks/soft_label_formats.py`` measures proda's soft format on the same families.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _smooth_fields(rng: np.random.Generator, n: int, h: int, w: int, sigma: float) -> np.ndarray:
    """n unit-variance Gaussian random fields [n, h, w] with correlation length ``sigma`` pixels."""
    out = np.empty((n, h, w), dtype=np.float32)
    for i in range(n):
        f = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        out[i] = f / (f.std() + 1e-8)
    return out


def synthetic_soft_map(
    rng: np.random.Generator,
    num_classes: int = 19,
    size: tuple[int, int] = (257, 129),
    temperature: float = 1.0,
    texture: float = 0.5,
) -> np.ndarray:
    """A softmax map [C, h, w] shaped like a stride-8 segmentation output.

    Class regions (argmax of smooth fields with a prior favouring a few "stuff" classes) give their class
    +10 logits, blurred over ~1.5 output pixels (soft boundaries); every class logit also varies smoothly
    (amplitude 2.5, 6 px) and with fine texture (``texture``, 1.5 px). ``temperature`` 0.5 / 1 / 2 gives a
    confident / typical warm-up (mean max-probability ~0.85) / unconfident model.
    """
    w, h = size
    prior = np.sort(rng.standard_normal(num_classes))[::-1] * 0.8
    regions = (_smooth_fields(rng, num_classes, h, w, 10.0) + prior[:, None, None].astype(np.float32)).argmax(0)
    indicator = np.stack(
        [cv2.GaussianBlur((regions == k).astype(np.float32), (0, 0), 1.5) for k in range(num_classes)]
    )
    logits = 10.0 * indicator + 2.5 * _smooth_fields(rng, num_classes, h, w, 6.0)
    logits += texture * _smooth_fields(rng, num_classes, h, w, 1.5)
    logits = logits.astype(np.float64) / temperature
    logits -= logits.max(axis=0, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


def synthetic_prototype_weights(
    rng: np.random.Generator,
    probs: np.ndarray,
    distance: float = 8.0,
    disagreement: float = 1.0,
    dims: int = 32,
    temperature: float = 1.0,
) -> np.ndarray:
    """Rectification weights ω [C, h, w] from simulated prototype distances, as ProDA computes them.

    Prototypes are random points ``distance`` apart (on average); each pixel's feature is the mixture of
    prototypes given by the *EMA model's* belief (P0's logits perturbed by smooth fields of amplitude
    ``4 · disagreement``: the EMA model is not the warm-up model) plus smooth feature noise; ω is
    ``softmax(-T · ||f − η_k||)``. ``distance`` sets how peaked ω is (4: ~2-nat gap to the runner-up,
    16: ~8 nats), ``disagreement`` how often rectification overrides P0's argmax (10–40 % of pixels).
    """
    c, h, w = probs.shape
    z = np.log(np.maximum(probs.astype(np.float64), 1e-30))
    z = z + 4.0 * disagreement * _smooth_fields(rng, c, h, w, 4.0)
    belief = np.exp(z - z.max(axis=0, keepdims=True))
    belief /= belief.sum(axis=0, keepdims=True)
    scale = distance / math.sqrt(2 * dims)
    protos = rng.standard_normal((c, dims)) * scale
    feat = np.einsum("chw,cd->dhw", belief, protos) + 0.3 * scale * _smooth_fields(rng, dims, h, w, 2.0)
    sq = (feat**2).sum(axis=0)[None] - 2 * np.einsum("dhw,cd->chw", feat, protos) + (protos**2).sum(axis=1)[:, None, None]
    d = np.sqrt(np.maximum(sq, 0.0))
    logits = -temperature * (d - d.min(axis=0, keepdims=True))
    om = np.exp(logits)
    return (om / om.sum(axis=0, keepdims=True)).astype(np.float32)
