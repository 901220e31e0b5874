"""Confusion-matrix metrics of semantic segmentation (mIoU as ProDA and cityscapesScripts report it).

Conventions, pinned once (docs/datasets.md section 4):

* rows are ground truth, columns are predictions; pixels whose ground truth lies outside ``[0, C)`` (the
  255 ignore label) are dropped before counting, exactly like ProDA's ``runningScore``;
* ``IoU = tp / (tp + fp + fn)`` per class, NaN when the class never occurs in the ground truth nor in the
  predictions (the denominator is 0), and mIoU is the mean over the non-NaN classes;
* every score is reported in percent;
* a 16-class (SYNTHIA) model also reports ``miou_13``: the mean of the *same* 16-class IoUs over the 13
  classes left after dropping wall, fence and pole (``labels.INDICES_13_IN_16``), never a re-evaluation.

The matrix is an int64 tensor kept on the model's device and accumulated with ``torch.bincount``, so the
evaluation loop never copies predictions to the host, and ``reduce_`` sums it over distributed ranks.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from ..data import labels


class ConfusionMatrix:
    """A ``C x C`` int64 confusion matrix (rows = ground truth, columns = prediction)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    # ------------------------------------------------------------------ accumulation
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of ``pred`` against ``target`` (integer tensors of the same shape).

        Pixels whose target lies outside ``[0, C)`` are ignored. A prediction outside ``[0, C)`` on a counted
        pixel is a bug of the caller (argmax never yields one) and raises instead of corrupting other cells.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer tensors (class indices)")
        c = self.num_classes
        target = target.reshape(-1).to(self.mat.device, torch.int64)
        pred = pred.reshape(-1).to(self.mat.device, torch.int64)
        keep = (target >= 0) & (target < c)
        target, pred = target[keep], pred[keep]
        if pred.numel() and bool(((pred < 0) | (pred >= c)).any()):
            bad = pred[(pred < 0) | (pred >= c)][0].item()
            raise ValueError(f"prediction holds class index {bad}, outside [0, {c})")
        self.mat += torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def reduce_(self, process_group: Any = None) -> "ConfusionMatrix":
        """Sum the matrix over all ranks in place (no-op without an initialised process group).

        Counts are integers, so the all-reduced matrix equals the matrix of the whole data set exactly,
        whatever the sharding; NCCL needs the matrix on the rank's CUDA device (pass ``device``).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM, group=process_group)
        return self

    def reset(self) -> None:
        self.mat.zero_()

    # ------------------------------------------------------------------ scores
    def iou(self) -> torch.Tensor:
        """Per-class IoU (fraction, float64), NaN for classes absent from both ground truth and predictions."""
        mat = self.mat.to(torch.float64)
        tp = mat.diagonal()
        denom = mat.sum(dim=1) + mat.sum(dim=0) - tp  # tp + fn + fp
        return torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, math.nan))

    def miou(self) -> float:
        """Mean IoU in percent over the non-NaN classes (NaN when no class occurs at all)."""
        return _nanmean_percent(self.iou())

    def miou_subset(self, indices: Sequence[int]) -> float:
        """Mean IoU in percent over ``indices`` only (e.g. the 13-class figure of a 16-class model)."""
        return _nanmean_percent(self.iou()[list(indices)])

    def pixel_accuracy(self) -> float:
        """Correct / counted pixels in percent (NaN before any pixel was counted)."""
        total = int(self.mat.sum())
        return math.nan if total == 0 else 100.0 * int(self.mat.diagonal().sum()) / total

    def gt_share(self) -> torch.Tensor:
        """Fraction of the counted pixels whose ground truth is each class (float64, zeros when empty)."""
        rows = self.mat.sum(dim=1).to(torch.float64)
        return rows / rows.sum().clamp_min(1)

    # ------------------------------------------------------------------ reports
    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready ``{"miou": percent, "per_class_iou": {name: percent or None}}`` (NaN becomes None)."""
        self._check_names(class_names)
        return {
            "miou": _none_if_nan(self.miou()),
            "per_class_iou": dict(zip(class_names, (_none_if_nan(100.0 * v) for v in self.iou().tolist()))),
        }

    def format_table(self, class_names: Sequence[str]) -> str:
        """A plain-text table: class, IoU %, share of the ground-truth pixels %, then the mIoU."""
        self._check_names(class_names)
        return format_iou_table(
            class_names,
            [100.0 * v for v in self.iou().tolist()],
            [100.0 * v for v in self.gt_share().tolist()],
            {"mIoU": self.miou()},
        )

    def _check_names(self, class_names: Sequence[str]) -> None:
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class matrix")


def summarize(cm: ConfusionMatrix, classes: labels.LabelSpace | Sequence[str] | int) -> dict[str, Any]:
    """``cm.to_dict`` with the run's class names: a LabelSpace, the names themselves, or the class count of
    a Cityscapes protocol (19/16/13). SYNTHIA's 16 classes also get ``miou_13`` (the 13-class subset)."""
    if isinstance(classes, labels.LabelSpace):
        names = classes.names
    elif isinstance(classes, int):
        names = labels.class_names(classes)
    else:
        names = tuple(classes)
    if cm.num_classes != len(names):
        raise ValueError(f"a {cm.num_classes}-class matrix summarised with {len(names)} class names")
    result = cm.to_dict(names)
    if names == labels.class_names(16):
        result["miou_13"] = _none_if_nan(cm.miou_subset(labels.INDICES_13_IN_16))
    return result


def format_iou_table(
    class_names: Sequence[str],
    iou_percent: Sequence[float],
    gt_share_percent: Sequence[float],
    means: Mapping[str, float],
) -> str:
    """Text table shared by the in-training evaluator and the prediction-folder scorer (NaN prints as '-')."""
    width = max(12, *(len(n) for n in class_names), *(len(k) for k in means))
    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'GT px %':>7}", "-" * (width + 18)]
    for name, iou, share in zip(class_names, iou_percent, gt_share_percent):
        lines.append(f"{name:<{width}}  {_fmt(iou):>7}  {_fmt(share):>7}")
    lines.append("-" * (width + 18))
    for key, value in means.items():
        lines.append(f"{key:<{width}}  {_fmt(value):>7}")
    return "\n".join(lines)


def _nanmean_percent(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return math.nan if valid.numel() == 0 else 100.0 * float(valid.mean())


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"
