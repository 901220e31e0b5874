"""``proda data check``: validate a dataset layout and report every problem at once.

Training reads each file lazily, so a broken file would otherwise stop a run hours in. The check decodes
every sample (or ``max_samples`` evenly spaced ones, the quick pre-flight at training start-up) the same way
training does, through :class:`~proda.data.datasets.SegmentationDataset`, and collects all problems instead
of stopping at the first: missing folders, unpaired files, unreadable or truncated PNGs, wrong label mode or
bit depth, image/label size mismatches and unknown label values. It also returns the per-class pixel
histogram, which shows at a glance whether labels were mapped into the intended protocol.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..io import read_rgb, write_json
from . import labels as L
from .datasets import SegmentationDataset, check_same_size
from .labels import LabelSpace
from .registry import build_dataset, label_space

# Problems printed by the CLI before "... and N more"; the JSON file always holds all of them.
_PRINT_AT_MOST = 50


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`.

    ``class_pixels`` maps every compact id 0..C-1 of ``classes`` (and ``"ignore"``) to its pixel count over
    the checked samples without problems (what training would read); ``num_samples`` counts the paired
    samples found, ``num_checked`` those decoded. ``classes`` is None when the dataset's classes could not
    be read (a broken ``dataset.yaml``: then ``problems`` says why).
    """

    dataset: str
    root: str
    classes: LabelSpace | None
    num_samples: int = 0
    num_checked: int = 0
    class_pixels: dict[int | str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes if self.classes is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "class_pixels": {str(k): int(v) for k, v in self.class_pixels.items()},
            "problems": list(self.problems),
        }

    def format_table(self) -> str:
        names = self.classes.names if self.classes is not None else ()
        total = sum(self.class_pixels.values())
        checked = "" if self.num_checked == self.num_samples else f", {self.num_checked} checked"
        lines = [
            f"{self.dataset} at {self.root} ({self.num_classes} classes): "
            f"{self.num_samples} samples{checked}, {len(self.problems)} problem(s)",
            f"{'id':>6}  {'class':<15} {'pixels':>14} {'percent':>8}",
        ]
        for key, count in self.class_pixels.items():
            label_id, name = (key, names[key]) if isinstance(key, int) else (L.IGNORE_INDEX, "(ignore)")
            percent = 100.0 * count / total if total else 0.0
            lines.append(f"{label_id:>6}  {name:<15} {count:>14,d} {percent:>7.2f}%")
        return "\n".join(lines)


def _check_sample(dataset: SegmentationDataset, i: int) -> tuple[list[str], np.ndarray | None]:
    """Problems of one sample (image and label checked independently) and, if it has none, its label histogram."""
    problems: list[str] = []
    image = label = None
    try:
        image = read_rgb(dataset.image_path(i))
    except DataError as exc:
        problems.append(str(exc))
    if dataset.label_path(i) is not None:
        try:
            label = dataset.read_label(i)
        except DataError as exc:
            problems.append(str(exc))
    if image is not None and label is not None:
        try:
            check_same_size(image, label, dataset.samples[i])
        except DataError as exc:
            problems.append(str(exc))
    hist = None if label is None or problems else np.bincount(label.ravel(), minlength=256)
    return problems, hist


def _evenly_spaced(n: int, max_samples: int | None) -> list[int]:
    if max_samples is None or max_samples >= n:
        return list(range(n))
    if max_samples <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, max_samples).round().astype(int).tolist()))


def check_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    num_classes: int | None = None,
    max_samples: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check a dataset layout and its files; never raises :class:`DataError`, it reports it.

    ``num_classes`` picks one of the dataset's protocols (None: its usual one). ``workers`` threads decode
    in parallel (PNG decoding releases the GIL); default: up to 8 CPU cores.
    """
    key = name.lower()
    report = CheckReport(dataset=name, root=str(root), classes=None)
    try:
        report.classes = classes = label_space(key, root, num_classes)
        # the originals, never the label cache of `proda data prepare`
        dataset = build_dataset(key, root, split=split, classes=classes, strict=False, label_cache=None)
    except DataError as exc:  # nothing to read: missing root, folder or descriptor, no samples
        report.problems.append(str(exc))
        return report
    report.problems.extend(dataset.layout_problems)
    report.num_samples = len(dataset)
    indices = _evenly_spaced(len(dataset), max_samples)
    hist = np.zeros(256, dtype=np.int64)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda i: _check_sample(dataset, i), indices)
        for problems, sample_hist in tqdm(
            results, total=len(indices), desc=f"checking {name}", unit="img", disable=not progress
        ):
            report.problems.extend(problems)
            if sample_hist is not None:
                hist += sample_hist
    report.num_checked = len(indices)
    report.class_pixels = {c: int(hist[c]) for c in range(classes.num_classes)}
    report.class_pixels["ignore"] = int(hist[L.IGNORE_INDEX])
    return report


def run_check_command(
    dataset: str,
    root: str | os.PathLike,
    split: str | None,
    num_classes: int | None,
    json_path: str | os.PathLike | None,
) -> int:
    """Body of ``proda data check``: print the table and the problems, write the JSON; exit 1 on problems.

    Bad arguments (unknown dataset, a split of a split-less dataset) raise ConfigError for the CLI to print.
    """
    report = check_dataset(dataset, root, split=split, num_classes=num_classes)
    print(report.format_table())
    if report.problems:
        print(f"\n{len(report.problems)} problem(s):")
        for problem in report.problems[:_PRINT_AT_MOST]:
            print(f"  {problem}")
        if len(report.problems) > _PRINT_AT_MOST:
            print(f"  ... and {len(report.problems) - _PRINT_AT_MOST} more" + (" (see the JSON file)" if json_path else ""))
    if json_path is not None:
        write_json(Path(json_path), report.to_json())
    return 0 if report.ok else 1


def preflight(dataset: SegmentationDataset, max_samples: int, what: str, cropper: Any = None) -> None:
    """The quick start-up check of a reader: decode ``max_samples`` evenly spaced samples, raise on problems.

    A run on a broken dataset then fails in seconds, naming the files, instead of at iteration 30,000.
    With ``cropper`` (the stream's :class:`~proda.data.transforms.WeakCropper`), a crop larger than the
    smallest rescaled sampled image is a ConfigError too: the config check catches it only when the image
    size is configured (``data.source_size``), and the weak view would otherwise upscale every image.
    """
    problems: list[str] = []
    indices = _evenly_spaced(len(dataset), max_samples)
    for i in indices:
        problems.extend(_check_sample(dataset, i)[0])
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(f"{what}: {len(problems)} problem(s) in {len(indices)} sampled files "
                        f"(run `proda data check` for all):\n  {shown}")
    if cropper is not None:
        for i in indices:
            _check_crop_fits(dataset, i, cropper, what)


def _check_crop_fits(dataset: SegmentationDataset, i: int, cropper: Any, what: str) -> None:
    """ConfigError if ``cropper``'s crop does not fit sample ``i`` at the smallest random rescale."""
    from PIL import Image

    if dataset.size is not None:
        w, h = dataset.size
    else:
        with Image.open(dataset.image_path(i)) as image:  # the header only; the file decoded above
            w, h = image.size
    crop_w, crop_h = cropper.crop_size
    low = cropper.scale_range[0]
    min_w = int(low * (cropper.resize_width if cropper.resize_width is not None else w))
    min_h = int(min_w * h / w)
    if crop_w > min_w or crop_h > min_h:
        size = f"resized to {w}x{h}" if dataset.size is not None else f"{w}x{h}"
        raise ConfigError(
            f"data.crop_size: {[crop_w, crop_h]} is larger than the smallest rescaled image of the {what} "
            f"({min_w}x{min_h} at scale {low}; {dataset.image_path(i)} is {size}); "
            f"lower data.crop_size or raise data.scale_range / data.resize_width"
        )
