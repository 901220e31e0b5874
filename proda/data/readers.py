"""The dataset readers a run uses, built from its config: the labelled source and the target.

Every stage and command reads its data through these two functions, so what a config key means
(``data.source``, ``data.source_root``, ``data.target_root``, sizes, label caches) is decided here once.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import DataError
from .datasets import build_dataset


def source_reader(cfg):
    """The labelled source training set of ``cfg.data``."""
    d = cfg.data
    with naming_the_key("data.source_root", d.source_root):
        return build_dataset(d.source, d.source_root, num_classes=d.num_classes, size=d.source_size,
                             list_file=d.source_list, label_cache=d.source_label_cache)


def target_reader(cfg, split: str | None = None, with_labels: bool = True, size="train"):
    """The target split ``split`` (default ``data.target_split``). ``size``: "train" (``data.target_size``),
    "val" (``data.val_size``), or an explicit (W, H) / None (native size)."""
    d = cfg.data
    chosen = d.target_size if size == "train" else d.val_size if size == "val" else size
    with naming_the_key("data.target_root", d.target_root):
        return build_dataset(
            "cityscapes", d.target_root, split=split or d.target_split, num_classes=d.num_classes,
            size=chosen, with_labels=with_labels, label_cache=d.target_label_cache,
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
