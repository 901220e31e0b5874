"""Compact, resumable storage of pseudo labels (METHOD.md 1.2, 2.1 items 2/5/6, 9 items 8/9).

The original stores stage 1's soft labels as float32 ``[C, 129, 257]`` ``.npy`` files (2.5 MB/image, 7.5 GB
for Cityscapes train) and each round of hard labels as a PNG plus a float16 full-resolution confidence
(4 MB/image). Here both are small self-describing byte strings, one file per image in a
:class:`PseudoLabelStore`.

**Soft labels** (:func:`encode_soft`). Stage 1 only ever uses P0 through ``argmax_k(ω_k · P0_k)`` with
prototype weights ω that are unknown when the labels are written. That argmax compares
``log ω_k + log P0_k`` across classes, so what must survive is ``log P0`` with a uniform *absolute* error:
a linear uint8 probability (error 0.002) would be useless on a 0.01 class that ω favours 100:1. Each value
is therefore stored as the code ``q = min(rint(−log p · step_inv), floor · step_inv)``: log-probabilities
on a grid of ``1/step_inv`` nats (default 1/128: every probability within ±0.4 % relative), clamped at
``−floor`` nats (default 16, p ≈ 1e-7: such a class can only win where ω favours it by > e^13 ≈ 5e5).
Codes are spatially smooth, so they are stored as their second differences (``Δx Δy q``: exactly zero on
bilinear ramps, decoded by two cumulative sums, hence vectorised), zigzag-mapped, split into byte planes
and xz-compressed (the xz CRC also catches a corrupted file).

``topk=None`` (default) keeps all C classes. ``topk=k`` keeps each pixel's k most likely classes (uint8
indices, stored plainly, + codes of the ranked values, which stay smooth where classes swap rank) and
spreads the remaining mass evenly over the others: the argmax is as well preserved, but rectification can
no longer tell the dropped classes apart, and ProDA's ω does pick classes outside P0's top 3. Measured with
:func:`soft_format_report` on :func:`synthetic_soft_map` (19 x 129 x 257; 3 maps per regime) and
:func:`synthetic_prototype_weights` (distance 4/8/16, disagreement 0.5/1; 10–40 % of labels rectified):

    regime (mean max-prob)      all classes (default)           topk=3
                                size    rectified changed       size    rectified changed
    confident  T=0.5 (0.95)     14.3 %  0.004 % (worst 0.012)   3.9 %   0.41 % (worst 0.91)
    typical    T=1   (0.87)     21.7 %  0.013 % (worst 0.036)   4.0 %   1.79 % (worst 3.2)
    + texture 1.5    (0.86)     25.1 %  0.012 % (worst 0.027)   4.7 %   1.93 % (worst 3.6)
    unconfident T=2  (0.67)     17.6 %  0.026 % (worst 0.051)   3.7 %   4.25 % (worst 7.2)

(size: fraction of the float32 bytes, 2,519,532 per image.) No format meets both goals of 5 % and
< 0.1 % changed rectified labels on these maps: storing ω-proof log-probabilities costs ~5 bits per class
and pixel after prediction, and dropping classes breaks rectification. The default favours fidelity
(~1.6 GB instead of 7.5 GB for Cityscapes train); ``topk=3`` is the 0.3 GB option when disk matters more.
Encoding takes ~0.3 s (top-3: 0.1 s) per image, decoding ~30 ms (top-3: 10 ms).
``benchmarks/storage.py`` measures these figures again on other map families (28 % for default-format
maps calibrated to 75 % of pixels above 0.9; 32.6 % on the demo's tiny real maps, where fixed overhead
dominates) and with the rectification weights a real warm-up model gives.

Argmax guarantee (both modes): decoded log-probabilities are within ``step/2`` of the true ones (before a
common renormalisation), so the argmax is unchanged wherever ``log p1 − log p2 > step``, in particular
wherever the probability margin ``p1 − p2`` exceeds ``1 − exp(−step)`` (≈ 0.0078 for step 1/128).

**Hard labels** (:func:`encode_hard`). The label (uint8, full resolution) and the confidence quantised
*upwards* onto the grid ``j / conf_steps``: ``q = ceil(conf · conf_steps)`` (default 1000, uint16).
Thresholding happens at load time (:func:`threshold_labels`), so the threshold can change without
regenerating. Because ``conf <= j/N  ⟺  ceil(conf·N) <= j``, the stored codes decide ``conf <= t``
exactly for every threshold on the grid (any threshold with at most three decimals by default, e.g. 0.95).
Decoded confidences are ``q/N`` rounded *down* to float32, which keeps ``decoded <= t`` equal to
``q <= j`` in plain float comparisons; a threshold between grid points acts as if rounded down to the grid.
"""
from __future__ import annotations

import json
import lzma
import math
import os
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, StalePseudoLabelsError
from ..io import write_bytes, write_json
from .labels import IGNORE_INDEX
from .transforms import WeakGeometry, full_to_weak, weak_sampling_grid

__all__ = [
    "FORMAT_VERSION",
    "SoftHeader",
    "HardHeader",
    "encode_soft",
    "decode_soft",
    "soft_header",
    "encode_hard",
    "decode_hard",
    "hard_header",
    "threshold_labels",
    "confidence_codes",
    "class_balanced_thresholds",
    "soft_format_report",
    "PseudoLabelStore",
    "soft_labels_for_crop",
    "hard_labels_for_crop",
    "synthetic_soft_map",
    "synthetic_prototype_weights",
]

FORMAT_VERSION = 1
DEFAULT_STEP_INV = 128  # soft codes: 1/128 nat
DEFAULT_FLOOR = 16.0  # soft codes: log-probabilities below -16 nats are clamped
DEFAULT_CONF_STEPS = 1000  # hard confidences: grid of 1/1000, so thresholds with 3 decimals are exact

_SOFT_MAGIC, _HARD_MAGIC = b"PLSF", b"PLHD"
# magic, version, num_classes, h, w, topk (0 = all classes), step_inv, code of the floor
_SOFT_HEADER = struct.Struct("<4sBHHHHHH")
# magic, version, H, W, conf_steps
_HARD_HEADER = struct.Struct("<4sBHHH")
# xz presets (decoding speed hardly depends on them). Soft maps are small: 6 costs 0.3 s/image. Full-resolution
# confidences at 6 cost 1.4 s/image for 15 % fewer bytes than 3 (0.25 s), which would dominate generation.
_XZ_PRESET_SOFT, _XZ_PRESET_HARD = 6, 3


# ---------------------------------------------------------------------------------------------------------
# Lossless coding of smooth integer planes


def _encode_planes(planes: np.ndarray, preset: int) -> bytes:
    """xz bytes of an integer array [P, h, w] with values in [0, 65535] that is smooth along h and w.

    Second differences ``Δy Δx q`` are small on smooth maps (the soft codes) and vanish on bilinear ramps
    (the upsampled hard confidences), and they invert with two cumulative sums, so decoding is vectorised
    (a causal predictor such as PNG's Paeth would need a per-pixel loop). Zigzag keeps small negatives
    small; splitting the result into byte planes gives the compressor long runs of zero high bytes.
    """
    q = planes.astype(np.int64)
    r = q.copy()
    r[..., :, 1:] -= q[..., :, :-1]
    r[..., 1:, :] -= r[..., :-1, :].copy()
    u = ((r << 1) ^ (r >> 63)).astype(np.uint64)
    nbytes = max(1, (int(u.max(initial=0)).bit_length() + 7) // 8)
    payload = b"".join(((u >> np.uint64(8 * b)) & np.uint64(255)).astype(np.uint8).tobytes() for b in range(nbytes))
    return bytes([nbytes]) + lzma.compress(payload, preset=preset)


def _decode_planes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_encode_planes`: int32 array of ``shape`` (out-of-range values mean corruption).

    int32 is exact: the partial sums are the first differences and the codes themselves, all within
    ±65535 for valid data.
    """
    if not data:
        raise DataError("empty plane stream")
    nbytes, n = data[0], math.prod(shape)
    try:
        payload = lzma.decompress(data[1:])
    except lzma.LZMAError as exc:
        raise DataError(f"corrupt compressed stream ({exc})") from None
    if nbytes < 1 or nbytes > 3 or len(payload) != nbytes * n:
        raise DataError(f"plane stream holds {len(payload)} bytes, expected {nbytes} x {n}")
    u = np.zeros(n, dtype=np.int32)
    for b in range(nbytes):
        u |= np.frombuffer(payload, dtype=np.uint8, count=n, offset=b * n).astype(np.int32) << (8 * b)
    r = ((u >> 1) ^ -(u & 1)).reshape(shape)
    return np.cumsum(np.cumsum(r, axis=-2, dtype=np.int32), axis=-1, dtype=np.int32)


def _decompress(data: bytes, n: int) -> np.ndarray:
    """uint8 [n] from an xz stream of exactly n bytes."""
    try:
        raw = lzma.decompress(data)
    except lzma.LZMAError as exc:
        raise DataError(f"corrupt compressed stream ({exc})") from None
    if len(raw) != n:
        raise DataError(f"compressed stream holds {len(raw)} bytes, expected {n}")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def _join(header: bytes, streams: Sequence[bytes]) -> bytes:
    return header + b"".join(struct.pack("<I", len(s)) + s for s in streams)


def _split(data: bytes, offset: int, count: int) -> list[bytes]:
    streams = []
    for _ in range(count):
        if offset + 4 > len(data):
            raise DataError("truncated pseudo-label data")
        (n,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + n > len(data):
            raise DataError("truncated pseudo-label data")
        streams.append(data[offset : offset + n])
        offset += n
    if offset != len(data):
        raise DataError(f"{len(data) - offset} unexpected trailing bytes in pseudo-label data")
    return streams


# ---------------------------------------------------------------------------------------------------------
# Soft labels


@dataclass(frozen=True)
class SoftHeader:
    num_classes: int
    size: tuple[int, int]  # (w, h) of the map
    topk: int | None  # None: every class is stored
    step_inv: int  # codes are -log p in units of 1/step_inv nat
    floor_code: int  # code of the clamp (-log p >= floor)

    @property
    def step(self) -> float:
        """Grid spacing of the stored log-probabilities, in nats."""
        return 1.0 / self.step_inv

    @property
    def floor(self) -> float:
        return self.floor_code / self.step_inv


def soft_header(data: bytes) -> SoftHeader:
    """The header of :func:`encode_soft` bytes (cheap: nothing is decompressed)."""
    if len(data) < _SOFT_HEADER.size:
        raise DataError("truncated soft pseudo-label data")
    magic, version, c, h, w, k, step_inv, floor_code = _SOFT_HEADER.unpack_from(data)
    if magic != _SOFT_MAGIC:
        raise DataError("not soft pseudo-label data" + (" (hard labels?)" if magic == _HARD_MAGIC else ""))
    if version != FORMAT_VERSION:
        raise DataError(f"soft pseudo-label format version {version}; this proda reads version {FORMAT_VERSION}")
    return SoftHeader(c, (w, h), k or None, step_inv, floor_code)


def encode_soft(
    probs: np.ndarray | torch.Tensor,
    topk: int | None = None,
    *,
    step_inv: int = DEFAULT_STEP_INV,
    floor: float = DEFAULT_FLOOR,
) -> bytes:
    """Compact bytes of a softmax map [C, h, w] (see the module docstring for the format and its errors).

    ``topk=None`` keeps every class (faithful rectification); ``topk=k`` (2 <= k < C) keeps each pixel's k
    most likely classes and spreads the rest of the mass evenly over the others (4x smaller, see module doc).
    Each pixel is normalised first, so the input need not sum exactly to 1.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"soft labels must be [C, h, w], got shape {p.shape}")
    c, h, w = p.shape
    if not (2 <= c <= 255 and 1 <= h < 65536 and 1 <= w < 65536):
        raise ValueError(f"soft labels of shape {p.shape} are out of range (2..255 classes, sides < 65536)")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("soft labels must be finite and non-negative")
    if topk is not None and not 2 <= topk < c:
        raise ValueError(f"topk must be None or in [2, {c - 1}], got {topk}")
    if not 1 <= step_inv <= 65535 or not 0 < floor * step_inv <= 65535:
        raise ValueError(f"step_inv={step_inv}, floor={floor}: the codes must fit in 16 bits")
    floor_code = int(round(floor * step_inv))
    total = p.sum(axis=0, dtype=np.float64)
    if not (total > 0).all():
        raise ValueError("soft labels have pixels with no probability mass")
    with np.errstate(divide="ignore"):
        neglog = -np.log(p / total)  # p = 0 -> +inf -> clamped
    codes = np.clip(np.rint(neglog * step_inv), 0, floor_code).astype(np.int64)
    header = _SOFT_HEADER.pack(_SOFT_MAGIC, FORMAT_VERSION, c, h, w, topk or 0, step_inv, floor_code)
    if topk is None:
        return _join(header, [_encode_planes(codes, _XZ_PRESET_SOFT)])
    # Ranked planes: the i-th smallest code at each pixel is a continuous function of the logits, so it stays
    # smooth where classes swap rank; the (piecewise constant) class indices compress on their own.
    order = np.argsort(codes, axis=0, kind="stable")[:topk]
    ranked = np.take_along_axis(codes, order, axis=0)
    indices = lzma.compress(order.astype(np.uint8).tobytes(), preset=_XZ_PRESET_SOFT)  # runs: no prediction needed
    return _join(header, [indices, _encode_planes(ranked, _XZ_PRESET_SOFT)])


def decode_soft(data: bytes) -> np.ndarray:
    """float32 [C, h, w] probabilities (summing to 1 per pixel) from :func:`encode_soft` bytes."""
    hd = soft_header(data)
    c, (w, h), k = hd.num_classes, hd.size, hd.topk
    streams = _split(data, _SOFT_HEADER.size, 1 if k is None else 2)
    if k is None:
        codes = _decode_planes(streams[0], (c, h, w))
        _check_codes(codes, hd.floor_code)
        p = np.exp(codes * -hd.step)
    else:
        order = _decompress(streams[0], k * h * w).reshape(k, h, w).astype(np.int64)
        codes = _decode_planes(streams[1], (k, h, w))
        if order.max(initial=0) >= c:
            raise DataError("soft pseudo-label data holds class indices out of range")
        _check_codes(codes, hd.floor_code)
        top = np.exp(codes * -hd.step)
        # The dropped classes share what the kept ones leave, never more than the k-th kept class holds and
        # never less than the floor (so that a strongly favoured dropped class can still win, as it could).
        rest = np.clip((1.0 - top.sum(axis=0)) / (c - k), math.exp(-hd.floor), top[-1])
        p = np.broadcast_to(rest, (c, h, w)).copy()
        np.put_along_axis(p, order, top, axis=0)
    p /= p.sum(axis=0, keepdims=True)
    return p.astype(np.float32)


def _check_codes(codes: np.ndarray, floor_code: int) -> None:
    if codes.min(initial=0) < 0 or codes.max(initial=0) > floor_code:
        raise DataError("soft pseudo-label data holds codes out of range (corrupt file?)")


def soft_format_report(
    probs_list: Iterable[np.ndarray],
    weights_fn: Callable[[np.ndarray], np.ndarray],
    **encode_kwargs: Any,
) -> dict[str, Any]:
    """Measure the soft format on maps ``probs_list`` ([C, h, w] each) with rectification weights.

    ``weights_fn(probs)`` returns ω for that map, [C, h, w] or several draws [n, C, h, w]. Returns bytes per
    image (mean and max) against float32, the fraction of pixels whose argmax changed (overall and where
    the probability margin exceeds the guarantee ``1 - exp(-step)``: should be 0), and the fraction of
    rectified labels ``argmax(ω·P0)`` that changed (mean over images and worst image); ``encode_kwargs`` go
    to :func:`encode_soft`.
    """
    sizes, float_sizes, argmax_changed, argmax_changed_above, rect_changed = [], [], [], [], []
    step = None
    for probs in probs_list:
        p = np.asarray(probs, dtype=np.float32)
        data = encode_soft(p, **encode_kwargs)
        step = soft_header(data).step
        dec = decode_soft(data)
        sizes.append(len(data))
        float_sizes.append(p.size * 4)
        top2 = np.sort(p, axis=0)[-2:]
        changed = dec.argmax(0) != p.argmax(0)
        argmax_changed.append(float(changed.mean()))
        argmax_changed_above.append(float((changed & (top2[1] - top2[0] > 1 - math.exp(-step))).mean()))
        weights = np.asarray(weights_fn(p), dtype=np.float32)
        for om in weights.reshape(-1, *p.shape):
            rect_changed.append(float(((om * dec).argmax(0) != (om * p).argmax(0)).mean()))
    if not sizes:
        raise ValueError("soft_format_report needs at least one map")
    return {
        "images": len(sizes),
        "bytes_per_image": float(np.mean(sizes)),
        "max_bytes_per_image": int(max(sizes)),
        "float32_bytes_per_image": float(np.mean(float_sizes)),
        "size_ratio": float(np.sum(sizes) / np.sum(float_sizes)),
        "step_nats": step,
        "argmax_changed": float(np.mean(argmax_changed)),
        "argmax_changed_above_step": float(np.max(argmax_changed_above)),
        "rectified_changed": float(np.mean(rect_changed)),
        "rectified_changed_max": float(np.max(rect_changed)),
    }


# ---------------------------------------------------------------------------------------------------------
# Hard labels


@dataclass(frozen=True)
class HardHeader:
    size: tuple[int, int]  # (W, H)
    conf_steps: int


def hard_header(data: bytes) -> HardHeader:
    """The header of :func:`encode_hard` bytes (cheap: nothing is decompressed)."""
    if len(data) < _HARD_HEADER.size:
        raise DataError("truncated hard pseudo-label data")
    magic, version, h, w, steps = _HARD_HEADER.unpack_from(data)
    if magic != _HARD_MAGIC:
        raise DataError("not hard pseudo-label data" + (" (soft labels?)" if magic == _SOFT_MAGIC else ""))
    if version != FORMAT_VERSION:
        raise DataError(f"hard pseudo-label format version {version}; this proda reads version {FORMAT_VERSION}")
    if steps < 1:
        raise DataError("hard pseudo-label data with conf_steps 0")
    return HardHeader((w, h), steps)


def encode_hard(
    label: np.ndarray, confidence: np.ndarray | torch.Tensor, *, conf_steps: int = DEFAULT_CONF_STEPS
) -> bytes:
    """Bytes of a hard pseudo label: uint8 ids [H, W] and confidence [H, W] in [0, 1] as ``ceil(conf·N)``.

    The confidence is *not* thresholded here (see :func:`threshold_labels`); values are clipped to [0, 1].
    """
    label = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    conf = confidence.detach().cpu().numpy() if isinstance(confidence, torch.Tensor) else np.asarray(confidence)
    if label.ndim != 2 or label.shape != conf.shape:
        raise ValueError(f"label {label.shape} and confidence {conf.shape} must both be [H, W]")
    if label.dtype != np.uint8:
        raise ValueError(f"label must be uint8, got {label.dtype}")
    h, w = label.shape
    if not (1 <= h < 65536 and 1 <= w < 65536 and 1 <= conf_steps <= 65535):
        raise ValueError(f"shape {label.shape} or conf_steps {conf_steps} out of range")
    if np.isnan(conf).any():
        raise ValueError("confidence holds NaN")
    # float32 * N is exact in float64 (24 + 16 bits), so the ceiling is the exact one for float32 inputs.
    codes = np.ceil(np.clip(conf.astype(np.float64), 0.0, 1.0) * conf_steps).astype(np.int64)
    header = _HARD_HEADER.pack(_HARD_MAGIC, FORMAT_VERSION, h, w, conf_steps)
    labels = lzma.compress(np.ascontiguousarray(label).tobytes(), preset=_XZ_PRESET_HARD)
    return _join(header, [labels, _encode_planes(codes[None], _XZ_PRESET_HARD)])


def decode_hard(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(label uint8 [H, W], confidence float32 [H, W])`` from :func:`encode_hard` bytes.

    The confidence is ``q / N`` rounded down to float32, so ``confidence <= t`` is exactly ``q <= t·N`` for
    thresholds on the grid (see the module docstring).
    """
    hd = hard_header(data)
    (w, h), n = hd.size, hd.conf_steps
    label_stream, conf_stream = _split(data, _HARD_HEADER.size, 2)
    label = _decompress(label_stream, h * w).reshape(h, w)
    codes = _decode_planes(conf_stream, (1, h, w))[0]
    if codes.min(initial=0) < 0 or codes.max(initial=0) > n:
        raise DataError("hard pseudo-label data holds confidence codes out of range (corrupt file?)")
    exact = codes / n
    conf = exact.astype(np.float32)
    conf = np.where(conf.astype(np.float64) > exact, np.nextafter(conf, np.float32(0)), conf)
    return label, conf


def threshold_labels(
    label: np.ndarray,
    confidence: np.ndarray,
    threshold: float | np.ndarray,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """uint8 label with ``ignore_index`` where ``confidence <= threshold`` (the original's rule: 0.95 in
    stages 2/3, ``conf <= threshold`` ignored, strictly above kept).

    ``threshold`` is one number or one per class (``[C]``, from :func:`class_balanced_thresholds`; a
    label outside ``0..C-1`` is ignored). Compared in float64: numpy would otherwise round a Python
    threshold to the confidence's float32, and float32(0.99) > 0.99 would ignore a confidence of 0.99000001.
    """
    label, confidence = np.asarray(label), np.asarray(confidence)
    if label.shape != confidence.shape:
        raise ValueError(f"label {label.shape} and confidence {confidence.shape} differ in shape")
    if np.ndim(threshold) == 0:
        per_pixel = float(threshold)
    else:
        per_class = np.append(np.asarray(threshold, dtype=np.float64), np.inf)  # out-of-range ids -> +inf
        per_pixel = per_class[np.minimum(label, len(per_class) - 1)]
    ignore = confidence.astype(np.float64) <= per_pixel
    return np.where(ignore, np.uint8(ignore_index), label).astype(np.uint8)


def confidence_codes(confidence: np.ndarray, conf_steps: int = DEFAULT_CONF_STEPS) -> np.ndarray:
    """The grid codes ``q`` of decoded hard confidences (``q / N`` rounded down to float32, so rint is exact)."""
    return np.rint(np.asarray(confidence, dtype=np.float64) * conf_steps).astype(np.int64)


def class_balanced_thresholds(
    histogram: np.ndarray, threshold: float, class_keep: float, conf_steps: int = DEFAULT_CONF_STEPS
) -> np.ndarray:
    """Per-class thresholds (float64 ``[C]``) that keep, besides every pixel above ``threshold``, at least
    the most confident ``class_keep`` share of each class's pixels (class-balanced selection as in CBST,
    Zou et al. 2018): ``t_c = min(threshold, j_c / N)`` with ``j_c`` the largest grid value such that at
    least ``class_keep`` of class c's pixels have a code above it. A fixed threshold alone keeps almost
    nothing of the classes the model is unsure of (poles, signs, riders), so training on it teaches the
    student to forget them. ``histogram[c, q]`` counts class-c pixels with confidence code ``q`` (see
    :meth:`PseudoLabelStore.confidence_histogram`); a class without pixels gets ``threshold``.
    """
    hist = np.asarray(histogram, dtype=np.int64)
    if hist.ndim != 2 or hist.shape[1] != conf_steps + 1:
        raise ValueError(f"histogram must be [C, {conf_steps + 1}], got {hist.shape}")
    if not 0.0 <= class_keep <= 1.0:
        raise ValueError(f"class_keep must be in [0, 1], got {class_keep}")
    counts = hist.sum(axis=1, keepdims=True)
    above = counts - np.cumsum(hist, axis=1)  # above[c, j]: class-c pixels with code > j (falls with j)
    largest = (above >= class_keep * counts).sum(axis=1) - 1  # -1: not even j = 0 keeps enough -> keep all
    thresholds = np.minimum(float(threshold), largest / conf_steps)
    return np.where(counts[:, 0] > 0, thresholds, float(threshold))


# ---------------------------------------------------------------------------------------------------------
# The store


_KINDS = ("soft", "hard")
_NAME_OK = re.compile(r"^[^./\\\x00][^/\\\x00]*$")
# Per-image size before any file exists, for the disk-space check: the largest measured ratios with margin
# (soft, all classes: <= 33 % of float32; top-3/4: <= 5 / 8 %; hard: <= 0.41 byte/pixel for labels + codes).
def _prior_soft_ratio(topk: int | None) -> float:
    return 0.35 if topk is None else 0.02 + 0.03 * topk


_PRIOR_HARD_BYTES_PER_PIXEL = 0.5


class PseudoLabelStore:
    """A folder of pseudo labels: ``meta.json`` plus one ``<image name>.soft`` / ``.hard`` file per image.

    Every file is written atomically (a killed generation leaves whole files only), so resuming is
    ``store.missing(names)``; processes generating disjoint names can share one store. ``meta.json`` says
    what the files are (kind, classes, map size, encoding) and where they came from (checkpoint, stage,
    date), so that stage 1 cannot silently read labels of the wrong kind, class count or model.
    """

    META = "meta.json"

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.kind: str = meta["kind"]
        self.num_classes: int = int(meta["num_classes"])
        self.map_size: tuple[int, int] = (int(meta["map_size"][0]), int(meta["map_size"][1]))
        self.suffix = "." + self.kind

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        kind: str,
        num_classes: int,
        map_size: tuple[int, int],
        *,
        checkpoint: str = "",
        stage: str = "",
        encoding: dict[str, Any] | None = None,
        date: str | None = None,
        checkpoint_digest: str = "",
    ) -> "PseudoLabelStore":
        """A new store, or the existing one at ``root`` if it holds the same labels (resuming a generation).

        ``map_size`` is (w, h): the network output size for soft labels, the full label size for hard ones.
        ``encoding`` records the encoder's arguments (e.g. ``{"topk": None}`` or ``{"conf_steps": 1000}``);
        files describe themselves, so it only informs ``estimate_bytes`` and readers of the folder.
        An existing store made for another kind, class count, size, encoding, checkpoint or stage is a
        DataError: resuming into it would mix labels of two models. With ``checkpoint_digest`` (the
        checkpoint's content digest) on both sides the checkpoint is compared by content, so a moved or
        copied run folder resumes; without, by path.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        meta = {
            "kind": kind,
            "num_classes": int(num_classes),
            "map_size": [int(map_size[0]), int(map_size[1])],
            "format_version": FORMAT_VERSION,
            "encoding": dict(encoding or {}),
            "provenance": {
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": str(checkpoint_digest),
                "stage": str(stage),
                "date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        }
        root = Path(root)
        if (root / cls.META).exists():
            store = cls.open(root)
            old = store.meta
            for key in ("kind", "num_classes", "map_size", "format_version", "encoding"):
                if old.get(key) != meta[key]:
                    raise DataError(f"{root}: existing pseudo labels have {key} {old.get(key)!r}, not {meta[key]!r}")
            before, now = old["provenance"], meta["provenance"]
            by_content = bool(before.get("checkpoint_sha256") and checkpoint_digest)
            if by_content and before["checkpoint_sha256"] != now["checkpoint_sha256"]:
                raise StalePseudoLabelsError(
                    f"{root}: existing pseudo labels come from another checkpoint (made from "
                    f"{before.get('checkpoint')!r}, whose content differs from {now['checkpoint']!r}); "
                    "use another folder or delete this one"
                )
            for key in ("stage",) if by_content else ("checkpoint", "stage"):
                if before.get(key) != now[key]:
                    raise StalePseudoLabelsError(
                        f"{root}: existing pseudo labels come from {key} {before.get(key)!r}, "
                        f"not {now[key]!r}; use another folder or delete this one"
                    )
            return store
        write_json(root / cls.META, meta)
        return cls(root, meta)

    @classmethod
    def open(
        cls, root: str | os.PathLike, kind: str | None = None, num_classes: int | None = None
    ) -> "PseudoLabelStore":
        """The store at ``root``, checked against what the caller expects (DataError naming the folder)."""
        root = Path(root)
        path = root / cls.META
        if not root.is_dir():
            raise DataError(f"{root}: pseudo-label folder not found")
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{root}: not a pseudo-label folder ({cls.META} is missing)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc})") from None
        try:
            ok = (
                meta["kind"] in _KINDS
                and isinstance(meta["num_classes"], int)
                and len(meta["map_size"]) == 2
                and isinstance(meta["provenance"], dict)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise DataError(f"{path}: malformed pseudo-label metadata")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{root}: pseudo-label format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        if kind is not None and meta["kind"] != kind:
            raise DataError(f"{root}: holds {meta['kind']} pseudo labels, {kind} labels are needed here")
        if num_classes is not None and meta["num_classes"] != num_classes:
            raise DataError(f"{root}: pseudo labels have {meta['num_classes']} classes, the model has {num_classes}")
        return cls(root, meta)

    def path(self, name: str) -> Path:
        """File of image ``name`` (the image file's stem, e.g. ``aachen_000000_000019_leftImg8bit``)."""
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise ValueError(f"invalid image name {name!r} (a file stem, no folders, not starting with '.')")
        return self.root / (name + self.suffix)

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` (from encode_soft / encode_hard) for ``name``, atomically; checks it fits the store."""
        if self.kind == "soft":
            hd = soft_header(data)
            if hd.num_classes != self.num_classes or hd.size != self.map_size:
                raise ValueError(
                    f"{name}: soft labels of {hd.num_classes} classes at {hd.size}, "
                    f"store {self.root} holds {self.num_classes} at {self.map_size}"
                )
        else:
            hh = hard_header(data)
            if hh.size != self.map_size:
                raise ValueError(f"{name}: hard labels at {hh.size}, store {self.root} holds {self.map_size}")
        write_bytes(self.path(name), data)

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names (in the given order) that have no file yet: what a resumed generation still has to do."""
        names = list(names)
        for n in names:
            self.path(n)  # validate
        with os.scandir(self.root) as entries:
            present = {e.name for e in entries if e.name.endswith(self.suffix)}
        return [n for n in names if n + self.suffix not in present]

    def _read(self, name: str, kind: str) -> bytes:
        if self.kind != kind:
            raise DataError(f"{self.root}: holds {self.kind} pseudo labels, not {kind}")
        path = self.path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: no pseudo label for image {name!r} (generation incomplete?)") from None

    def read_soft(self, name: str) -> np.ndarray:
        """float32 [C, h, w] probabilities of image ``name``."""
        path, data = self.path(name), self._read(name, "soft")
        try:
            probs = decode_soft(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        if probs.shape != (self.num_classes, self.map_size[1], self.map_size[0]):
            raise DataError(f"{path}: soft labels of shape {probs.shape}, the store's meta says "
                            f"{(self.num_classes, self.map_size[1], self.map_size[0])}")
        return probs

    def read_hard(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(label uint8 [H, W], confidence float32 [H, W])`` of image ``name``; see threshold_labels."""
        return self._read_hard(name)[:2]

    def _read_hard(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        path, data = self.path(name), self._read(name, "hard")
        try:
            label, conf = decode_hard(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        if label.shape != (self.map_size[1], self.map_size[0]):
            raise DataError(f"{path}: hard labels of shape {label.shape}, the store's meta says {self.map_size[::-1]}")
        return label, conf, hard_header(data).conf_steps

    def confidence_histogram(self, names: Iterable[str], progress: bool = False) -> np.ndarray:
        """int64 ``[C, N + 1]``: pixels of each predicted class per confidence code, over images ``names``
        (for :func:`class_balanced_thresholds`; codes on the grid of :data:`DEFAULT_CONF_STEPS`)."""
        from tqdm import tqdm

        c, n = self.num_classes, DEFAULT_CONF_STEPS
        hist = np.zeros(c * (n + 1), dtype=np.int64)
        for name in tqdm(list(names), desc="pseudo-label confidences", disable=not progress, leave=False):
            label, conf, steps = self._read_hard(name)
            if steps != n:
                raise DataError(f"{self.path(name)}: confidences on a grid of 1/{steps}; class-balanced "
                                f"thresholds need proda's grid of 1/{n} (regenerate with `proda pseudo-label`)")
            valid = label < c
            codes = np.clip(confidence_codes(conf[valid], n), 0, n)
            hist += np.bincount(label[valid].astype(np.int64) * (n + 1) + codes, minlength=c * (n + 1))
        return hist.reshape(c, n + 1)

    def estimate_bytes(self, n_images: int) -> int:
        """Disk bytes ``n_images`` more files will take (for a free-space check before generating).

        From the files already written (mean size + 10 %) when there are some, else a conservative prior
        (the largest ratios measured on synthetic maps, with margin).
        """
        sizes = []
        with os.scandir(self.root) as entries:
            for e in entries:
                if e.name.endswith(self.suffix) and not e.name.startswith(".") and e.is_file():
                    sizes.append(e.stat().st_size)
                    if len(sizes) >= 64:
                        break
        if sizes:
            per_image = 1.1 * float(np.mean(sizes))
        else:
            w, h = self.map_size
            if self.kind == "soft":
                topk = self.meta.get("encoding", {}).get("topk")
                per_image = 4.0 * self.num_classes * w * h * _prior_soft_ratio(topk)
            else:
                per_image = _PRIOR_HARD_BYTES_PER_PIXEL * w * h
        return int(math.ceil(per_image * n_images)) + 4096


# ---------------------------------------------------------------------------------------------------------
# Carrying stored labels into a weak crop


def soft_labels_for_crop(
    soft: np.ndarray | torch.Tensor, geom: WeakGeometry, out_size: tuple[int, int]
) -> torch.Tensor:
    """P0 on the (w, h) = ``out_size`` grid of the weak crop ``geom``: float32 [C, out_h, out_w].

    ``soft`` is at network output resolution of the *full* image. Only the crop window is resampled
    (bilinear, :func:`~proda.data.transforms.full_to_weak`), where the original upsampled the whole map to
    full and then to the random scale (up to [C, 1650, 3300]) before cropping and downsampling by 4.
    """
    t = torch.as_tensor(np.asarray(soft) if not isinstance(soft, torch.Tensor) else soft).float()
    if t.dim() != 3:
        raise ValueError(f"soft labels must be [C, h, w], got {tuple(t.shape)}")
    return full_to_weak(t[None], [geom], out_size)[0]


def hard_labels_for_crop(label: np.ndarray | torch.Tensor, geom: WeakGeometry, out_size: tuple[int, int]) -> torch.Tensor:
    """Label ids on the (w, h) = ``out_size`` grid of the weak crop ``geom``: long [out_h, out_w].

    ``label`` ([H, W], at the full image's resolution) is sampled NEAREST at exactly the positions where
    :func:`soft_labels_for_crop` samples bilinearly, so ignore values never blend into class ids.
    """
    t = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    if t.dim() != 2:
        raise ValueError(f"label must be [H, W], got {tuple(t.shape)}")
    if (t.shape[1], t.shape[0]) != tuple(geom.full_size):
        raise ValueError(f"label of size {(t.shape[1], t.shape[0])} for an image of size {geom.full_size}")
    grid = weak_sampling_grid([geom], out_size).float()
    out = F.grid_sample(t.float()[None, None], grid, mode="nearest", padding_mode="border", align_corners=True)
    return out[0, 0].round().long()


# ---------------------------------------------------------------------------------------------------------
# Synthetic maps, to measure the soft format (tests and benchmarks)


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
