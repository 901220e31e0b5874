"""The table of datasets: one name -> one dataset class, and everything derived from it.

:data:`DATASETS` is the only list of datasets in proda. The config's ``data.source`` / ``data.target``,
the CLI's ``--dataset`` choices, the class count of a run (``data.num_classes``), its class names and
colours all come from here. Adding a dataset is one class and one line in :data:`DATASETS`.

Contract of a dataset class (a :class:`~proda.data.datasets.SegmentationDataset` subclass):

* ``dataset_name``: its name in messages; ``LAYOUT``: the files a sample is made of;
* ``label_space(root=None, num_classes=None) -> LabelSpace`` (classmethod): the classes its labels are
  read in, names in id order, palette, ignore 255. ``num_classes`` selects a protocol the dataset offers
  (19/16/13 for datasets of Cityscapes classes) and is a ConfigError otherwise; None is the usual one.
  A dataset that describes itself on disk (``folder``) reads ``root`` for it; the others ignore ``root``;
* ``splits(root=None) -> tuple[str, ...]`` (classmethod): its split names; ``("all",)`` for a dataset that
  is used whole (``"train"`` also names the whole of it);
* ``open(root, *, split, classes, size, with_labels, list_file, strict)`` (classmethod): the reader of
  ``split`` (None: the first split) whose labels are ids of ``classes`` (a LabelSpace); a class of the dataset
  missing from ``classes`` reads as ignore. Arguments the layout does not support are a ConfigError;
  missing files a DataError naming them. A dataset with ``CONDITIONS`` (ACDC, Dark Zurich) also takes
  ``subset``, the part of the split to read (``data.target_subset``);
* the reader: ``samples`` (name, image, label paths), ``__getitem__`` -> {"image", "label", "name"},
  ``read_label(i)``, ``read_native_label(i)`` (its own classes, what ``proda data prepare`` caches),
  ``classes`` / ``native`` (LabelSpace), ``raw_value_of()`` (class id -> raw label value, to write labels
  back in the dataset's own values), ``layout_problems``, ``has_labels``.

Two datasets work together (a source and a target) when the target has every class of the source by
NAME (:func:`run_classes`); the target's other classes read as ignore, so it is scored on the shared ones.
"""
from __future__ import annotations

import os

from ..errors import ConfigError
from .acdc import ACDCDataset
from .dark_zurich import DarkZurichDataset
from .datasets import CityscapesDataset, GTA5Dataset, SegmentationDataset, SynthiaDataset
from .folder import FolderDataset
from .label_cache import LabelCache
from .labels import LabelSpace

DATASETS: dict[str, type[SegmentationDataset]] = {
    "gta5": GTA5Dataset,
    "synthia": SynthiaDataset,
    "cityscapes": CityscapesDataset,
    "folder": FolderDataset,
    "acdc": ACDCDataset,
    "dark_zurich": DarkZurichDataset,
}


def dataset_names() -> tuple[str, ...]:
    """The names the config and the CLI accept, in table order."""
    return tuple(DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}") from None


def label_space(name: str, root: str | os.PathLike | None = None, num_classes: int | None = None) -> LabelSpace:
    """The classes dataset ``name`` (at ``root``, for one that describes itself) is read in."""
    return dataset_class(name).label_space(root, num_classes)


def run_classes(source: str, source_root: str | os.PathLike | None, target: str,
                target_root: str | os.PathLike | None, num_classes: int | None = None) -> LabelSpace:
    """The classes of a run adapting ``source`` to ``target``: the source's (``num_classes`` picks its
    protocol), which the target must all have by name. A mismatch is a ConfigError showing both lists.
    With no source root (a run that reads the target only, e.g. the oracle) they are the target's."""
    if not source_root:
        return label_space(target, target_root, num_classes)
    classes = label_space(source, source_root, num_classes)
    target_classes = label_space(target, target_root)
    missing = classes.missing_from(target_classes)
    if missing:
        raise ConfigError(
            f"the source and target class lists differ: target {target} lacks {', '.join(missing)}\n"
            f"  source {source} ({classes.num_classes}): {', '.join(classes.names)}\n"
            f"  target {target} ({target_classes.num_classes}): {', '.join(target_classes.names)}"
        )
    return classes


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    num_classes: int | None = None,
    size: tuple[int, int] | None = None,
    list_file: str | os.PathLike | None = None,
    with_labels: bool = True,
    *,
    classes: LabelSpace | None = None,
    strict: bool = True,
    label_cache: str | os.PathLike | None = "auto",
    subset: str | None = None,
) -> SegmentationDataset:
    """The reader of dataset ``name`` (see :data:`DATASETS`) at ``root``.

    Labels are ids of ``classes`` (a run's classes, :func:`run_classes`) or, without it, of the dataset's
    protocol ``num_classes`` (None: its usual one: 19, SYNTHIA 16, a folder its own). ``split``: None is the
    dataset's first split. ``list_file`` (GTA5) selects a subset, in file order.

    ``label_cache``: the cache of ``proda data prepare`` (:mod:`proda.data.label_cache`): ``"auto"`` uses
    ``root/proda_cache`` if it exists, a folder uses that one (an error if it holds no cache of this dataset),
    None reads the original labels only. Cached labels are identical to decoded originals.
    """
    cls = dataset_class(name)
    if classes is None:
        classes = cls.label_space(root, num_classes)
    elif num_classes is not None and num_classes != classes.num_classes:
        raise ConfigError(f"num_classes={num_classes} contradicts the {classes.num_classes} classes given")
    # subset: the part of a split a dataset with conditions offers (ACDC's weather, Dark Zurich's time of day)
    if subset is not None and not getattr(cls, "CONDITIONS", ()):
        raise ConfigError(f"{name} has no subsets to select (conditions or times of day), got subset {subset!r}")
    dataset = cls.open(root, split=split, classes=classes, size=size, with_labels=with_labels,
                       list_file=list_file, strict=strict, **({} if subset is None else {"subset": subset}))
    if label_cache is not None and dataset.has_labels:
        auto = str(label_cache) == "auto"
        dataset.label_cache = LabelCache.open(None if auto else label_cache, dataset.root, name.lower(),
                                              required=not auto)
    return dataset
