"""`proda predict`: segment image files with a trained checkpoint and write the maps as PNGs.

Output files (one per image and format, each written atomically; ``<stem>`` is the image name without
its extension):

* ``color``   -> ``<stem>_color.png``: RGB in the official Cityscapes palette of the model's protocol;
* ``overlay`` -> ``<stem>_overlay.png``: the image and the colour map blended 50/50;
* ``trainid`` -> ``<stem>_trainid.png``: single-channel compact ids of the model's protocol (0..C-1);
* ``labelid`` -> Cityscapes label ids (0..33), single-channel 8-bit, named for the test server and for
  ``proda evaluate --predictions``, which take the unique ``<city>_<seq>_<frame>*.png`` of each image:
  ``<city>_<seq>_<frame>_leftImg8bit.png`` -> ``<city>_<seq>_<frame>_pred_labelIds.png``; any other image
  -> ``<stem>_labelIds.png``.

The scorer skips ``*_color.png`` / ``*_overlay.png``, so a folder of labelid (or trainid) maps with the
visualisations beside them scores as it is. Both id formats in one folder would give the scorer two
matches per image, so when *both* trainid and labelid are requested every format goes into its own
subfolder, ``<out>/<format>/...``; score ``<out>/labelid``.

Benchmark-server formats (flat folders, one file per image named ``<stem>.png``, the name the servers
match predictions to images by; maps in the 19 Cityscapes trainIds 0..18, whatever subset of those
classes the model predicts):

* ``acdc``        -> ``labelTrainIds/<stem>.png``: 8-bit trainIds, what the ACDC server takes (zip the
  files of ``labelTrainIds/``);
* ``dark_zurich`` -> the three folders of the Dark Zurich server (zip ``<out>`` with them at the top):
  ``labelTrainIds/<stem>.png`` (8-bit trainIds, scored by IoU), ``labelTrainIds_invalid/<stem>.png`` (the
  same map with 255 where the model declares the pixel invalid, i.e. its confidence is below
  ``invalid_threshold``, scored by uncertainty-aware IoU) and ``confidence/<stem>.png`` (16-bit, the
  softmax maximum scaled to 0..65535).

An input folder is searched recursively for .png/.jpg/.jpeg (the output folder excluded) and its
sub-folder structure is kept under the output folder (``leftImg8bit/val`` given -> ``<out>/frankfurt/...``);
files and glob matches are written at the top of the output folder. Two inputs that would write the same
output file are an error, found before the model runs.
"""
from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import io
from ..data import labels
from ..data.transforms import image_to_tensor
from ..errors import ConfigError, DataError
from .inference import (check_inference_options, check_mode_and_scales, infer_probabilities, resize_image,
                        resolve_sizes)

FORMATS = ("color", "overlay", "trainid", "labelid", "acdc", "dark_zurich")
# The folders (one file per image) each benchmark-server format writes.
SERVER_FOLDERS = {"acdc": ("labelTrainIds",), "dark_zurich": ("labelTrainIds", "labelTrainIds_invalid", "confidence")}
CONFIDENCE_SCALE = 65535  # Dark Zurich: confidence 1.0 is the largest 16-bit value
DEFAULT_INVALID_THRESHOLD = 0.5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# <city>_<seq>_<frame>_leftImg8bit: the scorer splits names on "_", so a city never holds one.
CITYSCAPES_STEM = re.compile(r"^([^_]+_[^_]+_[^_]+)_leftImg8bit$")


@dataclass(frozen=True)
class InputImage:
    """An image to segment and where its outputs go, relative to the output folder (without suffix)."""

    path: Path
    rel: Path  # relative path of the image (its folder structure under an input folder, else its name)


# ---------------------------------------------------------------------------------------------------
# File names


def output_name(stem: str, fmt: str) -> str:
    """File name of one output format for an image of stem ``stem`` (see the module docstring)."""
    if fmt == "labelid":
        m = CITYSCAPES_STEM.match(stem)
        return f"{m.group(1)}_pred_labelIds.png" if m else f"{stem}_labelIds.png"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    return f"{stem}_{fmt}.png"


def output_paths(item: InputImage, out_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    """{output: file} of one image, keyed by format (or, for server formats, by server folder); each
    format in its own subfolder when both id formats are asked."""
    split = "trainid" in formats and "labelid" in formats
    paths = {}
    for fmt in formats:
        if fmt in SERVER_FOLDERS:
            paths.update({folder: out_dir / folder / f"{item.rel.stem}.png" for folder in SERVER_FOLDERS[fmt]})
        else:
            paths[fmt] = (out_dir / fmt if split else out_dir) / item.rel.parent / output_name(item.rel.stem, fmt)
    return paths


def cityscapes_train_ids(class_names: Sequence[str]) -> np.ndarray:
    """uint8[256]: a model's class id -> the 19-class Cityscapes trainId of the same name (255 stays 255).

    The benchmark servers score Cityscapes trainIds; a model of other classes cannot be submitted.
    """
    unknown = [n for n in class_names if n not in labels.CLASSES_19]
    if unknown:
        raise ConfigError(f"the server formats write Cityscapes trainIds; this model's classes "
                          f"{', '.join(unknown)} are not Cityscapes classes")
    lut = np.full(256, labels.IGNORE_INDEX, dtype=np.uint8)
    lut[: len(class_names)] = [labels.CLASSES_19.index(n) for n in class_names]
    return lut


# ---------------------------------------------------------------------------------------------------
# Input discovery


def find_inputs(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[InputImage]:
    """Images named by files, folders (searched recursively) and glob patterns, in order, without repeats.

    Files under ``exclude`` (the output folder) are skipped so a re-run never segments its own outputs.
    Every folder or pattern must yield at least one image: an empty one is most likely a typo.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    empty: list[str] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_file():
            items = [InputImage(path, Path(path.name))]
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if _is_image(f) and not _inside(f, excluded))
            items = [InputImage(f, f.relative_to(path)) for f in files]
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
            items = [InputImage(m, Path(m.name)) for m in matches if _is_image(m) and not _inside(m, excluded)]
        if not items:
            empty.append(str(spec))
        found.extend(items)
    if empty:
        raise DataError("no .png/.jpg/.jpeg images found for: " + ", ".join(repr(s) for s in empty))
    seen: set[Path] = set()
    unique = []
    for item in found:
        key = item.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def check_collisions(items: Sequence[InputImage], out_dir: Path, formats: Sequence[str]) -> None:
    """DataError when two images would write the same output file (e.g. a.png and a.jpg)."""
    owner: dict[Path, Path] = {}
    for item in items:
        for path in output_paths(item, out_dir, formats).values():
            if path in owner:
                raise DataError(f"{owner[path]} and {item.path} would both be written to {path}; "
                                f"rename one or predict them into separate folders")
            owner[path] = item.path


# ---------------------------------------------------------------------------------------------------
# Prediction


def predict_paths(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("color",),
    mode: str = "whole",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    crop_size: tuple[int, int] | None = None,
    invalid_threshold: float = DEFAULT_INVALID_THRESHOLD,
) -> list[Path]:
    """Segment every input image; returns the files written (per image, in ``formats`` order).

    Sizes are (W, H). ``input_size``/``crop_size`` default as :func:`proda.engine.inference.resolve_sizes`
    says: whole-image inference resizes to the checkpoint's input size, sliding keeps the image's own
    resolution with the checkpoint's input size as window. Maps are always written at the image's size.
    Consecutive images of equal size are batched (up to ``batch_size``). ``invalid_threshold``: the
    ``dark_zurich`` format marks a pixel invalid (255) where the model's confidence is below it.
    """
    from ..models.weights import load_trained_model
    from .device import resolve_device

    formats = _check_formats(formats)
    check_mode_and_scales(mode, scales)
    if not 0.0 <= invalid_threshold <= 1.0:
        raise ConfigError(f"the invalid threshold is a confidence in [0, 1], got {invalid_threshold}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out_dir)
    items = find_inputs(inputs, exclude=out)
    check_collisions(items, out, formats)

    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    model, meta = load_trained_model(checkpoint, dev)
    num_classes = int(meta["num_classes"])
    size, crop = resolve_sizes(mode, input_size, crop_size, meta["input"].get("size"))
    check_inference_options(mode, scales, crop)
    mean, std = meta["input"]["mean"], meta["input"]["std"]
    # label ids exist only for a model of Cityscapes classes; colours are the model's own (its meta)
    to_label_id = labels.compact_to_cityscapes_id(num_classes) if "labelid" in formats else None
    classes = labels.LabelSpace(meta["class_names"], meta["palette"])
    tables = _Tables(classes, to_label_id, invalid_threshold,
                     cityscapes_train_ids(meta["class_names"]) if set(formats) & set(SERVER_FOLDERS) else None)

    written: list[Path] = []
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
    for batch in _batches(items, batch_size):
        images = [image for _, image in batch]
        h, w = images[0].shape[:2]
        x = torch.stack([image_to_tensor(resize_image(im, size)) for im in images]).to(dev)
        prob = infer_probabilities(model, x, (h, w), mean, std, mode=mode, scales=scales, flip=flip, crop_size=crop)
        confs, preds = (t.cpu().numpy() for t in prob.max(1))
        for (item, image), pred, conf in zip(batch, preds.astype(np.uint8), confs):
            for kind, path in output_paths(item, out, formats).items():
                io.write_png(path, _render(kind, pred, conf, image, tables))
                written.append(path)
        bar.update(len(batch))
    bar.close()
    return written


@dataclass(frozen=True)
class _Tables:
    """What turns a model's map into each output: its class count and id tables, the invalid threshold."""

    classes: labels.LabelSpace  # the model's class names and colours
    to_label_id: np.ndarray | None  # class id -> Cityscapes label id (labelid format only)
    invalid_threshold: float
    to_train_id: np.ndarray | None  # class id -> Cityscapes trainId (server formats only)


def _render(kind: str, pred: np.ndarray, conf: np.ndarray, image: np.ndarray, tables: _Tables) -> np.ndarray:
    """The array one output stores, from a map of class ids and its confidence (float, 0..1)."""
    if kind == "trainid":
        return pred
    if kind == "labelid":
        return tables.to_label_id[pred]
    if kind == "labelTrainIds":
        return tables.to_train_id[pred]
    if kind == "labelTrainIds_invalid":
        return np.where(conf < tables.invalid_threshold, labels.IGNORE_INDEX, tables.to_train_id[pred]).astype(np.uint8)
    if kind == "confidence":
        return np.rint(np.clip(conf, 0.0, 1.0) * CONFIDENCE_SCALE).astype(np.uint16)
    color = tables.classes.colorize(pred)
    if kind == "color":
        return color
    return ((image.astype(np.uint16) + color + 1) // 2).astype(np.uint8)  # overlay: 50/50, rounded


def _batches(items: Iterable[InputImage], batch_size: int) -> Iterator[list[tuple[InputImage, np.ndarray]]]:
    """Consecutive images of the same size, at most ``batch_size`` at a time (only a batch is in memory)."""
    batch: list[tuple[InputImage, np.ndarray]] = []
    for item in items:
        image = io.read_rgb(item.path)  # DataError naming the file when it is not a readable 8-bit image
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((item, image))
    if batch:
        yield batch


def _check_formats(formats: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ConfigError(f"output formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    servers = [f for f in chosen if f in SERVER_FOLDERS]
    if len(servers) > 1:
        raise ConfigError(f"one benchmark-server format at a time (both write labelTrainIds/), got {', '.join(servers)}")
    return chosen


def files_per_image(formats: Sequence[str]) -> int:
    return sum(len(SERVER_FOLDERS.get(f, (f,))) for f in formats)


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_list(text: str | Sequence[str]) -> list[str]:
    """'color,overlay' (or a list of such strings) -> ['color', 'overlay']."""
    parts = [text] if isinstance(text, str) else list(text)
    return [p.strip() for part in parts for p in part.split(",") if p.strip()]


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0.75,1,1.25' -> (0.75, 1.0, 1.25); ConfigError on anything else."""
    if not isinstance(text, str):
        return tuple(float(s) for s in text)
    try:
        scales = tuple(float(s) for s in parse_list(text))
    except ValueError:
        raise ConfigError(f"scales must be comma-separated numbers such as 0.75,1,1.25, got {text!r}") from None
    if not scales:
        raise ConfigError("no scales given")
    return scales


def predict_command(
    checkpoint: str,
    inputs: Sequence[str],
    out: str,
    formats: str | Sequence[str] = "color",
    mode: str = "whole",
    scales: str | Sequence[float] = "1",
    flip: bool = False,
    input_size: tuple[int, int] | None = None,
    device: str = "cpu",
    crop_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    progress: bool = True,
    invalid_threshold: float = DEFAULT_INVALID_THRESHOLD,
) -> int:
    """CLI body of ``proda predict``; string options are parsed here. Returns the exit status."""
    fmts = _check_formats(parse_list(formats))
    written = predict_paths(checkpoint, inputs, out, fmts, mode=mode, scales=parse_scales(scales), flip=flip,
                            input_size=input_size, batch_size=batch_size, device=device, progress=progress,
                            crop_size=crop_size, invalid_threshold=invalid_threshold)
    n_images = len(written) // files_per_image(fmts)
    where = ", ".join(str(Path(out) / f) for f in fmts) if "trainid" in fmts and "labelid" in fmts else str(out)
    print(f"wrote {len(written)} files ({', '.join(fmts)}) for {n_images} images to {where}", file=sys.stderr)
    return 0
