"""The dataset readers a run uses, built from its config: the labelled source and the target.

Every stage and command reads its data through these functions, so what a config key means
(``data.source`` / ``data.target`` and their roots, sizes, label caches) is decided here once. Both readers
are built through the table of :mod:`proda.data.registry` and read labels in the run's classes
(:func:`run_classes`: the source's, which the target must all have by name).
:func:`labelled_sampling_weights` gives a labelled reader's per-image weights for class-aware sampling
(``data.class_sampling``).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .labels import IGNORE_INDEX, LabelSpace
from .prepare import ClassStats, class_aware_weights, in_order, load_class_stats, stats_path
from .registry import build_dataset
from .registry import run_classes as _run_classes


def run_classes(cfg) -> LabelSpace:
    """The classes of the run ``cfg``: names, palette and ignore index that models, metrics and reports use."""
    d = cfg.data
    return _run_classes(d.source, d.source_root, d.target, d.target_root, d.num_classes)


def source_reader(cfg):
    """The labelled source training set of ``cfg.data``."""
    d = cfg.data
    classes = run_classes(cfg)
    with naming_the_key("data.source_root", d.source_root):
        return build_dataset(d.source, d.source_root, classes=classes, size=d.source_size,
                             list_file=d.source_list, label_cache=d.source_label_cache)


def target_reader(cfg, split: str | None = None, with_labels: bool = True, size="train"):
    """The target split ``split`` (default ``data.target_split``). ``size``: "train" (``data.target_size``),
    "val" (``data.val_size``), or an explicit (W, H) / None (native size). A folder dataset whose
    descriptor has no ``labels`` reads as unlabelled (``has_labels`` False) whatever ``with_labels`` says."""
    d = cfg.data
    chosen = d.target_size if size == "train" else d.val_size if size == "val" else size
    classes = run_classes(cfg)
    with naming_the_key("data.target_root", d.target_root):
        return build_dataset(
            d.target, d.target_root, split=split or d.target_split, classes=classes,
            size=chosen, with_labels=with_labels, label_cache=d.target_label_cache, subset=d.target_subset,
        )


def labelled_sampling_weights(cfg, reader, domain: str, progress: bool = True) -> np.ndarray | None:
    """Per-image sampling weights (float64 [N], summing to 1) of ``reader``, the labelled ``domain``
    ("source" or "target") of ``cfg``, for the stream that trains on its labels; None for
    ``data.class_sampling: images`` (every image equally often).

    ``classes``: :func:`~proda.data.prepare.class_aware_weights` over the run's classes with temperature
    ``data.class_sampling_temperature``. The per-image class pixel counts come from the statistics
    ``proda data prepare`` wrote (``class_stats_<split>.npz`` in the label cache the reader uses, i.e. the
    folder ``data.<domain>_label_cache`` names: ``auto`` = ``ROOT/proda_cache``) when they cover every sample
    and are not older than any label; otherwise they are counted here, reading each label once (labels only,
    no image is decoded). ``progress``: a progress bar while counting, and one line saying where the
    statistics came from.
    """
    if cfg.data.class_sampling == "images":
        return None
    if domain not in ("source", "target"):
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    if not reader.has_labels:
        raise DataError(f"{reader.root}: class-aware sampling (data.class_sampling=classes) needs labels")
    d = cfg.data
    dataset = d.source if domain == "source" else d.target
    root = d.source_root if domain == "source" else d.target_root
    split = None if domain == "source" else d.target_split
    names = [s.name for s in reader.samples]
    start = time.perf_counter()
    stats, why = _prepared_stats(reader, dataset, root, split, names)
    if stats is None:
        stats = count_label_classes(reader, dataset, progress=progress)
        seconds = time.perf_counter() - start
        origin = f"counted from the labels in {seconds:.1f} s ({why}; `proda data prepare` saves this)"
    else:
        origin = f"from {why}"
    weights = class_aware_weights(stats.select(names), run_classes(cfg), temperature=d.class_sampling_temperature)
    if progress:
        print(f"class-aware sampling of the {domain} {dataset} ({len(names)} images): class statistics {origin}")
    return weights


def _prepared_stats(reader, dataset: str, root, split: str | None,
                    names: list[str]) -> tuple[ClassStats | None, str]:
    """(the statistics of ``proda data prepare`` for ``names``, their file) when usable, else (None, why not)."""
    cache = getattr(reader, "label_cache", None)
    if cache is None:
        return None, "no label cache"
    try:
        stats = load_class_stats(dataset.lower(), root, split, cache_dir=cache.folder)
    except DataError:
        return None, f"no class statistics in {cache.folder}"
    path = stats_path(cache.folder, stats.split)
    known = set(stats.names)
    if any(n not in known for n in names):
        return None, f"{path} lacks some of the images"
    written = os.stat(path).st_mtime_ns
    if any(os.stat(s.label).st_mtime_ns > written for s in reader.samples):
        return None, f"a label is newer than {path}"
    return stats, str(path)


def count_label_classes(reader, dataset: str = "", progress: bool = True,
                        workers: int | None = None) -> ClassStats:
    """Per-image pixel counts of the classes of ``reader`` (its ``classes``: the run's) and of ignore, from
    its labels at native size (``read_label``: the label file only, or its cached copy), in reader order."""
    k = reader.classes.num_classes

    def count(i: int) -> np.ndarray:
        return np.bincount(reader.read_label(i).ravel(), minlength=256)

    results = in_order(count, len(reader), workers or min(8, os.cpu_count() or 1))
    try:
        hists = list(tqdm(results, total=len(reader), desc=f"class statistics of {dataset or reader.dataset_name}",
                          unit="img", disable=not progress))
    finally:
        results.close()  # on Ctrl-C: cancel the queued labels now, not when the generator is collected
    table = np.stack(hists).astype(np.int64)
    return ClassStats(dataset or reader.dataset_name, "", [s.name for s in reader.samples], table[:, :k],
                      table[:, IGNORE_INDEX], reader.classes.names)


@contextmanager
def naming_the_key(key: str, root: str):
    """A missing dataset root says which config key points there."""
    try:
        yield
    except DataError as exc:
        if not Path(root).is_dir():
            raise DataError(f"{exc} (set {key}=DIR)") from None
        raise
