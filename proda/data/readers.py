"""The dataset readers a run uses, built from its config: the labelled source and the target.

Every stage and command reads its data through these functions, so what a config key means
(``data.source`` / ``data.target`` and their roots, sizes, label caches) is decided here once. Both readers
are built through the table of :mod:`proda.data.registry` and read labels in the run's classes
(:func:`run_classes`: the source's, which the target must all have by name).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import DataError
from .labels import LabelSpace
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


@contextmanager
def naming_the_key(key: str, root: str):
    """A missing dataset root says which config key points there."""
    try:
        yield
    except DataError as exc:
        if not Path(root).is_dir():
            raise DataError(f"{exc} (set {key}=DIR)") from None
        raise
