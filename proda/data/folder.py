"""``folder``: any folder of images (and label maps) that describes itself in a ``dataset.yaml``.

The descriptor at ``ROOT/dataset.yaml`` (every key but ``classes`` optional)::

    classes: [background, road, lane_marking, vehicle]  # train ids 0..K-1, or `cityscapes` (the 19)
    palette: [[0, 0, 0], [128, 64, 128], [255, 255, 255], [0, 0, 142]]   # one RGB colour per class
    images: images            # folder under ROOT, searched recursively (default: images)
    labels: labels            # folder under ROOT; omitted or null: an unlabelled dataset
    image_suffix: .jpg        # default .png
    label_suffix: _mask.png   # default .png
    label_values: {0: 255, 10: 0, 20: 1, 30: 2, 40: 3}   # raw value -> train id (255 ignore)
    splits: [train, val]      # sub-folders images/<split>/ and labels/<split>/; omitted: one split "all"

Images and labels pair by their path relative to the split folder, without the suffix:
``images/train/a/0001.jpg`` and ``labels/train/a/0001_mask.png`` are sample ``a__0001``. Labels are 8-bit
single-channel PNGs (grey or palette-indexed, read as their values). Without ``label_values`` a label
value is the train id itself (0..K-1, 255 ignore); any other value, like a value missing from
``label_values``, is an error naming the file. Without ``palette``, a class named as a Cityscapes class
takes its Cityscapes colour and the others colours of the PASCAL VOC colour map.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import ConfigError, DataError
from ..io import read_label_ids
from . import labels as L
from .datasets import INVALID, Sample, SegmentationDataset, require_dir
from .labels import LabelSpace

DESCRIPTOR = "dataset.yaml"
KEYS = ("classes", "palette", "images", "labels", "image_suffix", "label_suffix", "label_values", "splits")
WHOLE = "all"  # the one split of a descriptor without `splits`


@dataclass(frozen=True)
class FolderDescriptor:
    """A parsed, checked ``dataset.yaml``."""

    path: Path
    classes: LabelSpace
    images: str = "images"
    labels: str | None = "labels"
    image_suffix: str = ".png"
    label_suffix: str = ".png"
    raw_to_class: tuple[int, ...] = ()  # uint8[256] as a tuple: raw value -> train id, 255, or INVALID
    splits: tuple[str, ...] = (WHOLE,)

    @classmethod
    def read(cls, root: str | os.PathLike) -> "FolderDescriptor":
        path = Path(root) / DESCRIPTOR
        if not Path(root).is_dir():
            raise DataError(f"{root}: folder dataset root not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: not found; a folder dataset describes itself there "
                            "(classes, images, labels, ...: see `proda data check --help`)") from None
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"{path}: not a readable YAML file ({exc})") from None
        try:
            return cls._parse(path, raw)
        except ConfigError as exc:  # a value LabelSpace refuses: say which file holds it
            raise DataError(f"{path}: {exc}") from None

    @classmethod
    def _parse(cls, path: Path, raw: Any) -> "FolderDescriptor":
        def fail(msg: str) -> DataError:
            return DataError(f"{path}: {msg}")

        if not isinstance(raw, dict):
            raise fail("must hold a mapping (classes: [...], images: ..., ...)")
        unknown = sorted(set(map(str, raw)) - set(KEYS))
        if unknown:
            raise fail(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}")
        if "classes" not in raw:
            raise fail("`classes` is required: a list of class names (train ids 0..K-1) or `cityscapes`")
        names = raw["classes"]
        if names == "cityscapes":
            names = L.class_names(19)
        elif not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
            raise fail(f"`classes` must be a list of names or `cityscapes`, got {names!r}")
        palette = raw.get("palette")
        if palette is None:
            palette = default_palette([str(n) for n in names])
        elif not (isinstance(palette, list) and all(isinstance(c, list) and len(c) == 3 for c in palette)):
            raise fail(f"`palette` must be a list of [R, G, B] colours, got {palette!r}")
        classes = LabelSpace(tuple(str(n) for n in names), tuple(tuple(c) for c in palette))
        text = {}
        for key, default in (("images", "images"), ("image_suffix", ".png"), ("label_suffix", ".png")):
            value = raw.get(key, default)
            if not isinstance(value, str) or not value:
                raise fail(f"`{key}` must be a non-empty string, got {value!r}")
            text[key] = value
        labels = raw.get("labels", "labels")
        if labels is not None and (not isinstance(labels, str) or not labels):
            raise fail(f"`labels` must be a folder name or null, got {labels!r}")
        splits = raw.get("splits", [WHOLE])
        if not (isinstance(splits, list) and splits and all(isinstance(s, str) and s for s in splits)):
            raise fail(f"`splits` must be a non-empty list of folder names, got {splits!r}")
        return cls(path, classes, text["images"], labels, text["image_suffix"], text["label_suffix"],
                   tuple(cls._raw_lut(raw.get("label_values"), classes.num_classes, fail).tolist()), tuple(splits))

    @staticmethod
    def _raw_lut(values: Any, num_classes: int, fail) -> np.ndarray:
        lut = np.full(256, INVALID, dtype=np.uint8)
        if values is None:  # values are the train ids themselves
            lut[:num_classes] = np.arange(num_classes)
            lut[L.IGNORE_INDEX] = L.IGNORE_INDEX
            return lut
        if not isinstance(values, dict) or not values:
            raise fail(f"`label_values` must map raw label values to train ids, got {values!r}")
        for raw, train_id in values.items():
            if not (isinstance(raw, int) and 0 <= raw <= 255):
                raise fail(f"`label_values`: raw value {raw!r} is not an 8-bit value 0..255")
            if not (isinstance(train_id, int) and (0 <= train_id < num_classes or train_id == L.IGNORE_INDEX)):
                raise fail(f"`label_values`: {raw} -> {train_id!r} is not a train id 0..{num_classes - 1} or 255")
            lut[raw] = train_id
        return lut

    def split_dirs(self, root: Path, split: str) -> tuple[Path, Path | None]:
        """(image folder, label folder or None) of ``split``."""
        sub = () if self.splits == (WHOLE,) else (split,)
        return root.joinpath(self.images, *sub), root.joinpath(self.labels, *sub) if self.labels else None


def default_palette(names: list[str]) -> list[list[int]]:
    """Cityscapes colours for Cityscapes class names, PASCAL VOC colour-map entries for the others."""
    cityscapes = dict(zip(L.class_names(19), L.palette(19).tolist()))
    voc = _voc_colormap()
    return [cityscapes.get(n, voc[i % 256]) for i, n in enumerate(names)]


def _voc_colormap() -> list[list[int]]:
    """The 256 colours of the PASCAL VOC colour map (bit-interleaved class index), distinct for each index."""
    colours = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


def _scan(folder: Path, suffix: str) -> dict[str, Path]:
    """``{relative path without suffix: path}`` of the non-hidden files ending with ``suffix``, recursively
    (hidden folders and files skipped, as half-written ``.x.png.tmp`` files must never become samples)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                found[(rel / name[: -len(suffix)]).as_posix()] = Path(dirpath) / name
    return found


def _sample_name(key: str) -> str:
    """``a/0001`` -> ``a__0001``: names are unique (pseudo labels are stored under them) and flat."""
    return key.replace("/", "__")


def _pair(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path,
          descriptor: FolderDescriptor) -> tuple[list[Sample], list[str]]:
    """Samples for the keys present on both sides, and one problem per unpaired file (naming its partner)."""
    problems = [f"{images[k]}: no label {label_dir / (k + descriptor.label_suffix)}"
                for k in sorted(images.keys() - labels.keys())]
    problems += [f"{labels[k]}: label without an image {image_dir / (k + descriptor.image_suffix)}"
                 for k in sorted(labels.keys() - images.keys())]
    samples = [Sample(_sample_name(k), images[k], labels[k]) for k in sorted(images.keys() & labels.keys())]
    return samples, problems


class FolderDataset(SegmentationDataset):
    """A dataset described by ``ROOT/dataset.yaml`` (see the module docstring)."""

    dataset_name = "folder"
    LAYOUT = "ROOT/dataset.yaml describing images (and labels) under ROOT"

    @classmethod
    def label_space(cls, root: str | os.PathLike | None = None, num_classes: int | None = None) -> LabelSpace:
        if root is None:
            raise ConfigError("a folder dataset's classes are in ROOT/dataset.yaml: give its root")
        descriptor = FolderDescriptor.read(root)
        classes = descriptor.classes
        if num_classes is not None and num_classes != classes.num_classes:
            raise ConfigError(f"num_classes={num_classes}, but {descriptor.path} lists {classes.num_classes} "
                              f"classes ({', '.join(classes.names)})")
        return classes

    @classmethod
    def splits(cls, root: str | os.PathLike | None = None) -> tuple[str, ...]:
        return FolderDescriptor.read(root).splits if root is not None else (WHOLE,)

    @classmethod
    def open(cls, root, *, split, classes, size, with_labels, list_file, strict):
        cls.refuse_list_file(list_file)
        return cls(root, split, classes, size, with_labels, strict=strict)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        classes: LabelSpace | None = None,
        size: tuple[int, int] | None = None,
        with_labels: bool = True,
        *,
        strict: bool = True,
    ) -> None:
        descriptor = FolderDescriptor.read(root)
        root = Path(root)
        split = split or descriptor.splits[0]
        if split not in descriptor.splits and not (split == "train" and descriptor.splits == (WHOLE,)):
            raise ConfigError(f"{descriptor.path}: no split {split!r} (splits: {', '.join(descriptor.splits)})")
        self.split = split
        self.descriptor = descriptor
        image_dir, label_dir = descriptor.split_dirs(root, split if split in descriptor.splits else WHOLE)
        images = _scan(require_dir(image_dir, "folder images"), descriptor.image_suffix)
        if with_labels and label_dir is not None:
            labels = _scan(require_dir(label_dir, "folder labels"), descriptor.label_suffix)
            samples, problems = _pair(images, labels, image_dir, label_dir, descriptor)
        else:
            samples, problems = [Sample(_sample_name(k), images[k], None) for k in sorted(images)], []
        self.LAYOUT = (f"{image_dir.relative_to(root)}/**/*{descriptor.image_suffix}"
                       + (f" with {label_dir.relative_to(root)}/**/*{descriptor.label_suffix}" if label_dir else ""))
        raw_to_class = np.array(descriptor.raw_to_class, dtype=np.uint8)
        super().__init__(root, samples, problems, descriptor.classes, classes or descriptor.classes, size,
                         raw_to_class, strict)

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)
