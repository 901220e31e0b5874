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

FORMATS = ("color", "overlay", "trainid", "labelid")
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
    """{format: output file} of one image; each format in its own subfolder when both id formats are asked."""
    split = "trainid" in formats and "labelid" in formats
    return {fmt: (out_dir / fmt if split else out_dir) / item.rel.parent / output_name(item.rel.stem, fmt)
            for fmt in formats}


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
) -> list[Path]:
    """Segment every input image; returns the files written (per image, in ``formats`` order).

    Sizes are (W, H). ``input_size``/``crop_size`` default as :func:`proda.engine.inference.resolve_sizes`
    says: whole-image inference resizes to the checkpoint's input size, sliding keeps the image's own
    resolution with the checkpoint's input size as window. Maps are always written at the image's size.
    Consecutive images of equal size are batched (up to ``batch_size``).
    """
    from ..models.weights import load_trained_model
    from .device import resolve_device

    formats = _check_formats(formats)
    check_mode_and_scales(mode, scales)
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
    to_label_id = labels.compact_to_cityscapes_id(num_classes)

    written: list[Path] = []
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
    for batch in _batches(items, batch_size):
        images = [image for _, image in batch]
        h, w = images[0].shape[:2]
        x = torch.stack([image_to_tensor(resize_image(im, size)) for im in images]).to(dev)
        prob = infer_probabilities(model, x, (h, w), mean, std, mode=mode, scales=scales, flip=flip, crop_size=crop)
        preds = prob.argmax(1).to(torch.uint8).cpu().numpy()
        for (item, image), pred in zip(batch, preds):
            for fmt, path in output_paths(item, out, formats).items():
                io.write_png(path, _render(fmt, pred, image, num_classes, to_label_id))
                written.append(path)
        bar.update(len(batch))
    bar.close()
    return written


def _render(fmt: str, pred: np.ndarray, image: np.ndarray, num_classes: int, to_label_id: np.ndarray) -> np.ndarray:
    """The array one output format stores for a map of compact ids."""
    if fmt == "trainid":
        return pred
    if fmt == "labelid":
        return to_label_id[pred]
    color = labels.colorize(pred, num_classes)
    if fmt == "color":
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
    return chosen


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
) -> int:
    """CLI body of ``proda predict``; string options are parsed here. Returns the exit status."""
    fmts = _check_formats(parse_list(formats))
    written = predict_paths(checkpoint, inputs, out, fmts, mode=mode, scales=parse_scales(scales), flip=flip,
                            input_size=input_size, batch_size=batch_size, device=device, progress=progress,
                            crop_size=crop_size)
    n_images = len(written) // len(fmts)
    where = ", ".join(str(Path(out) / f) for f in fmts) if "trainid" in fmts and "labelid" in fmts else str(out)
    print(f"wrote {len(written)} files ({', '.join(fmts)}) for {n_images} images to {where}", file=sys.stderr)
    return 0
