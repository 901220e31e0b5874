"""Scoring a folder of predicted PNGs against Cityscapes labels, exactly like the official cityscapesScripts.

The scorer reproduces ``cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py`` (docs/datasets.md
section 4) rather than ProDA's ``runningScore``, so a folder scored here gives the number the benchmark
script would print, for any prediction, including ones that hold ignored ids:

* ground truth: every ``gtFine/<split>/*/*_gtFine_labelIds.png``; a GT id outside 0..33 is an error;
* prediction: the unique PNG anywhere under the folder whose name starts with ``<city>_<seq>_<frame>``
  (our own ``*_color.png`` / ``*_overlay.png`` visualisations are skipped); none or several is an error;
* one 34x34 confusion matrix over all images (rows = GT label id, columns = predicted label id); for each
  evaluated label ``l``: ``tp = C[l, l]``, ``fn = row sum - tp`` (so predicting an ignored id such as 0
  is a false negative), ``fp`` = column ``l`` summed over the *evaluated* GT rows other than ``l``;
  IoU is NaN when ``tp + fp + fn == 0`` and the mIoU is the mean over the non-NaN IoUs.

For a 16-class (13-class) model the evaluated labels are the 16 (13) protocol classes: GT of terrain,
truck and train (and wall, fence, pole) is treated as ignored, as in ProDA. A 16-class result also carries
``miou_13``, the mean of the same 16 IoUs over the 13-class subset.
"""
from __future__ import annotations

import bisect
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import io
from ..data import labels
from ..errors import DataError
from .metrics import format_iou_table

PRED_FORMATS = ("auto", "labelid", "trainid")
NUM_LABEL_IDS = labels.CITYSCAPES_MAX_ID + 1  # 34: the official confusion matrix is 34 x 34
SKIPPED_SUFFIXES = ("_color.png", "_overlay.png")  # visualisations written next to our predictions


# ---------------------------------------------------------------------------------------------------
# File discovery


def find_gt_files(cityscapes_root: str | os.PathLike, split: str) -> list[Path]:
    """Sorted ``gtFine/<split>/*/*_gtFine_labelIds.png`` files, the set the official script evaluates."""
    folder = Path(cityscapes_root) / "gtFine" / split
    files = sorted(folder.glob("*/*_gtFine_labelIds.png"))
    if not files:
        raise DataError(f"{folder}: no */*_gtFine_labelIds.png ground-truth files found")
    return files


class PredictionIndex:
    """All candidate prediction PNGs under a folder (recursive), sorted by file name for prefix look-up."""

    def __init__(self, pred_dir: str | os.PathLike) -> None:
        root = Path(pred_dir)
        if not root.is_dir():
            raise DataError(f"{root}: prediction folder not found")
        entries: list[tuple[str, Path]] = []
        for folder, _, filenames in os.walk(root):
            for name in filenames:
                if name.endswith(".png") and not name.endswith(SKIPPED_SUFFIXES):
                    entries.append((name, Path(folder) / name))
        entries.sort()
        self._names = [name for name, _ in entries]
        self._paths = [path for _, path in entries]

    def match(self, gt_file: Path) -> Path:
        """The unique prediction for a GT file (official rule: file name matches ``<city>_<seq>_<frame>*.png``)."""
        parts = gt_file.name.split("_")
        if len(parts) < 4:
            raise DataError(f"{gt_file}: not a Cityscapes <city>_<seq>_<frame>_gtFine_labelIds.png name")
        prefix = "_".join(parts[:3])
        start = bisect.bisect_left(self._names, prefix)
        found = []
        for i in range(start, len(self._names)):
            if not self._names[i].startswith(prefix):
                break
            found.append(self._paths[i])
        if not found:
            raise DataError(f"found no prediction {prefix}*.png for ground truth {gt_file}")
        if len(found) > 1:
            listing = "\n  ".join(str(p) for p in found)
            raise DataError(f"found multiple predictions for ground truth {gt_file}:\n  {listing}")
        return found[0]


# ---------------------------------------------------------------------------------------------------
# Prediction formats


def trainid_to_labelid_lut(num_classes: int) -> np.ndarray:
    """uint8[256]: compact trainId of the protocol -> Cityscapes label id; 255 -> 0 'unlabeled' (a FN)."""
    return labels.compact_to_cityscapes_id(num_classes)


def _valid_values(fmt: str, num_classes: int) -> np.ndarray:
    """bool[256]: raw prediction values a format may hold."""
    valid = np.zeros(256, dtype=bool)
    if fmt == "labelid":
        valid[:NUM_LABEL_IDS] = True
    else:
        valid[:num_classes] = True
        valid[labels.IGNORE_INDEX] = True
    return valid


def value_to_label_id(fmt: str, num_classes: int) -> np.ndarray:
    """intp[256]: raw prediction value -> Cityscapes label id under a format (invalid values -> 0)."""
    if fmt == "labelid":
        lut = np.arange(256, dtype=np.intp)
        lut[NUM_LABEL_IDS:] = 0
        return lut
    return trainid_to_labelid_lut(num_classes).astype(np.intp)


def resolve_pred_format(pred_format: str, raw: np.ndarray, num_classes: int) -> tuple[str, bool]:
    """Decide how to read the raw prediction values; returns ``(format, assumed)``.

    ``raw`` is the int64 [34, 256] histogram ``GT label id x raw prediction value`` over *all* files.
    The 'auto' rule, from the set of values present:

    * all valid label ids (0..33) and at least one of them outside the trainIds (``C..33``) -> 'labelid';
    * all valid trainIds (0..C-1, 255) and 255 among them -> 'trainid';
    * neither -> error;
    * all in ``0..C-1``: valid both ways (argmax trainId maps hold no 255; a label-id map of a model that
      only predicts road/sidewalk/building... holds no id >= 19). The values alone cannot tell, so the
      ground truth decides: the reading under which more evaluated GT pixels are predicted correctly wins
      (a label-id map read as trainIds turns road 7 into traffic sign, and vice versa), trainId on a tie.
      ``assumed`` is True and a note with both agreements is printed.

    "trainId" means the compact id of the ``num_classes`` protocol (the Cityscapes trainId for 19
    classes; 0..15 in ProDA's 16-class order for a SYNTHIA model).
    """
    if pred_format not in PRED_FORMATS:
        raise ValueError(f"pred_format must be one of {PRED_FORMATS}, got {pred_format!r}")
    if pred_format != "auto":
        return pred_format, False
    present = raw.sum(axis=0) > 0
    values = np.flatnonzero(present).tolist()
    as_label = not (present & ~_valid_values("labelid", num_classes)).any()
    as_train = not (present & ~_valid_values("trainid", num_classes)).any()
    if as_label != as_train:
        return ("labelid" if as_label else "trainid"), False
    if not as_label:
        raise DataError(
            f"prediction values {values} are neither all Cityscapes label ids (0..33) nor all "
            f"{num_classes}-class trainIds (0..{num_classes - 1}, 255); pass the prediction format explicitly"
        )
    eval_ids = np.array([labels.CITYSCAPES_IDS_19[t] for t in labels.TO19[num_classes]])
    evaluated = int(raw[eval_ids].sum())
    correct = {}
    for fmt in ("trainid", "labelid"):
        mapped = value_to_label_id(fmt, num_classes)
        correct[fmt] = sum(int(raw[mapped[v], v]) for v in values if mapped[v] in eval_ids)
    fmt = "labelid" if correct["labelid"] > correct["trainid"] else "trainid"
    agreement = ", ".join(f"{k} {100.0 * n / max(evaluated, 1):.1f}%" for k, n in correct.items())
    print(
        f"note: prediction values {values} are valid both as label ids and as trainIds; assuming {fmt} "
        f"(pixel accuracy read as {agreement}); pass the prediction format explicitly to override",
        file=sys.stderr,
    )
    return fmt, True


# ---------------------------------------------------------------------------------------------------
# Official IoU


def official_iou(conf: np.ndarray, eval_ids: Sequence[int]) -> np.ndarray:
    """Per-label IoU (fraction) from a label-id confusion matrix, as ``getIouScoreForLabel`` computes it."""
    eval_ids = list(eval_ids)
    out = np.full(len(eval_ids), math.nan)
    for k, label in enumerate(eval_ids):
        tp = int(conf[label, label])
        fn = int(conf[label, :].sum()) - tp
        others = [l for l in eval_ids if l != label]
        fp = int(conf[others, label].sum())
        denom = tp + fp + fn
        if denom > 0:
            out[k] = tp / denom
    return out


@dataclass
class FolderScore:
    """The outcome of scoring a prediction folder: the 34x34 label-id matrix and how it was read."""

    conf: np.ndarray  # int64 [34, 34], rows = GT label id, columns = predicted label id
    num_classes: int
    num_images: int
    pred_format: str
    pred_format_assumed: bool

    @property
    def eval_ids(self) -> list[int]:
        return [labels.CITYSCAPES_IDS_19[t] for t in labels.TO19[self.num_classes]]

    def iou(self) -> np.ndarray:
        return official_iou(self.conf, self.eval_ids)

    def means(self) -> dict[str, float]:
        iou = self.iou()
        means = {"miou": _nanmean_percent(iou)}
        if self.num_classes == 16:
            means["miou_13"] = _nanmean_percent(iou[list(labels.INDICES_13_IN_16)])
        return means

    def to_dict(self) -> dict[str, Any]:
        names = labels.class_names(self.num_classes)
        result: dict[str, Any] = {k: _none_if_nan(v) for k, v in self.means().items()}
        result["per_class_iou"] = {n: _none_if_nan(100.0 * v) for n, v in zip(names, self.iou().tolist())}
        result["num_images"] = self.num_images
        result["num_classes"] = self.num_classes
        result["pred_format"] = self.pred_format
        result["pred_format_assumed"] = self.pred_format_assumed
        return result

    def format_table(self) -> str:
        rows = self.conf[self.eval_ids].sum(axis=1).astype(np.float64)
        share = 100.0 * rows / max(rows.sum(), 1.0)
        labels_of_means = {"miou": "mIoU", "miou_13": "mIoU (13 cls)"}
        return format_iou_table(
            labels.class_names(self.num_classes),
            [100.0 * v for v in self.iou().tolist()],
            share.tolist(),
            {labels_of_means[k]: v for k, v in self.means().items()},
        )


# ---------------------------------------------------------------------------------------------------
# Scoring


def _read_prediction(path: Path) -> np.ndarray:
    try:
        return io.read_label_ids(path)
    except DataError as exc:
        raise DataError(f"prediction {exc} (predictions are single-channel 8-bit PNGs of ids)") from None


def score_folder(
    pred_dir: str | os.PathLike,
    cityscapes_root: str | os.PathLike,
    split: str = "val",
    num_classes: int = 19,
    progress: bool = True,
    pred_format: str = "auto",
) -> FolderScore:
    """Score every GT image of a split against its prediction file; see the module docstring.

    One pass over the files accumulates a ``GT label id x raw prediction value`` (34 x 256) histogram, so
    the format of the predictions can be decided from the values of *all* files before they are mapped
    to label ids, without reading any file twice.
    """
    labels.check_num_classes(num_classes)
    if pred_format not in PRED_FORMATS:
        raise ValueError(f"pred_format must be one of {PRED_FORMATS}, got {pred_format!r}")
    gt_files = find_gt_files(cityscapes_root, split)
    index = PredictionIndex(pred_dir)
    pairs = [(gt, index.match(gt)) for gt in gt_files]  # fail on a missing file before reading any

    raw = np.zeros((NUM_LABEL_IDS, 256), dtype=np.int64)
    present = np.zeros((len(pairs), 256), dtype=bool)  # per file, to name the file holding a bad value
    step = max(1, len(pairs) // 10)
    for i, (gt_file, pred_file) in enumerate(pairs):
        gt = io.read_label_ids(gt_file)
        pred = _read_prediction(pred_file)
        if gt.shape != pred.shape:
            raise DataError(
                f"prediction {pred_file} is {pred.shape[1]}x{pred.shape[0]} (WxH) but ground truth "
                f"{gt_file} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if int(gt.max(initial=0)) >= NUM_LABEL_IDS:
            raise DataError(f"ground truth {gt_file} holds label id {int(gt.max())}, outside 0..33")
        counts = np.bincount(gt.astype(np.intp).ravel() * 256 + pred.ravel(), minlength=NUM_LABEL_IDS * 256)
        counts = counts.reshape(NUM_LABEL_IDS, 256)
        raw += counts
        present[i] = counts.sum(axis=0) > 0
        if progress and ((i + 1) % step == 0 or i + 1 == len(pairs)):
            print(f"scored {i + 1}/{len(pairs)} images", file=sys.stderr, flush=True)

    fmt, assumed = resolve_pred_format(pred_format, raw, num_classes)
    invalid = ~_valid_values(fmt, num_classes)
    bad_files = np.flatnonzero((present & invalid).any(axis=1))
    if bad_files.size:
        first = int(bad_files[0])
        bad = np.flatnonzero(present[first] & invalid).tolist()
        expected = "label ids 0..33" if fmt == "labelid" else f"trainIds 0..{num_classes - 1} or 255"
        raise DataError(
            f"prediction {pairs[first][1]} holds values {bad}, not {expected} "
            f"({bad_files.size} file(s) affected; prediction format {fmt})"
        )

    to_label = value_to_label_id(fmt, num_classes)
    conf = np.zeros((NUM_LABEL_IDS, NUM_LABEL_IDS), dtype=np.int64)
    for value in np.flatnonzero(raw.sum(axis=0)):
        conf[:, to_label[value]] += raw[:, value]
    return FolderScore(conf, num_classes, len(pairs), fmt, assumed)


def score_prediction_folder(
    pred_dir: str | os.PathLike,
    cityscapes_root: str | os.PathLike,
    split: str = "val",
    num_classes: int = 19,
    progress: bool = True,
    pred_format: str = "auto",
) -> dict[str, Any]:
    """Official cityscapesScripts scores of a prediction folder, JSON-ready (percent, NaN -> None).

    Keys: ``miou``, ``miou_13`` (16 classes only), ``per_class_iou`` {name: percent or None},
    ``num_images``, ``num_classes``, ``pred_format`` ('labelid' | 'trainid') and ``pred_format_assumed``.
    """
    return score_folder(pred_dir, cityscapes_root, split, num_classes, progress, pred_format).to_dict()


def score_predictions_command(
    pred_dir: str | os.PathLike,
    root: str | os.PathLike,
    split: str,
    num_classes: int,
    json_path: str | os.PathLike | None,
    pred_format: str = "auto",
) -> int:
    """CLI body: score, print the table, write the JSON atomically; returns the exit status."""
    score = score_folder(pred_dir, root, split, num_classes, progress=True, pred_format=pred_format)
    print(score.format_table())
    print(f"{score.num_images} images, predictions read as {score.pred_format}"
          + (" (assumed)" if score.pred_format_assumed else ""))
    if json_path is not None:
        io.write_json(json_path, score.to_dict())
        print(f"wrote {json_path}")
    return 0


def _nanmean_percent(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return math.nan if valid.size == 0 else 100.0 * float(valid.mean())


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
