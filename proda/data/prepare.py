"""``proda data prepare``: label caches and per-image class statistics of a dataset.

Decoding an original label costs more than it should: GTA5 palette PNGs, SYNTHIA's 16-bit three-channel
files and Cityscapes label ids all go through a reader and a lookup table on every read. ``prepare`` decodes
each label once, exactly as the readers of :mod:`proda.data.datasets` do (unknown raw values are errors), and
writes:

* **a label cache**: one 8-bit grey PNG per label holding the ids of the dataset's own classes (the 19
  Cityscapes trainIds for GTA5, SYNTHIA and Cityscapes; a folder dataset's classes; 255 ignore), at
  ``CACHE/<the label's path relative to the dataset root>`` (``proda_cache/labels/00001.png`` for
  ``labels/00001.png``). Readers map those ids onto their run's classes by name (19 -> 16/13 for SYNTHIA's
  protocols), so one cache serves every protocol (:mod:`proda.data.label_cache` reads it). Each PNG carries
  its own record (its per-class pixel counts, a PNG text chunk), so an image is done when its file exists;
* **class statistics**: ``CACHE/class_stats_<split>.npz`` (split ``all`` for datasets used whole): sample
  names, pixel count of each class and of ignore per image, written last, from the records, so rerunning
  ``prepare`` after an interruption rebuilds it without decoding anything again.
  :func:`class_aware_weights` turns it into per-image sampling weights for class-aware sampling.

``CACHE`` is ``ROOT/proda_cache`` unless ``--out`` says otherwise. Readers built by
:func:`~proda.data.registry.build_dataset` use ``ROOT/proda_cache`` automatically when it exists (config keys
``data.source_label_cache`` / ``data.target_label_cache``: ``auto``, a folder, or null for off). A cached
label is used only when it is at least as new as its original (the ``make`` rule): an edited or re-downloaded
label is read from the original again, never shadowed by a stale cache; a missing one (an interrupted
``prepare``) likewise. Every file is written atomically, so a killed ``prepare`` leaves whole files only and
the next run skips what is done (``--verify`` also decodes each cached file and checks it against its record).
"""
from __future__ import annotations

import json
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..io import atomic_write, write_bytes, write_json
from . import labels as L
from .label_cache import (  # noqa: F401  (CACHE_DIRNAME, read_cached_label: part of this module's API)
    CACHE_DIRNAME, FORMAT, MANIFEST, LabelCache, cached_value_lut, default_cache_dir, read_cached_label,
)
from .labels import LabelSpace
from .registry import build_dataset, dataset_class, label_space

_RECORD_KEY = "proda"  # PNG text chunk of each cached label
_PRINT_AT_MOST = 50


def stats_path(cache_dir: str | os.PathLike, split: str | None) -> Path:
    """``CACHE/class_stats_<split>.npz``; datasets used whole use ``all``."""
    return Path(cache_dir) / f"class_stats_{split or 'all'}.npz"


def _encode_cached(train_ids: np.ndarray, record: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(_RECORD_KEY, json.dumps(record, separators=(",", ":")))
    buf = BytesIO()
    # zlib level 1: label maps still shrink ~70x, and decode ~2x faster than at the default level 6
    Image.fromarray(np.ascontiguousarray(train_ids, dtype=np.uint8)).save(buf, format="PNG", pnginfo=info,
                                                                          compress_level=1)
    return buf.getvalue()


def _read_record(path: Path, num_native: int) -> dict[str, Any] | None:
    """The record of a cached PNG (its header only, no pixels), or None if it has none or cannot be read."""
    try:
        with Image.open(path) as image:
            text = image.info.get(_RECORD_KEY)
            size = image.size
        record = json.loads(text) if text else None
    except (OSError, ValueError, SyntaxError, zlib.error):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    counts, ignore = record.get("counts"), record.get("ignore")
    if not (isinstance(counts, list) and len(counts) == num_native and isinstance(ignore, int)):
        return None
    if sum(counts) + ignore != size[0] * size[1]:
        return None
    return record


def _record(ids: np.ndarray, num_native: int) -> dict[str, Any]:
    hist = np.bincount(ids.ravel(), minlength=256)
    return {"format": FORMAT, "counts": [int(v) for v in hist[:num_native]], "ignore": int(hist[L.IGNORE_INDEX])}


# ----------------------------------------------------------------------------------------------------------
# Class statistics


@dataclass
class ClassStats:
    """Per-image pixel counts of the dataset's own classes (``counts`` [N, K], K = len(``classes``), the 19
    Cityscapes trainIds for GTA5, SYNTHIA and Cityscapes) and of ignore (``ignore`` [N]).

    ``names`` are the readers' sample names (``00001``, ``aachen_000000_000019_leftImg8bit``), in reader order.
    """

    dataset: str
    split: str
    names: list[str]
    counts: np.ndarray
    ignore: np.ndarray
    classes: tuple[str, ...] = L.CLASSES_19

    def __len__(self) -> int:
        return len(self.names)

    def counts_for(self, classes: LabelSpace | int) -> np.ndarray:
        """int64 [N, C]: pixels of each class of ``classes`` (a LabelSpace, or a Cityscapes protocol's class
        count 19/16/13), matched by name; a protocol with fewer classes leaves the others out."""
        names = (classes if isinstance(classes, LabelSpace) else LabelSpace.cityscapes(classes)).names
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise DataError(f"class statistics of {self.dataset} have no class {', '.join(unknown)}")
        return self.counts[:, [self.classes.index(n) for n in names]]

    def ignore_for(self, classes: LabelSpace | int) -> np.ndarray:
        """int64 [N]: ignored pixels under ``classes`` (ignore plus the classes it leaves out)."""
        return self.ignore + self.counts.sum(1) - self.counts_for(classes).sum(1)

    def select(self, names: Sequence[str]) -> "ClassStats":
        """The statistics of ``names`` in that order (e.g. a reader's samples: ``[s.name for s in reader.samples]``)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(f"no class statistics for {len(missing)} sample(s), e.g. {missing[0]!r}; "
                            "rerun `proda data prepare`")
        rows = [index[n] for n in names]
        return ClassStats(self.dataset, self.split, list(names), self.counts[rows], self.ignore[rows], self.classes)

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_write(path, "wb") as f:
            np.savez(f, format=np.array(FORMAT), dataset=np.array(self.dataset), split=np.array(self.split),
                     names=np.array(self.names, dtype=str), counts=self.counts.astype(np.int64),
                     ignore=self.ignore.astype(np.int64), classes=np.array(self.classes, dtype=str))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClassStats":
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != FORMAT:
                    raise DataError(f"{path}: not a {FORMAT} statistics file")
                names = [str(n) for n in z["names"]]
                classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else L.CLASSES_19
                stats = cls(str(z["dataset"]), str(z["split"]), names, z["counts"].astype(np.int64),
                            z["ignore"].astype(np.int64), classes)
        except FileNotFoundError:
            raise DataError(f"{path}: no class statistics; run `proda data prepare`") from None
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: unreadable class statistics ({exc}); rerun `proda data prepare`") from None
        if stats.counts.shape != (len(names), len(stats.classes)) or stats.ignore.shape != (len(names),):
            raise DataError(f"{path}: inconsistent class statistics; rerun `proda data prepare`")
        return stats


def load_class_stats(dataset: str, root: str | os.PathLike, split: str | None = None,
                     cache_dir: str | os.PathLike | None = None) -> ClassStats:
    """The statistics ``proda data prepare`` wrote for a split of a dataset (default: its first split)."""
    return ClassStats.load(stats_path(cache_dir or default_cache_dir(root), _split_tag(dataset, root, split)))


def _split_tag(dataset: str, root: str | os.PathLike, split: str | None) -> str:
    """The split a cache's statistics are filed under: the split asked for (default the first), or ``all``
    for a dataset used whole."""
    splits = dataset_class(dataset).splits(root)
    return "all" if splits == ("all",) else (split or splits[0])


def class_presence(stats: ClassStats, num_classes: LabelSpace | int = 19, min_pixels: int = 1) -> np.ndarray:
    """bool [N, C]: class c is present in image i when it has at least ``min_pixels`` pixels there."""
    return stats.counts_for(num_classes) >= max(int(min_pixels), 1)


def class_aware_weights(stats: ClassStats, num_classes: LabelSpace | int = 19, min_pixels: int = 1,
                        temperature: float | None = None) -> np.ndarray:
    """float64 [N] per-image sampling probabilities (summing to 1) for class-aware sampling.

    Sampling an image with these weights is the same as drawing a class c, then an image uniformly among
    those where c is present (``min_pixels``): weight_i = sum_c p_c [c present in i] / n_c. ``p_c`` is
    uniform over the classes present somewhere (``temperature=None``), or favours rare classes as DAFormer's
    rare-class sampling, ``p_c ~ exp((1 - f_c) / temperature)`` with f_c the class's share of labelled pixels
    (DAFormer uses 0.01). Images without any present class get weight 0 (unless no image has any class:
    then uniform). Use with ``torch.utils.data.WeightedRandomSampler`` or ``rng.choice(N, p=weights)``.
    """
    presence = class_presence(stats, num_classes, min_pixels).astype(np.float64)
    n_images = presence.sum(0)
    seen = n_images > 0
    if not seen.any():
        return np.full(len(stats), 1.0 / max(len(stats), 1))
    if temperature is None:
        p = seen.astype(np.float64)
    else:
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        pixels = stats.counts_for(num_classes).sum(0).astype(np.float64)
        freq = pixels / max(pixels.sum(), 1.0)
        logits = np.where(seen, (1.0 - freq) / temperature, -np.inf)
        p = np.exp(logits - logits[seen].max())
    p = p / p.sum()
    weights = presence @ (p / np.maximum(n_images, 1))
    return weights / weights.sum()


# ----------------------------------------------------------------------------------------------------------
# Writing the cache


@dataclass
class PrepareReport:
    dataset: str
    root: str
    cache_dir: str
    split: str
    num_samples: int = 0
    written: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    stats: ClassStats | None = None
    stats_file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _write_manifest(cache_dir: Path, dataset: str, root: Path, native: LabelSpace) -> None:
    manifest = cache_dir / MANIFEST
    meta = {
        "format": FORMAT,
        "dataset": dataset,
        "values": "ids of the classes below, 255 = ignore (readers map them onto their run's classes by name)",
        "classes": list(native.names),
        "layout": "each label at the path of its original relative to the dataset root",
        "dataset_root": str(root.resolve()),
    }
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("format") == FORMAT and old.get("dataset") not in (None, dataset):
            raise DataError(f"{cache_dir}: holds a label cache of {old.get('dataset')!r}, not {dataset!r}; "
                            "use another --out")
        if old == meta:
            return
    write_json(manifest, meta)


def _prepare_one(reader, cache: LabelCache, i: int, verify: bool) -> tuple[dict[str, Any] | None, bool, list[str]]:
    """(record or None, written?, problems) of sample ``i``: skipped when a fresh cached file with a valid
    record exists (and, with ``verify``, decodes to exactly that record)."""
    sample = reader.samples[i]
    dst = cache.path_for(sample.label)
    k = reader.native.num_classes
    if cache.is_fresh(sample.label):
        record = _read_record(dst, k)
        if record is not None and not verify:
            return record, False, []
        if record is not None:
            try:
                decoded = _record(read_cached_label(dst, cached_value_lut(k)), k)
            except DataError:
                decoded = None
            if decoded == record:
                return record, False, []
    try:
        train_ids = reader.read_native_label(i)
        with Image.open(sample.image) as image:  # header only: the size, cheaply
            width, height = image.size
    except DataError as exc:
        return None, False, [str(exc)]
    except (OSError, SyntaxError, ValueError) as exc:
        return None, False, [f"{sample.image}: not a readable image ({exc})"]
    if train_ids.shape != (height, width):
        return None, False, [f"size mismatch: image {sample.image} is {width}x{height}, "
                             f"label {sample.label} is {train_ids.shape[1]}x{train_ids.shape[0]}"]
    record = _record(train_ids, k)
    write_bytes(dst, _encode_cached(train_ids, record))
    return record, True, []


def in_order(fn, n: int, workers: int) -> Iterator[Any]:
    """``fn(0), ..., fn(n-1)`` computed by ``workers`` threads (PNG coding releases the GIL), yielded in order.

    At most ``2 * workers`` calls run ahead, so an interrupt (Ctrl-C, an error) stops the work within a few
    images: queued calls are cancelled, running ones finish their (atomic) file.
    """
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque[Future] = deque()
    try:
        submitted = 0
        for _ in range(n):
            while submitted < n and len(pending) < 2 * workers:
                pending.append(pool.submit(fn, submitted))
                submitted += 1
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def prepare_dataset(
    dataset: str,
    root: str | os.PathLike,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    verify: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> PrepareReport:
    """Write (or complete) the trainId cache and class statistics of a dataset; see the module docstring.

    Bad files (unreadable, unknown label values, image/label size mismatch, unpaired) are reported, naming
    the file, and left out of the cache and the statistics; the rest is still written.
    """
    key = dataset.lower()
    split_tag = _split_tag(key, root, split)
    reader = build_dataset(key, root, split=split_tag, strict=False, label_cache=None)
    if not reader.has_labels:
        raise DataError(f"{root}: this {key} split has no labels to prepare")
    cache_dir = Path(out) if out is not None else default_cache_dir(root)
    report = PrepareReport(key, str(root), str(cache_dir), split_tag, num_samples=len(reader),
                           problems=list(reader.layout_problems))
    _write_manifest(cache_dir, key, Path(root), reader.native)
    cache = LabelCache(cache_dir, reader.root, key, reader.native.num_classes)

    records: list[dict[str, Any] | None] = [None] * len(reader)
    results = in_order(lambda i: _prepare_one(reader, cache, i, verify), len(reader),
                        workers or min(8, os.cpu_count() or 1))
    try:
        for i, (record, written, problems) in enumerate(tqdm(
            results, total=len(reader), desc=f"preparing {key}", unit="img", disable=not progress
        )):
            records[i] = record
            report.problems.extend(problems)
            if record is not None:
                report.written += int(written)
                report.skipped += int(not written)
    finally:
        results.close()  # on Ctrl-C: cancel the queued images now, not when the generator is collected

    done = [(s.name, r) for s, r in zip(reader.samples, records) if r is not None]
    counts = np.array([r["counts"] for _, r in done], dtype=np.int64).reshape(-1, reader.native.num_classes)
    ignore = np.array([r["ignore"] for _, r in done], dtype=np.int64)
    report.stats = ClassStats(key, split_tag, [n for n, _ in done], counts, ignore, reader.native.names)
    report.stats_file = str(report.stats.save(stats_path(cache_dir, split_tag)))  # last: every record is on disk
    return report


def run_prepare_command(
    dataset: str,
    root: str | os.PathLike,
    split: str | None,
    num_classes: int | None,
    out: str | os.PathLike | None,
    verify: bool = False,
    progress: bool = True,
) -> int:
    """Body of ``proda data prepare``: write the cache, print the class table and problems; exit 1 on problems."""
    from .check import CheckReport

    report = prepare_dataset(dataset, root, split=split, out=out, verify=verify, progress=progress)
    n = label_space(dataset, root, num_classes)
    stats = report.stats
    assert stats is not None
    table = CheckReport(dataset=report.dataset, root=report.root, classes=n, num_samples=report.num_samples,
                        num_checked=len(stats), problems=report.problems)
    table.class_pixels = {c: int(v) for c, v in enumerate(stats.counts_for(n).sum(0))}
    table.class_pixels["ignore"] = int(stats.ignore_for(n).sum())
    print(table.format_table())
    print(f"\n{report.cache_dir}: {report.written} label(s) written, {report.skipped} already done; "
          f"statistics of {len(stats)} image(s) in {report.stats_file}")
    if report.problems:
        print(f"\n{len(report.problems)} problem(s) (left out of the cache and the statistics):")
        for problem in report.problems[:_PRINT_AT_MOST]:
            print(f"  {problem}")
        if len(report.problems) > _PRINT_AT_MOST:
            print(f"  ... and {len(report.problems) - _PRINT_AT_MOST} more")
    return 0 if report.ok else 1
