"""Figures of a run and of an evaluation: per-class IoU, confusion matrix, training curves, image panels.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never through pyplot:
no global backend switch, no GUI, no figure registry to leak from long training runs. Each PNG is
rendered into memory and written with :func:`proda.io.write_bytes`, so a killed process never leaves a
torn image. Classes are drawn in their official Cityscapes colours.
"""
from __future__ import annotations

import io as _io
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import io
from ..data import labels
from ..errors import DataError
from .logger import read_metrics
from .metrics import ConfusionMatrix

NORMALIZATIONS = ("true", "pred", "all", None)
VAL_KEYS = ("miou", "miou_13", "pseudo_label_miou_raw", "pseudo_label_miou_rectified")
_NOT_LOSSES = ("kind", "iteration", "sec_per_iter")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically."""
    FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    io.write_bytes(path, buf.getvalue())
    return Path(path)


def class_color(name: str) -> tuple[float, float, float]:
    """Official colour of a class name as a matplotlib RGB triple (grey for a name outside the 19)."""
    if name in labels.CLASSES_19:
        return tuple(c / 255.0 for c in labels.PALETTE_19[labels.CLASSES_19.index(name)])  # type: ignore[return-value]
    return (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------------
# Evaluation figures


def plot_per_class_iou(per_class_iou: Mapping[str, float | None], path: str | os.PathLike,
                       title: str = "per-class IoU") -> Path:
    """Bar chart of IoU (percent) per class in palette colours, with the mean as a dashed line.

    A class without a score (None/NaN: absent from ground truth and predictions) gets no bar and 'n/a',
    and does not count in the mean, as in the mIoU itself.
    """
    names = list(per_class_iou)
    values = [None if v is None or math.isnan(v) else float(v) for v in per_class_iou.values()]
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 1.5), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, [v or 0.0 for v in values], color=[class_color(n) for n in names], edgecolor="black", linewidth=0.5)
    for xi, v in zip(x, values):
        ax.text(xi, (v or 0.0) + 1.0, "n/a" if v is None else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    scored = [v for v in values if v is not None]
    if scored:
        mean = sum(scored) / len(scored)
        ax.axhline(mean, color="crimson", linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU %")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def confusion_array(cm: ConfusionMatrix | np.ndarray | torch.Tensor) -> np.ndarray:
    """int64/float [C, C] host array (rows = ground truth) of any confusion-matrix representation."""
    mat = cm.mat if isinstance(cm, ConfusionMatrix) else cm
    if isinstance(mat, torch.Tensor):
        mat = mat.detach().cpu().numpy()
    mat = np.asarray(mat)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {mat.shape}")
    return mat


def plot_confusion(cm: ConfusionMatrix | np.ndarray | torch.Tensor, class_names: Sequence[str],
                   path: str | os.PathLike, normalize: str | None = "true", title: str | None = None) -> Path:
    """Heat map of a confusion matrix with class labels.

    ``normalize``: 'true' divides each row by its ground-truth count (the diagonal is per-class recall,
    the rows show what each class is mistaken for), 'pred' each column, 'all' the total, None keeps counts.
    Empty rows/columns stay 0. Cells are annotated in percent when the matrix is small enough to read.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    mat = confusion_array(cm).astype(np.float64)
    c = mat.shape[0]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}-class matrix")
    if normalize == "true":
        mat = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
    elif normalize == "pred":
        mat = mat / np.maximum(mat.sum(axis=0, keepdims=True), 1)
    elif normalize == "all":
        mat = mat / max(mat.sum(), 1)
    side = max(5.0, 0.42 * c + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if c <= 25:
        for i in range(c):
            for j in range(c):
                if mat[i, j] > 0:
                    text = f"{100 * mat[i, j]:.0f}" if normalize else f"{int(mat[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6,
                            color="white" if mat[i, j] > 0.6 * (mat.max() or 1) else "black")
    ticks = np.arange(c)
    ax.set_xticks(ticks, list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(ticks, list(class_names), fontsize=7)
    for tick, name in zip(ax.get_yticklabels(), class_names):
        tick.set_color(_readable(class_color(name)))
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    suffix = {"true": " (rows normalised)", "pred": " (columns normalised)", "all": " (normalised)", None: ""}
    ax.set_title(title or f"confusion matrix{suffix[normalize]}")
    return save_figure(fig, path)


def _readable(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """A class colour darkened enough to read as text on white (terrain, sidewalk are very light)."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    k = min(1.0, 0.55 / lum) if lum > 0 else 1.0
    return tuple(v * k for v in rgb)  # type: ignore[return-value]


def evaluation_plots(cm: ConfusionMatrix | np.ndarray | torch.Tensor, class_names: Sequence[str],
                     out_dir: str | os.PathLike) -> list[Path]:
    """``per_class_iou.png`` and ``confusion.png`` of one evaluation, in ``out_dir``."""
    mat = confusion_array(cm)
    matrix = ConfusionMatrix(mat.shape[0])
    matrix.mat = torch.as_tensor(mat, dtype=torch.int64)
    summary = matrix.to_dict(list(class_names))
    out = Path(out_dir)
    title = f"per-class IoU (mIoU {summary['miou']:.2f})" if summary["miou"] is not None else "per-class IoU"
    return [
        plot_per_class_iou(summary["per_class_iou"], out / "per_class_iou.png", title),
        plot_confusion(matrix, class_names, out / "confusion.png"),
    ]


# ---------------------------------------------------------------------------------------------------
# Training curves


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["iteration"]), float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def plot_training_curves(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Three stacked panels from a run's metrics.jsonl against iterations.

    * every loss term of the 'train' rows (anything that is not a learning rate or timing), with the
      iterations of skipped non-finite steps marked;
    * every learning rate (``lr/<optimizer>/<group>``), log scale;
    * target val mIoU (and ``miou_13``), plus the raw/rectified pseudo-label mIoU of stage 1 if logged.
    """
    rows = read_metrics(run_dir)
    if not rows:
        raise DataError(f"{Path(run_dir) / 'metrics.jsonl'}: no metric rows to plot (has the run logged yet?)")
    train = [r for r in rows if r.get("kind") == "train"]
    nonfinite = sorted({int(r["iteration"]) for r in rows if r.get("kind") == "nonfinite"})
    fig = Figure(figsize=(9.0, 9.5))
    ax_loss, ax_lr, ax_val = fig.subplots(3, 1, sharex=True)

    losses = [k for k in _keys(train) if k not in _NOT_LOSSES and not k.startswith(("lr/", "nonfinite/"))
              and k not in VAL_KEYS]
    for key in losses:
        ax_loss.plot(*_series(train, key), label=key, linewidth=1.2)
    for i, it in enumerate(nonfinite):
        ax_loss.axvline(it, color="red", alpha=0.4, linewidth=0.8, label="non-finite step" if i == 0 else None)
    _finish(ax_loss, "loss terms", "loss", bool(losses or nonfinite))

    lrs = [k for k in _keys(train) if k.startswith("lr/")]
    for key in lrs:
        ax_lr.plot(*_series(train, key), label=key[3:], linewidth=1.2)
    if lrs and all(v > 0 for k in lrs for v in _series(train, k)[1]):
        ax_lr.set_yscale("log")
    _finish(ax_lr, "learning rate", "lr", bool(lrs))

    drawn = False
    for key, style in zip(VAL_KEYS, ("o-", "s--", "^-", "v-")):
        its, vals = _series(rows, key)
        if its:
            ax_val.plot(its, vals, style, label=key, linewidth=1.2, markersize=4)
            drawn = True
    ax_val.set_xlabel("iteration")
    _finish(ax_val, "validation (target val mIoU, pseudo-label mIoU)", "%", drawn)
    fig.suptitle(f"{Path(run_dir).resolve().name}: training curves")
    fig.tight_layout()
    return save_figure(fig, path)


def _finish(ax, title: str, ylabel: str, has_data: bool) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if has_data:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")


def report_command(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """CLI body of ``proda report RUN_DIR``: the training-curves PNG (default ``RUN_DIR/curves.png``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    path = plot_training_curves(run, Path(out) if out is not None else run / "curves.png")
    print(f"wrote {path}", file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------------------
# TensorBoard panels


def panel_image(image: np.ndarray, maps: Mapping[str, Any], palette: np.ndarray | Sequence[Sequence[int]],
                image_title: str = "image") -> np.ndarray:
    """HxWx3 uint8 ``image`` and colourised label maps side by side, each under a small title bar.

    ``maps`` is {title: HxW label map (numpy or tensor, any resolution: resized nearest to the image) or
    None (drawn grey: not available yet, e.g. pseudo labels before they exist)}. Ids outside the palette
    (255 ignore) are black. Returns a (bar + H) x (n*W + gaps) x 3 uint8 array; TensorBoard wants
    ``panel.transpose(2, 0, 1)`` (CHW).
    """
    image = _as_numpy(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    h, w = image.shape[:2]
    table = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:255]
    table[: len(pal)] = pal
    tiles = [(image_title, image)]
    for title, label in maps.items():
        if label is None:
            tiles.append((f"{title} (n/a)", np.full((h, w, 3), 96, dtype=np.uint8)))
            continue
        label = np.clip(_as_numpy(label).astype(np.int64), 0, 255).astype(np.uint8)
        if label.shape != (h, w):
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        tiles.append((title, table[label]))

    scale = float(np.clip(w / 500.0, 0.3, 0.8))
    thickness = 1
    (_, text_h), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    bar = text_h + base + 6
    gap = 2
    panel = np.full((bar + h, len(tiles) * w + (len(tiles) - 1) * gap, 3), 255, dtype=np.uint8)  # white gaps
    for k, (title, tile) in enumerate(tiles):
        x0 = k * (w + gap)
        strip = np.zeros((bar, w, 3), dtype=np.uint8)  # drawn on its own so a long title is clipped to its tile
        cv2.putText(strip, title, (3, bar - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
        panel[:bar, x0:x0 + w] = strip
        panel[bar:, x0:x0 + w] = tile
    return panel


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)
