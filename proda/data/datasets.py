"""Readers for the official GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes layouts.

Each reader lists its folders once at construction (one directory scan per folder, never one per sample),
pairs images with labels by name and refuses to open a layout with unpaired files, so a missing label
surfaces at start-up instead of hours into training. Samples are decoded lazily in ``__getitem__``:

* the raw label (GTA5 palette index, Cityscapes label id, SYNTHIA 16-bit class id) is mapped to compact ids
  0..C-1 / 255 through the lookup tables of :mod:`proda.data.labels`;
* raw values that the dataset never uses (e.g. 40 in a Cityscapes label) raise :class:`DataError`, because
  they mean a wrong file (a trainId image, a colour-converted label), not a rare class;
* the image and label must have the same native size; ``size=(W, H)`` then resizes the image bilinearly
  and the label with nearest neighbour;
* a label with a fresh copy in the trainId cache of ``proda data prepare`` (``root/proda_cache`` by default,
  see :mod:`proda.data.prepare` and ``build_dataset(label_cache=...)``) is read from there instead.

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

DATASET_NAMES = ("gta5", "synthia", "cityscapes")
DEFAULT_NUM_CLASSES = {"gta5": 19, "synthia": 16, "cityscapes": 19}

# Marks raw values that are not ids of the dataset; compact ids are < 19 and ignore is 255, so 254 is free.
_INVALID = 254
# How many unpaired names a constructor error lists before "... and N more".
_LIST_AT_MOST = 5


@dataclass(frozen=True)
class Sample:
    """One image and its label file (``label`` is None for label-less splits)."""

    name: str
    image: Path
    label: Path | None


def _valid_ids(max_id: int) -> np.ndarray:
    valid = np.zeros(256, dtype=bool)
    valid[: max_id + 1] = True
    return valid


def _list_files(folder: Path, suffix: str) -> dict[str, Path]:
    """``{file name: path}`` of the non-hidden files ending with ``suffix``, from a single directory scan.

    Hidden files are skipped so that ``.DS_Store`` or a half-written ``.x.png.tmp`` never becomes a sample.
    """
    with os.scandir(folder) as entries:
        return {
            e.name: Path(e.path)
            for e in entries
            if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file()
        }


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def _format_problems(root: Path, problems: list[str]) -> str:
    shown = "\n  ".join(problems[:_LIST_AT_MOST])
    more = f"\n  ... and {len(problems) - _LIST_AT_MOST} more" if len(problems) > _LIST_AT_MOST else ""
    return f"{root}: {len(problems)} unpaired or missing file(s) (run `proda data check` for the full list):\n  {shown}{more}"


class SegmentationDataset:
    """Common base: a fixed, sorted list of :class:`Sample` and the decoding of one sample.

    Subclasses list their layout and set the label reader, the valid raw ids and the raw -> compact LUT.
    ``layout_problems`` holds the unpaired files that a non-strict constructor skipped (see ``strict``).
    """

    dataset_name: str = ""
    LAYOUT: str = ""  # the files a sample is made of, for errors ("{split}" is filled in)
    # A trainId cache written by `proda data prepare` (proda.data.prepare.LabelCache), set by build_dataset;
    # read_label uses it for every label that has a fresh cached copy.
    label_cache = None

    def __init__(
        self,
        root: Path,
        samples: list[Sample],
        problems: list[str],
        num_classes: int,
        size: tuple[int, int] | None,
        lut: np.ndarray,
        valid_raw_ids: np.ndarray,
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
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = L.class_names(num_classes)
        self.palette: np.ndarray = L.palette(num_classes)
        self.size = size
        # One LUT both maps and flags: unknown raw values become _INVALID.
        self._lut = np.where(valid_raw_ids, lut, _INVALID).astype(np.uint8)

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

    def read_label(self, i: int) -> np.ndarray:
        """HxW uint8 compact ids (255 = ignore) at native size; DataError on unknown raw values."""
        path = self.samples[i].label
        if path is None:
            raise DataError(f"{self.samples[i].image}: this {self.dataset_name} split has no labels")
        if self.label_cache is not None:
            cached = self.label_cache.read(path, self.num_classes)
            if cached is not None:
                return cached
        raw = self._read_raw_label(path)
        label = self._lut[raw]
        bad = label == _INVALID
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            raise DataError(
                f"{path}: unknown label values {values} ({int(bad.sum())} pixels); "
                f"valid raw ids are {self._valid_range()}"
            )
        return label

    def _valid_range(self) -> str:
        ids = np.flatnonzero(self._lut != _INVALID)
        return f"{ids.min()}..{ids.max()}"

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


def _pair_by_name(
    images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path
) -> tuple[list[Sample], list[str]]:
    """Samples for the file names present in both folders, and one problem per unpaired file."""
    problems = [f"{images[n]}: no label {label_dir / n}" for n in sorted(images.keys() - labels.keys())]
    problems += [f"{labels[n]}: label without an image {image_dir / n}" for n in sorted(labels.keys() - images.keys())]
    samples = [Sample(Path(n).stem, images[n], labels[n]) for n in sorted(images.keys() & labels.keys())]
    return samples, problems


class GTA5Dataset(SegmentationDataset):
    """GTA5 ("Playing for Data"): ``images/NNNNN.png`` + ``labels/NNNNN.png``.

    Labels are palette PNGs whose index is the Cityscapes label id; they are read as indices (mode P only:
    a grey- or RGB-converted label has lost its ids). Index 34 is accepted as void, as in ProDA. There is no
    split: ``list_file`` (one name per line, e.g. AdaptSegNet's ``train.txt``) selects a subset, in file order.
    """

    dataset_name = "GTA5"
    LAYOUT = "images/*.png with labels/*.png"
    VALID_RAW_IDS = _valid_ids(34)

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int = 19,
        list_file: str | os.PathLike | None = None,
        size: tuple[int, int] | None = None,
        *,
        strict: bool = True,
    ) -> None:
        root = _require_dir(Path(root), "GTA5 root")
        image_dir = _require_dir(root / "images", "GTA5 images")
        label_dir = _require_dir(root / "labels", "GTA5 labels")
        images, labels = _list_files(image_dir, ".png"), _list_files(label_dir, ".png")
        if list_file is None:
            samples, problems = _pair_by_name(images, labels, image_dir, label_dir)
        else:
            samples, problems = self._from_list(Path(list_file), images, labels, image_dir, label_dir)
        super().__init__(
            root, samples, problems, L.check_num_classes(num_classes), size,
            L.cityscapes_lut(num_classes), self.VALID_RAW_IDS, strict,
        )

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
        return read_label_ids(path, modes=("P",))


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png``.

    Labels are 16-bit 3-channel PNGs with the class id in the first (R) channel; raw ids 0..22 map through
    :func:`labels.synthia_lut` (0, 13, 14 and 22 are ignored in every protocol).
    """

    dataset_name = "SYNTHIA"
    LAYOUT = "RGB/*.png with GT/LABELS/*.png"
    VALID_RAW_IDS = _valid_ids(L.SYNTHIA_MAX_ID)

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int = 16,
        size: tuple[int, int] | None = None,
        *,
        strict: bool = True,
    ) -> None:
        root = _require_dir(Path(root), "SYNTHIA root")
        image_dir = _require_dir(root / "RGB", "SYNTHIA RGB")
        label_dir = _require_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS")
        samples, problems = _pair_by_name(
            _list_files(image_dir, ".png"), _list_files(label_dir, ".png"), image_dir, label_dir
        )
        super().__init__(
            root, samples, problems, L.check_num_classes(num_classes), size,
            L.synthia_lut(num_classes), self.VALID_RAW_IDS, strict,
        )

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_synthia_label(path)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Samples are sorted by relative image path (as ProDA's sorted glob). ``with_labels=False`` reads images
    only (the test split, or unlabelled target training) and does not need ``gtFine``.
    """

    dataset_name = "Cityscapes"
    LAYOUT = "leftImg8bit/{split}/<city>/*_leftImg8bit.png with gtFine/{split}/<city>/*_gtFine_labelIds.png"
    VALID_RAW_IDS = _valid_ids(L.CITYSCAPES_MAX_ID)
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_classes: int = 19,
        size: tuple[int, int] | None = None,
        with_labels: bool = True,
        *,
        strict: bool = True,
    ) -> None:
        root = _require_dir(Path(root), "Cityscapes root")
        image_root = _require_dir(root / "leftImg8bit", "Cityscapes leftImg8bit")
        image_dir = image_root / split
        if not image_dir.is_dir():
            splits = sorted(p.name for p in image_root.iterdir() if p.is_dir())
            raise DataError(f"{image_dir}: Cityscapes split {split!r} not found (available: {', '.join(splits) or 'none'})")
        images = self._scan(image_dir, self.IMAGE_SUFFIX)
        if with_labels:
            label_dir = _require_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
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
        super().__init__(
            root, samples, problems, L.check_num_classes(num_classes), size,
            L.cityscapes_lut(num_classes), self.VALID_RAW_IDS, strict,
        )

    @staticmethod
    def _scan(split_dir: Path, suffix: str) -> dict[str, Path]:
        """``{"<city>/<city>_<seq>_<frame>": path}``: one scan of the split folder and one per city.

        Sorted keys give the relative-path order, since every file of a kind has the same suffix.
        """
        found: dict[str, Path] = {}
        with os.scandir(split_dir) as cities:
            city_names = sorted(c.name for c in cities if c.is_dir() and not c.name.startswith("."))
        for city in city_names:
            for name, path in _list_files(split_dir / city, suffix).items():
                found[f"{city}/{name[: -len(suffix)]}"] = path
        return found

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    num_classes: int | None = None,
    size: tuple[int, int] | None = None,
    list_file: str | os.PathLike | None = None,
    with_labels: bool = True,
    *,
    strict: bool = True,
    label_cache: str | os.PathLike | None = "auto",
) -> SegmentationDataset:
    """One of :data:`DATASET_NAMES` by name.

    ``split`` only exists for Cityscapes (default ``train``); GTA5 and SYNTHIA are used whole as the source
    domain, so they accept only ``None``, ``"all"`` or ``"train"``, and a subset comes from ``list_file``
    (GTA5). ``num_classes`` defaults to the dataset's usual protocol (19, SYNTHIA 16).

    ``label_cache``: the trainId cache of ``proda data prepare`` (:mod:`proda.data.prepare`): ``"auto"`` uses
    ``root/proda_cache`` if it exists, a folder uses that one (an error if it holds no cache of this dataset),
    None reads the original labels only. Cached labels are identical to decoded originals.
    """
    dataset = _build_reader(name, root, split, num_classes, size, list_file, with_labels, strict)
    if label_cache is not None and dataset.has_labels:
        from .prepare import LabelCache

        auto = str(label_cache) == "auto"
        dataset.label_cache = LabelCache.open(None if auto else label_cache, dataset.root, name.lower(),
                                              required=not auto)
    return dataset


def _build_reader(
    name: str,
    root: str | os.PathLike,
    split: str | None,
    num_classes: int | None,
    size: tuple[int, int] | None,
    list_file: str | os.PathLike | None,
    with_labels: bool,
    strict: bool,
) -> SegmentationDataset:
    key = name.lower()
    if key not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[key]
    if key != "gta5" and list_file is not None:
        raise ConfigError(f"list_file is only supported for gta5, not {name}")
    if key == "cityscapes":
        return CityscapesDataset(root, split or "train", num_classes, size, with_labels, strict=strict)
    if split not in (None, "all", "train"):
        raise ConfigError(f"{name} has no {split!r} split (it is used whole; use list_file for a GTA5 subset)")
    if not with_labels:
        raise ConfigError(f"{name} is a labelled source dataset; with_labels=False is only for cityscapes")
    if key == "gta5":
        return GTA5Dataset(root, num_classes, list_file, size, strict=strict)
    return SynthiaDataset(root, num_classes, size, strict=strict)
