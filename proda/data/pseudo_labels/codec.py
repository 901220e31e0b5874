"""The compact byte formats of soft and hard pseudo labels (docs/method.md 1.2, 9.8, 9.9).

The original stores stage 1's soft labels as float32 ``[C, 129, 257]`` ``.npy`` files (2.5 MB/image, 7.5 GB
for Cityscapes train) and each round of hard labels as a PNG plus a float16 full-resolution confidence
(4 MB/image). Here both are small self-describing byte strings (one file per image in a
:class:`~proda.data.pseudo_labels.store.PseudoLabelStore`).

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
no longer tell the dropped classes apart, and ProDA's ω does pick classes outside P0's top 3. The default
format takes 14-25 % of the float32 bytes at the paper's map size and changes about 0.01 % of rectified
labels; ``topk=3`` takes ~4 % and changes 0.4-4 % of them (~1.6 GB against 0.3 GB for Cityscapes train).
``benchmarks/soft_label_formats.py`` and ``benchmarks/storage.py`` hold the measurements and their tables.

Argmax guarantee (both modes): decoded log-probabilities are within ``step/2`` of the true ones (before a
common renormalisation), so the argmax is unchanged wherever ``log p1 − log p2 > step``, in particular
wherever the probability margin ``p1 − p2`` exceeds ``1 − exp(−step)`` (≈ 0.0078 for step 1/128).

**Hard labels** (:func:`encode_hard`). The label (uint8, full resolution) and the confidence quantised
*upwards* onto the grid ``j / conf_steps``: ``q = ceil(conf · conf_steps)`` (default 1000, uint16).
Thresholding happens at load time (:func:`~proda.data.pseudo_labels.selection.threshold_labels`), so the
threshold can change without regenerating. Because ``conf <= j/N  ⟺  ceil(conf·N) <= j``, the stored codes
decide ``conf <= t`` exactly for every threshold on the grid (any threshold with at most three decimals by
default, e.g. 0.95). Decoded confidences are ``q/N`` rounded *down* to float32, which keeps
``decoded <= t`` equal to ``q <= j`` in plain float comparisons; a threshold between grid points acts as if
rounded down to the grid.
"""
from __future__ import annotations

import lzma
import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...errors import DataError

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
