"""Readers for the adverse-condition datasets of ETH Zurich in their official layouts: ACDC (and the
layout it shares with Dark Zurich, see :mod:`proda.data.dark_zurich`).

ACDC (Sakaridis et al., ICCV 2021) holds driving images under four adverse conditions, annotated with
the 19 Cityscapes classes and their label ids::

    rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_<NNNNNN>_rgb_anon.png
    gt/<condition>/<split>/<sequence>/<sequence>_frame_<NNNNNN>_gt_labelIds.png   (or _gt_labelTrainIds.png)

with ``condition`` in fog / night / rain / snow and ``split`` in train / val / test (the test split has no
public ground truth: predict it and submit the maps, see ``proda predict --format acdc``). Beside each
split lies ``<split>_ref``: a daytime image of the same place per sample, for methods that use
correspondences. Those reference images are not samples of the split: the ``<split>_ref`` folders are
never read, and a ``*_ref_rgb_anon.png`` / ``*_rgb_ref_anon.png`` file inside a split folder is skipped.

Every sample records its condition (``item["condition"]``, :meth:`ConditionDataset.condition_of`), so an
evaluation can report one mIoU per condition (:meth:`ConditionDataset.only`).

Labels: the label-id PNGs are mapped exactly as Cityscapes' (``labels.cityscapes_lut``); where only the
trainId PNGs are present they are read instead (trainIds 0..18 and 255). ``label_format`` chooses
explicitly; "auto" takes label ids when the split has any, trainIds otherwise.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io import read_label_ids
from . import labels as L
from .datasets import INVALID, Sample, SegmentationDataset, list_files, raw_lut, require_dir
from .labels import LabelSpace

IMAGE_SUFFIX = "_rgb_anon.png"
# Daytime reference images of a sample's place (in the <split>_ref folders, and so named): never samples.
REFERENCE_SUFFIXES = ("_ref_rgb_anon.png", "_rgb_ref_anon.png")
LABEL_SUFFIXES = {"labelIds": "_gt_labelIds.png", "labelTrainIds": "_gt_labelTrainIds.png"}
LABEL_FORMATS = ("auto", *LABEL_SUFFIXES)


@dataclass(frozen=True)
class ConditionSample(Sample):
    """A sample that knows the condition (ACDC) or time of day (Dark Zurich) it was taken in."""

    condition: str = ""


@dataclass(frozen=True)
class SampleFolder:
    """One image folder of a split (and its ground-truth folder, None for unlabelled ones)."""

    condition: str
    images: Path
    labels: Path | None


def _trainid_to_native() -> np.ndarray:
    """uint8[256]: a ``*_gt_labelTrainIds.png`` value -> the same 19-class id (255 stays ignore, anything
    else is INVALID)."""
    lut = np.full(256, INVALID, dtype=np.uint8)
    lut[: len(L.CLASSES_19)] = np.arange(len(L.CLASSES_19))
    lut[L.IGNORE_INDEX] = L.IGNORE_INDEX
    return lut


# raw label value -> id of the 19 Cityscapes classes (the datasets' native classes), per label format
RAW_TO_NATIVE = {"labelIds": raw_lut(L.cityscapes_lut(19), L.CITYSCAPES_MAX_ID), "labelTrainIds": _trainid_to_native()}


def parse_selection(value: str | Sequence[str] | None, choices: Sequence[str], what: str) -> tuple[str, ...]:
    """``"all"``/None -> every choice; ``"fog,night"`` or ``["fog", "night"]`` -> those, in ``choices`` order."""
    if value is None:
        return tuple(choices)
    parts = [p.strip().lower() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    if not parts or parts == ["all"]:
        return tuple(choices)
    unknown = [p for p in parts if p not in choices]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}; expected 'all' or any of {', '.join(choices)}")
    return tuple(c for c in choices if c in parts)


def scan_sequences(folder: Path, suffix: str) -> dict[str, Path]:
    """``{"<sequence>/<file name without suffix>": path}`` of ``folder/<sequence>/*<suffix>``, without
    reference images; one scan of the folder and one per sequence."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        sequences = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for sequence in sequences:
        for name, path in list_files(folder / sequence, suffix).items():
            if not name.endswith(REFERENCE_SUFFIXES):
                found[f"{sequence}/{name[: -len(suffix)]}"] = path
    return found


class ConditionDataset(SegmentationDataset):
    """Images in ``<group>/<sequence>/*_rgb_anon.png`` folders, one group per condition, each paired by
    name with ``*_gt_<format>.png`` files of the same relative path. Subclasses list the folders."""

    CONDITIONS: tuple[str, ...] = ()
    SPLITS: tuple[str, ...] = ()
    UNLABELLED_SPLITS: tuple[str, ...] = ()

    def __init__(
        self,
        root: Path,
        split: str,
        folders: list[SampleFolder],
        classes: LabelSpace | int | None,
        size: tuple[int, int] | None,
        label_format: str,
        strict: bool,
    ) -> None:
        if label_format not in LABEL_FORMATS:
            raise ConfigError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}")
        self.split = split
        self.conditions = tuple(f.condition for f in folders)
        images = {f.condition: scan_sequences(require_dir(f.images, f"{self.dataset_name} images"), IMAGE_SUFFIX)
                  for f in folders}
        labelled = [f for f in folders if f.labels is not None]
        for f in labelled:
            require_dir(f.labels, f"{self.dataset_name} ground-truth")
        if label_format == "auto":
            label_format = "labelIds" if any(_has_file(f.labels, LABEL_SUFFIXES["labelIds"]) for f in labelled) \
                else "labelTrainIds"
        self.label_format = label_format
        suffix = LABEL_SUFFIXES[label_format]
        samples: list[Sample] = []
        problems: list[str] = []
        for f in folders:
            found = images[f.condition]
            if f.labels is None:
                samples += [ConditionSample(found[k].stem, found[k], None, f.condition) for k in sorted(found)]
                continue
            gts = scan_sequences(f.labels, suffix)
            problems += [f"{found[k]}: no label {f.labels / (k + suffix)}" for k in sorted(found.keys() - gts.keys())]
            problems += [f"{gts[k]}: label without an image {f.images / (k + IMAGE_SUFFIX)}"
                         for k in sorted(gts.keys() - found.keys())]
            samples += [ConditionSample(found[k].stem, found[k], gts[k], f.condition)
                        for k in sorted(found.keys() & gts.keys())]
        _check_unique_names(samples)
        super().__init__(root, samples, problems, self.NATIVE, self._classes(classes), size,
                         RAW_TO_NATIVE[label_format], strict)

    @classmethod
    def reads_labels(cls, split: str, with_labels: bool) -> bool:
        """Whether a reader of ``split`` reads ground truth: asked for, and the split has some."""
        if split not in cls.SPLITS:
            raise ConfigError(f"{cls.dataset_name} has no split {split!r}; expected one of {', '.join(cls.SPLITS)}")
        return with_labels and split not in cls.UNLABELLED_SPLITS

    def condition_of(self, i: int) -> str:
        return self.samples[i].condition  # type: ignore[attr-defined]

    def only(self, condition: str) -> "ConditionDataset":
        """The same reader restricted to the samples of one condition (same options, label cache kept)."""
        if condition not in self.conditions:
            raise ConfigError(f"{condition!r} is not among this reader's conditions {list(self.conditions)}")
        subset = copy.copy(self)
        subset.samples = tuple(s for s in self.samples if s.condition == condition)  # type: ignore[attr-defined]
        subset.conditions = (condition,)
        return subset

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["condition"] = self.condition_of(i)
        return item


def _check_unique_names(samples: list[Sample]) -> None:
    """Pseudo labels and predictions are stored by sample name: two images of one name would share them."""
    seen: dict[str, Path] = {}
    for s in samples:
        if s.name in seen:
            raise DataError(f"{s.image} and {seen[s.name]} have the same name {s.name!r}: every image of a "
                            "selection must be named uniquely (sequence names are unique in the official release)")
        seen[s.name] = s.image


def _has_file(folder: Path | None, suffix: str) -> bool:
    """Whether ``folder/<sequence>/`` holds any ``*suffix`` file (stops at the first one found)."""
    if folder is None or not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        sequences = [e.path for e in entries if e.is_dir() and not e.name.startswith(".")]
    for sequence in sequences:
        with os.scandir(sequence) as files:
            if any(f.name.endswith(suffix) for f in files):
                return True
    return False


class ACDCDataset(ConditionDataset):
    """ACDC: ``rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png`` + ``gt/<condition>/<split>/...``.

    ``conditions``: "all" (default), one of fog / night / rain / snow, or several ("fog,snow" or a list).
    ``with_labels=False`` reads images only (unlabelled target training); the test split is always read
    without labels, since it has none.
    """

    dataset_name = "ACDC"
    LAYOUT = "rgb_anon/<condition>/{split}/<sequence>/*_rgb_anon.png with gt/<condition>/{split}/<sequence>/*_gt_labelIds.png"
    CONDITIONS = ("fog", "night", "rain", "snow")
    SPLITS = ("train", "val", "test")
    UNLABELLED_SPLITS = ("test",)

    @classmethod
    def open(cls, root, *, split, classes, size, with_labels, list_file, strict, subset=None):
        """The registry's constructor; ``subset`` is the condition selection (``data.target_subset``)."""
        cls.refuse_list_file(list_file)
        return cls(root, split or "train", classes, size, with_labels, conditions=subset, strict=strict)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: LabelSpace | int | None = None,
        size: tuple[int, int] | None = None,
        with_labels: bool = True,
        *,
        conditions: str | Sequence[str] | None = "all",
        label_format: str = "auto",
        strict: bool = True,
    ) -> None:
        root = require_dir(Path(root), "ACDC root")
        labelled = self.reads_labels(split, with_labels)
        chosen = parse_selection(conditions, self.CONDITIONS, "ACDC condition")
        image_root = require_dir(root / "rgb_anon", "ACDC rgb_anon")
        folders = [SampleFolder(c, image_root / c / split, root / "gt" / c / split if labelled else None)
                   for c in chosen]
        super().__init__(root, split, folders, classes, size, label_format, strict)
