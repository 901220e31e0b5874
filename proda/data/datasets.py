"""Readers for the official GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes layouts.

Each reader lists its folders once at construction (one directory scan per folder, never one per sample),
pairs images with labels by name and refuses to open a layout with unpaired files, so a missing label
surfaces at start-up instead of hours into training. Samples are decoded lazily in ``__getitem__``:

* the raw label (GTA5 palette index, Cityscapes label id, SYNTHIA 16-bit class id) is mapped to the dataset's
  own classes (its ``native`` :class:`~proda.data.labels.LabelSpace`, the 19 Cityscapes classes for all three)
  through the lookup tables of :mod:`proda.data.labels`, then by class NAME onto the classes a run asked for
  (``classes``: the 16/13-class protocols, or the classes of a source from another dataset); classes the run
  does not know become ignore (255);
* raw values that the dataset never uses (e.g. 40 in a Cityscapes label) raise :class:`DataError`, because
  they mean a wrong file (a trainId image, a colour-converted label), not a rare class;
* the image and label must have the same native size; ``size=(W, H)`` then resizes the image bilinearly
  and the label with nearest neighbour;
* a label with a fresh copy in the label cache of ``proda data prepare`` (``root/proda_cache`` by default,
  see :mod:`proda.data.label_cache` and ``build_dataset(label_cache=...)``) is read from there instead.

Readers are built by name through the table of :mod:`proda.data.registry`, which also says what each
class must provide (``label_space``, ``open``, ``splits``).

The datasets are map-style (``__len__`` + ``__getitem__``), so ``torch.utils.data.DataLoader`` takes them as
they are; this module does not import torch, which keeps ``proda data check`` quick to start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError, DataError
from ..io import read_label_ids, read_rgb, read_synthia_label
from . import labels as L
from .labels import LabelSpace

# Marks raw values that are not ids of the dataset; compact ids are < 254 and ignore is 255, so 254 is free.
INVALID = 254
# How many unpaired names a constructor error lists before "... and N more".
_LIST_AT_MOST = 5


@dataclass(frozen=True)
class Sample:
    """One image and its label file (``label`` is None for label-less splits)."""

    name: str
    image: Path
    label: Path | None


def raw_lut(lut: np.ndarray, max_id: int) -> np.ndarray:
    """``lut`` (uint8[256], raw value -> class id or 255) with the values above ``max_id`` marked INVALID."""
    out = np.asarray(lut, dtype=np.uint8).copy()
    out[max_id + 1:] = INVALID
    return out


def cityscapes_protocol(num_classes: int | None, default: int = 19) -> LabelSpace:
    """The 19/16/13-class Cityscapes protocol a dataset of Cityscapes classes is read in."""
    n = default if num_classes is None else num_classes
    if n not in L.SUPPORTED_NUM_CLASSES:
        raise ConfigError(f"num_classes must be one of {', '.join(map(str, L.SUPPORTED_NUM_CLASSES))} "
                          f"for this dataset, got {n}")
    return LabelSpace.cityscapes(n)


def list_files(folder: Path, suffix: str) -> dict[str, Path]:
    """``{file name: path}`` of the non-hidden files ending with ``suffix``, from a single directory scan.

    Hidden files are skipped so that ``.DS_Store`` or a half-written ``.x.png.tmp`` never becomes a sample.
    """
    with os.scandir(folder) as entries:
        return {
            e.name: Path(e.path)
            for e in entries
            if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file()
        }


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def _format_problems(root: Path, problems: list[str]) -> str:
    shown = "\n  ".join(problems[:_LIST_AT_MOST])
    more = f"\n  ... and {len(problems) - _LIST_AT_MOST} more" if len(problems) > _LIST_AT_MOST else ""
    return f"{root}: {len(problems)} unpaired or missing file(s) (run `proda data check` for the full list):\n  {shown}{more}"


class SegmentationDataset:
    """Common base: a fixed, sorted list of :class:`Sample` and the decoding of one sample.

    Subclasses list their layout, pick the label file reader (``_read_raw_label``) and pass ``raw_to_native``
    (uint8[256]: raw value -> id in ``native``, 255 ignore, INVALID for values the dataset never uses).
    ``layout_problems`` holds the unpaired files that a non-strict constructor skipped (see ``strict``).
    The class-level part (``SPLITS``, ``label_space``, ``open``) is the contract of :mod:`proda.data.registry`.
    """

    dataset_name: str = ""
    LAYOUT: str = ""  # the files a sample is made of, for errors ("{split}" is filled in)
    SPLITS: tuple[str, ...] = ("all",)  # ("all",): used whole, a subset comes from a list file
    NATIVE: LabelSpace = LabelSpace.cityscapes(19)  # the classes its labels are written in
    DEFAULT_NUM_CLASSES: int = 19
    # A label cache written by `proda data prepare` (proda.data.label_cache.LabelCache), set by build_dataset;
    # read_label uses it for every label that has a fresh cached copy.
    label_cache = None

    # -- the table's contract (see proda.data.registry) ----------------------------------------------
    @classmethod
    def label_space(cls, root: str | os.PathLike | None = None, num_classes: int | None = None) -> LabelSpace:
        """The classes this dataset is read in: ``num_classes`` picks a protocol (19/16/13), None the usual one."""
        return cityscapes_protocol(num_classes, cls.DEFAULT_NUM_CLASSES)

    @classmethod
    def splits(cls, root: str | os.PathLike | None = None) -> tuple[str, ...]:
        return cls.SPLITS

    @classmethod
    def refuse_list_file(cls, list_file) -> None:
        """A list file of image names selects GTA5 images only (``data.source_list``)."""
        if list_file is not None:
            raise ConfigError(f"list_file is only supported for gta5, not {cls.dataset_name}")

    @classmethod
    def open(cls, root: str | os.PathLike, *, split: str | None, classes: LabelSpace,
             size: tuple[int, int] | None, with_labels: bool, list_file: str | os.PathLike | None,
             strict: bool) -> "SegmentationDataset":
        """A reader of ``split`` whose labels are ids of ``classes``; the arguments a layout lacks are refused."""
        cls._check_split(split)
        cls.refuse_list_file(list_file)
        if not with_labels:
            raise ConfigError(f"{cls.dataset_name} is a labelled source dataset; with_labels=False is for "
                              "datasets with unlabelled splits")
        return cls(root, classes, size=size, strict=strict)

    @classmethod
    def _check_split(cls, split: str | None) -> None:
        """A dataset used whole (SPLITS ``("all",)``) also takes ``"train"``: it is all a source trains on."""
        whole = cls.SPLITS == ("all",)
        if split not in (None, *cls.SPLITS, *(("train",) if whole else ())):
            extra = "; it is used whole, a list file selects a subset" if whole else ""
            raise ConfigError(f"{cls.dataset_name} has no {split!r} split (splits: {', '.join(cls.SPLITS)}{extra})")

    @classmethod
    def _classes(cls, classes: LabelSpace | int | None) -> LabelSpace:
        """``classes`` as a LabelSpace: an int (or None) picks one of the dataset's own protocols."""
        return classes if isinstance(classes, LabelSpace) else cls.label_space(None, classes)

    def __init__(
        self,
        root: Path,
        samples: list[Sample],
        problems: list[str],
        native: LabelSpace,
        classes: LabelSpace,
        size: tuple[int, int] | None,
        raw_to_native: np.ndarray,
        strict: bool,
    ) -> None:
        if not samples:
            unpaired = f"; {_format_problems(root, problems)}" if problems else ""
            layout = self.LAYOUT.format(split=getattr(self, "split", ""))
            raise DataError(f"{root}: no {self.dataset_name} samples found (expected {layout}){unpaired}")
        if problems and strict:
            raise DataError(_format_problems(root, problems))
        if size is not None:
            if len(size) != 2 or min(size) <= 0:
                raise ConfigError(f"size must be (width, height) with positive values, got {size!r}")
            size = (int(size[0]), int(size[1]))
        self.root = root
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.layout_problems: tuple[str, ...] = tuple(problems)
        self.native, self.classes = native, classes
        self.size = size
        # native id -> id of the same class name in `classes`; the ids a cache holds go through it too
        self.native_to_classes = native.lut_to(classes)
        # One LUT both maps and flags: unknown raw values stay INVALID.
        raw_to_native = np.asarray(raw_to_native, dtype=np.uint8)
        self._lut = np.where(raw_to_native == INVALID, INVALID, self.native_to_classes[raw_to_native]).astype(np.uint8)
        self._raw_to_native = raw_to_native

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.names

    @property
    def palette(self) -> np.ndarray:
        return self.classes.palette_array()

    def raw_value_of(self) -> np.ndarray:
        """uint8[256]: id of ``classes`` -> the (smallest) raw label value that reads as it, for writing labels
        back in the dataset's own values (255 -> 255; a class with no raw value -> 255)."""
        out = np.full(256, L.IGNORE_INDEX, dtype=np.uint8)
        for raw in range(255, -1, -1):
            if self._lut[raw] < INVALID:
                out[self._lut[raw]] = raw
        return out

    # -- listing ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, i: int) -> Path:
        return self.samples[i].image

    def label_path(self, i: int) -> Path | None:
        return self.samples[i].label

    @property
    def has_labels(self) -> bool:
        return self.samples[0].label is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, "
            f"num_classes={self.num_classes}, size={self.size})"
        )

    # -- decoding -----------------------------------------------------------------------------------
    def _read_raw_label(self, path: Path) -> np.ndarray:
        """HxW uint8 raw ids of one label file; subclasses pick the reader of their file format."""
        raise NotImplementedError

    def read_native_label(self, i: int) -> np.ndarray:
        """HxW uint8 ids of the dataset's own classes (``native``), from the original file (what a cache holds)."""
        return self._decode(self.samples[i].label, self._raw_to_native)

    def read_label(self, i: int) -> np.ndarray:
        """HxW uint8 compact ids of ``classes`` (255 = ignore) at native size; DataError on unknown raw values."""
        path = self.samples[i].label
        if path is None:
            raise DataError(f"{self.samples[i].image}: this {self.dataset_name} split has no labels")
        if self.label_cache is not None:
            cached = self.label_cache.read(path, self.native_to_classes)
            if cached is not None:
                return cached
        return self._decode(path, self._lut)

    def _decode(self, path: Path | None, lut: np.ndarray) -> np.ndarray:
        if path is None:
            raise DataError(f"this {self.dataset_name} split has no labels")
        raw = self._read_raw_label(path)
        label = lut[raw]
        bad = label == INVALID
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            raise DataError(
                f"{path}: unknown label values {values} ({int(bad.sum())} pixels); "
                f"valid raw values are {self._valid_values()} (a label converted to grey or colour has lost them)"
            )
        return label

    def _valid_values(self) -> str:
        ids = np.flatnonzero(self._lut != INVALID)
        contiguous = ids.size and ids[-1] - ids[0] + 1 == ids.size
        return f"{ids.min()}..{ids.max()}" if contiguous else ", ".join(map(str, ids.tolist()))

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"image": HxWx3 uint8 RGB, "label": HxW uint8 compact ids (if labelled), "name": str}``."""
        sample = self.samples[i]
        image = read_rgb(sample.image)
        item: dict[str, Any] = {"image": image, "name": sample.name}
        if sample.label is not None:
            label = self.read_label(i)
            check_same_size(image, label, sample)
            item["label"] = label
        if self.size is not None:
            item.update(resize(item["image"], item.get("label"), self.size))
        return item


def check_same_size(image: np.ndarray, label: np.ndarray, sample: Sample) -> None:
    """Image and label must agree at native size: a mismatch means a wrong pairing, not a resolution."""
    if label.shape != image.shape[:2]:
        raise DataError(
            f"size mismatch: image {sample.image} is {image.shape[1]}x{image.shape[0]}, "
            f"label {sample.label} is {label.shape[1]}x{label.shape[0]}"
        )


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resize to ``size=(W, H)``: the image bilinearly, the label with nearest neighbour.

    Labels use INTER_NEAREST_EXACT (pixel-centre sampling, like PIL's NEAREST in the original code) rather
    than INTER_NEAREST, whose half-pixel shift would misalign labels with the bilinear image.
    """
    out: dict[str, np.ndarray] = {}
    if image.shape[1::-1] == tuple(size):
        out["image"] = image
    else:
        out["image"] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        same = label.shape[::-1] == tuple(size)
        out["label"] = label if same else cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return out


def pair_by_name(
    images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path
) -> tuple[list[Sample], list[str]]:
    """Samples for the file names present in both folders, and one problem per unpaired file."""
    problems = [f"{images[n]}: no label {label_dir / n}" for n in sorted(images.keys() - labels.keys())]
    problems += [f"{labels[n]}: label without an image {image_dir / n}" for n in sorted(labels.keys() - images.keys())]
    samples = [Sample(Path(n).stem, images[n], labels[n]) for n in sorted(images.keys() & labels.keys())]
    return samples, problems


class GTA5Dataset(SegmentationDataset):
    """GTA5 ("Playing for Data"): ``images/NNNNN.png`` + ``labels/NNNNN.png``.

    Labels are palette PNGs whose index is the Cityscapes label id, read as indices (never as colours). Grey
    8-bit PNGs of the label ids are read too; a grey conversion of a palette label holds luminances, which
    are refused as unknown values. Index 34 is accepted as void, as in ProDA. There is no split:
    ``list_file`` (one name per line, e.g. AdaptSegNet's ``train.txt``) selects a subset, in file order.
    ``classes``: a :class:`LabelSpace` of Cityscapes class names, or a protocol's class count (19/16/13).
    """

    dataset_name = "GTA5"
    LAYOUT = "images/*.png with labels/*.png"
    RAW_TO_NATIVE = raw_lut(L.cityscapes_lut(19), 34)

    @classmethod
    def open(cls, root, *, split, classes, size, with_labels, list_file, strict):
        cls._check_split(split)
        if not with_labels:
            raise ConfigError(f"{cls.dataset_name} is a labelled source dataset; with_labels=False is for "
                              "datasets with unlabelled splits")
        return cls(root, classes, list_file, size, strict=strict)

    def __init__(
        self,
        root: str | os.PathLike,
        classes: LabelSpace | int | None = None,
        list_file: str | os.PathLike | None = None,
        size: tuple[int, int] | None = None,
        *,
        strict: bool = True,
    ) -> None:
        root = require_dir(Path(root), "GTA5 root")
        image_dir = require_dir(root / "images", "GTA5 images")
        label_dir = require_dir(root / "labels", "GTA5 labels")
        images, labels = list_files(image_dir, ".png"), list_files(label_dir, ".png")
        if list_file is None:
            samples, problems = pair_by_name(images, labels, image_dir, label_dir)
        else:
            samples, problems = self._from_list(Path(list_file), images, labels, image_dir, label_dir)
        super().__init__(root, samples, problems, self.NATIVE, self._classes(classes), size, self.RAW_TO_NATIVE, strict)

    @staticmethod
    def _from_list(
        list_file: Path, images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path
    ) -> tuple[list[Sample], list[str]]:
        try:
            lines = list_file.read_text().split()
        except OSError as exc:
            raise DataError(f"{list_file}: cannot read list file ({exc.strerror})") from None
        names = [n if n.endswith(".png") else n + ".png" for n in lines]
        if not names:
            raise DataError(f"{list_file}: list file is empty")
        samples: list[Sample] = []
        problems: list[str] = []
        for n in names:
            if n not in images:
                problems.append(f"{image_dir / n}: listed in {list_file} but missing")
            elif n not in labels:
                problems.append(f"{images[n]}: no label {label_dir / n}")
            else:
                samples.append(Sample(Path(n).stem, images[n], labels[n]))
        return samples, problems

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png``.

    Labels are 16-bit 3-channel PNGs with the class id in the first (R) channel; raw ids 0..22 map through
    :func:`labels.synthia_lut` (0, 13, 14 and 22 are ignored in every protocol).
    """

    dataset_name = "SYNTHIA"
    LAYOUT = "RGB/*.png with GT/LABELS/*.png"
    RAW_TO_NATIVE = raw_lut(L.synthia_lut(19), L.SYNTHIA_MAX_ID)
    DEFAULT_NUM_CLASSES = 16  # terrain, truck and train have no pixels in SYNTHIA

    def __init__(
        self,
        root: str | os.PathLike,
        classes: LabelSpace | int | None = None,
        size: tuple[int, int] | None = None,
        *,
        strict: bool = True,
    ) -> None:
        root = require_dir(Path(root), "SYNTHIA root")
        image_dir = require_dir(root / "RGB", "SYNTHIA RGB")
        label_dir = require_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS")
        samples, problems = pair_by_name(
            list_files(image_dir, ".png"), list_files(label_dir, ".png"), image_dir, label_dir
        )
        super().__init__(root, samples, problems, self.NATIVE, self._classes(classes), size, self.RAW_TO_NATIVE, strict)

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_synthia_label(path)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Samples are sorted by relative image path (as ProDA's sorted glob). ``with_labels=False`` reads images
    only (the test split, or unlabelled target training) and does not need ``gtFine``.
    """

    dataset_name = "Cityscapes"
    LAYOUT = "leftImg8bit/{split}/<city>/*_leftImg8bit.png with gtFine/{split}/<city>/*_gtFine_labelIds.png"
    SPLITS = ("train", "val", "test")
    RAW_TO_NATIVE = raw_lut(L.cityscapes_lut(19), L.CITYSCAPES_MAX_ID)
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"

    @classmethod
    def open(cls, root, *, split, classes, size, with_labels, list_file, strict):
        cls.refuse_list_file(list_file)
        return cls(root, split or "train", classes, size, with_labels, strict=strict)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: LabelSpace | int | None = None,
        size: tuple[int, int] | None = None,
        with_labels: bool = True,
        *,
        strict: bool = True,
    ) -> None:
        root = require_dir(Path(root), "Cityscapes root")
        image_root = require_dir(root / "leftImg8bit", "Cityscapes leftImg8bit")
        image_dir = image_root / split
        if not image_dir.is_dir():
            splits = sorted(p.name for p in image_root.iterdir() if p.is_dir())
            raise DataError(f"{image_dir}: Cityscapes split {split!r} not found (available: {', '.join(splits) or 'none'})")
        images = self._scan(image_dir, self.IMAGE_SUFFIX)
        if with_labels:
            label_dir = require_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
            labels = self._scan(label_dir, self.LABEL_SUFFIX)
            problems = [f"{images[k]}: no label {label_dir / (k + self.LABEL_SUFFIX)}" for k in sorted(images.keys() - labels.keys())]
            problems += [
                f"{labels[k]}: label without an image {image_dir / (k + self.IMAGE_SUFFIX)}"
                for k in sorted(labels.keys() - images.keys())
            ]
            keys = sorted(images.keys() & labels.keys())
        else:
            labels, problems, keys = {}, [], sorted(images)
        samples = [Sample(images[k].stem, images[k], labels.get(k)) for k in keys]
        self.split = split
        super().__init__(root, samples, problems, self.NATIVE, self._classes(classes), size, self.RAW_TO_NATIVE, strict)

    @staticmethod
    def _scan(split_dir: Path, suffix: str) -> dict[str, Path]:
        """``{"<city>/<city>_<seq>_<frame>": path}``: one scan of the split folder and one per city.

        Sorted keys give the relative-path order, since every file of a kind has the same suffix.
        """
        found: dict[str, Path] = {}
        with os.scandir(split_dir) as cities:
            city_names = sorted(c.name for c in cities if c.is_dir() and not c.name.startswith("."))
        for city in city_names:
            for name, path in list_files(split_dir / city, suffix).items():
                found[f"{city}/{name[: -len(suffix)]}"] = path
        return found

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)

