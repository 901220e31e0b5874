"""Reader for Dark Zurich (Sakaridis et al., ICCV 2019) in its official layout.

Dark Zurich holds driving sequences recorded in Zurich at three times of day; only nighttime images of
the val (and the withheld test) split are annotated, with the 19 Cityscapes classes and label ids::

    rgb_anon/train/<time>/<sequence>/<sequence>_frame_<NNNNNN>_rgb_anon.png      time: day, twilight, night
    rgb_anon/val/night/<sequence>/<sequence>_frame_<NNNNNN>_rgb_anon.png
    gt/val/night/<sequence>/<sequence>_frame_<NNNNNN>_gt_labelIds.png           (or _gt_labelTrainIds.png)
    rgb_anon/test/night/<sequence>/...                                           (no public ground truth)

The training split is unlabelled (a target domain); ``time_of_day`` selects day / twilight / night or
several of them, and each sample records it (``item["condition"]``). Daytime reference images
(``<split>_ref`` folders) are never samples. The rest (pairing, label formats, errors naming the file)
is the layout ACDC shares: :class:`proda.data.acdc.ConditionDataset`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .acdc import ConditionDataset, SampleFolder, parse_selection
from .datasets import require_dir
from .labels import LabelSpace


class DarkZurichDataset(ConditionDataset):
    """Dark Zurich: ``rgb_anon/<split>/<time>/<sequence>/*_rgb_anon.png`` + ``gt/<split>/night/...`` (val).

    ``time_of_day``: "all", one of day / twilight / night, or several; default "night" (the adaptation
    target of the benchmark). The val and test splits exist at night only. Only val has labels: the train
    and test splits are always read without them.
    """

    dataset_name = "Dark Zurich"
    LAYOUT = "rgb_anon/{split}/<time of day>/<sequence>/*_rgb_anon.png (with gt/val/night/<sequence>/*_gt_labelIds.png)"
    CONDITIONS = ("day", "twilight", "night")
    SPLITS = ("train", "val", "test")
    UNLABELLED_SPLITS = ("train", "test")

    @classmethod
    def open(cls, root, *, split, classes, size, with_labels, list_file, strict, subset=None):
        """The registry's constructor; ``subset`` is the time-of-day selection (``data.target_subset``)."""
        cls.refuse_list_file(list_file)
        return cls(root, split or "train", classes, size, with_labels, time_of_day=subset or "night", strict=strict)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: LabelSpace | int | None = None,
        size: tuple[int, int] | None = None,
        with_labels: bool = True,
        *,
        time_of_day: str | Sequence[str] | None = "night",
        label_format: str = "auto",
        strict: bool = True,
    ) -> None:
        root = require_dir(Path(root), "Dark Zurich root")
        labelled = self.reads_labels(split, with_labels)
        if split != "train" and time_of_day in (None, "all"):
            time_of_day = "night"  # all that val and test hold
        chosen = parse_selection(time_of_day, self.CONDITIONS, "Dark Zurich time of day")
        if split != "train" and chosen != ("night",):
            raise ConfigError(f"Dark Zurich's {split} split is recorded at night only; time of day "
                              f"{','.join(chosen)} is available for the train split")
        image_root = require_dir(root / "rgb_anon", "Dark Zurich rgb_anon")
        folders = [SampleFolder(t, image_root / split / t, root / "gt" / split / t if labelled else None)
                   for t in chosen]
        super().__init__(root, split, folders, classes, size, label_format, strict)
