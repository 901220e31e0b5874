"""Which hard pseudo labels training keeps: the confidence threshold, per class or class-balanced."""
from __future__ import annotations

import numpy as np

from ..labels import IGNORE_INDEX
from .codec import DEFAULT_CONF_STEPS


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
