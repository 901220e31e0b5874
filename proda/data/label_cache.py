"""Reading the label cache that ``proda data prepare`` writes (:mod:`proda.data.prepare` writes it).

A cache holds one 8-bit grey PNG per label with the ids of the dataset's own classes (its ``native``
:class:`~proda.data.labels.LabelSpace`: the 19 Cityscapes trainIds for GTA5, SYNTHIA and Cityscapes, the
descriptor's classes for a folder dataset; 255 = ignore), at ``CACHE/<the label's path relative to the
dataset root>``. A reader maps those ids onto the classes of its run by name, so one cache serves every
protocol. A cached label is used only when it is at least as new as its original (the ``make`` rule).

This module is separate from :mod:`proda.data.prepare` so that the readers can use a cache without
importing the code that writes one (which itself builds readers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from .labels import IGNORE_INDEX

CACHE_DIRNAME = "proda_cache"
MANIFEST = "manifest.json"
FORMAT = "proda-label-cache-1"
_INVALID = 254  # marks values that are neither a class id nor ignore (as datasets.INVALID)


def default_cache_dir(root: str | os.PathLike) -> Path:
    return Path(root) / CACHE_DIRNAME


def cached_value_lut(num_native: int, to_classes: np.ndarray | None = None) -> np.ndarray:
    """uint8[256]: a cached value -> the id in a run's classes (``to_classes``, native id -> id; None keeps the
    native ids); values that are neither a native id nor 255 -> _INVALID."""
    lut = np.full(256, _INVALID, dtype=np.uint8)
    lut[:num_native] = np.arange(num_native) if to_classes is None else np.asarray(to_classes)[:num_native]
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


class LabelCache:
    """A cache folder of one dataset root; :meth:`read` returns a label or None (then use the original)."""

    def __init__(self, folder: str | os.PathLike, dataset_root: str | os.PathLike, dataset: str,
                 num_native: int = 19) -> None:
        self.folder, self.dataset_root, self.dataset = Path(folder), Path(dataset_root), dataset
        self.num_native = num_native

    @classmethod
    def open(cls, folder: str | os.PathLike | None, dataset_root: str | os.PathLike, dataset: str,
             required: bool) -> "LabelCache | None":
        """The cache in ``folder`` (default ``ROOT/proda_cache``) if it holds one for ``dataset``.

        ``required`` (a folder named explicitly): a missing or foreign cache is a DataError; otherwise
        (``auto``) it just means no cache.
        """
        folder = Path(folder) if folder is not None else default_cache_dir(dataset_root)
        manifest = folder / MANIFEST
        try:
            meta = json.loads(manifest.read_text())
        except FileNotFoundError:
            if required:
                raise DataError(f"{folder}: no label cache here (no {MANIFEST}); run `proda data prepare`") from None
            return None
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest}: unreadable label-cache manifest ({exc}); delete it and rerun "
                            "`proda data prepare`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{manifest}: not a {FORMAT} manifest; delete {folder} and rerun `proda data prepare`")
        if meta.get("dataset") != dataset:
            raise DataError(f"{folder}: a label cache of {meta.get('dataset')!r}, not {dataset!r}")
        return cls(folder, dataset_root, dataset, len(meta.get("classes") or range(19)))

    def path_for(self, label_path: Path) -> Path:
        try:
            rel = Path(label_path).relative_to(self.dataset_root)
        except ValueError:  # a label outside the root (never with the official layouts): no cache for it
            rel = Path("_outside_root") / Path(label_path).name
        return self.folder / rel

    def is_fresh(self, label_path: Path) -> bool:
        """The cached file exists and is not older than the original (the original must exist too)."""
        try:
            cached, original = os.stat(self.path_for(label_path)), os.stat(label_path)
        except FileNotFoundError:
            return False
        return cached.st_mtime_ns >= original.st_mtime_ns

    def read(self, label_path: Path, to_classes: np.ndarray | None = None) -> np.ndarray | None:
        """HxW uint8 ids (native ids mapped through ``to_classes``), or None when there is no fresh entry."""
        if not self.is_fresh(label_path):
            return None
        return read_cached_label(self.path_for(label_path), cached_value_lut(self.num_native, to_classes))

    def __repr__(self) -> str:
        return f"LabelCache({str(self.folder)!r})"


def read_cached_label(path: Path, lut: np.ndarray | None = None) -> np.ndarray:
    """Decode one cached PNG through ``lut`` (:func:`cached_value_lut`; None: the 19 trainIds as stored);
    DataError (naming the file) if it is corrupt or holds values that are not class ids."""
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None or array.dtype != np.uint8 or array.ndim != 2:
        raise DataError(f"{path}: corrupt label-cache file; run `proda data prepare --verify` (or delete it)")
    label = cv2.LUT(array, cached_value_lut(19) if lut is None else lut)  # 4x faster than numpy indexing
    if (label == _INVALID).any():
        raise DataError(f"{path}: label-cache file holds values that are not class ids; "
                        "run `proda data prepare --verify` (or delete it)")
    return label
