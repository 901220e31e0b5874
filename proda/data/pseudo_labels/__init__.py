"""Pseudo labels: compact byte formats (:mod:`.codec`), which labels training keeps (:mod:`.selection`),
the on-disk store (:mod:`.store`) and carrying stored labels into a weak crop (:mod:`.crops`)."""
from __future__ import annotations

from .codec import decode_hard, decode_soft, encode_hard, encode_soft, hard_header, soft_header
from .crops import hard_labels_for_crop, soft_labels_for_crop
from .selection import class_balanced_thresholds, confidence_codes, threshold_labels
from .store import PseudoLabelStore

__all__ = [
    "decode_hard",
    "decode_soft",
    "encode_hard",
    "encode_soft",
    "hard_header",
    "soft_header",
    "hard_labels_for_crop",
    "soft_labels_for_crop",
    "class_balanced_thresholds",
    "confidence_codes",
    "threshold_labels",
    "PseudoLabelStore",
]
