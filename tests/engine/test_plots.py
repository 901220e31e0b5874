"""Figures: each is a real, non-trivial PNG written where asked; the TensorBoard panel is laid out exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proda.data import labels
from proda.engine.logger import MetricsWriter
from proda.engine.metrics import ConfusionMatrix
from proda.engine.plots import (evaluation_plots, panel_image, plot_confusion, plot_per_class_iou,
                                plot_training_curves, report_command)
from proda.errors import DataError

NAMES = list(labels.class_names(19))


def assert_real_png(path: Path, min_bytes: int = 5000) -> np.ndarray:
    """A valid PNG of some size whose pixels are not all one colour; returns its RGB pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100
    assert rgb.reshape(-1, 3).std(axis=0).max() > 10
    return rgb


def confusion() -> ConfusionMatrix:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, 5000)
    pred = np.where(rng.random(5000) < 0.7, gt, rng.integers(0, 19, 5000))
    cm = ConfusionMatrix(19)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    return cm


def test_per_class_iou_bars_use_palette_colours(tmp_path: Path) -> None:
    per_class = {n: (None if n == "train" else float(10 + 4 * i)) for i, n in enumerate(NAMES)}
    rgb = assert_real_png(plot_per_class_iou(per_class, tmp_path / "iou.png", "test run"))
    pixels = {tuple(p) for p in rgb.reshape(-1, 3)[::7].tolist()}
    assert (70, 130, 180) in pixels and (128, 64, 128) in pixels  # sky and road bars in their colours


def test_evaluation_plots_and_confusion_inputs(tmp_path: Path) -> None:
    cm = confusion()
    paths = evaluation_plots(cm, NAMES, tmp_path / "eval")
    assert [p.name for p in paths] == ["per_class_iou.png", "confusion.png"]
    for p in paths:
        assert_real_png(p)
    counts = cm.mat.numpy()[:5, :5]  # a plain array, unnormalised, small protocol-free class list
    assert_real_png(plot_confusion(counts, NAMES[:5], tmp_path / "counts.png", normalize=None), min_bytes=3000)
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(cm, NAMES[:5], tmp_path / "x.png")


def write_run(run: Path) -> None:
    writer = MetricsWriter(run, tensorboard=False)
    for it in range(10, 210, 10):
        writer.write(it, {"source_ce": 3.0 / (1 + it / 50), "target_sce": 2.0 / (1 + it / 80),
                          "lr/model/backbone": 2.5e-4 * (1 - it / 250) ** 0.9,
                          "lr/model/head": 2.5e-3 * (1 - it / 250) ** 0.9, "sec_per_iter": 0.3})
        if it % 50 == 0:
            writer.write(it, {"miou": 20 + it / 10, "pseudo_label_miou_raw": 30 + it / 20,
                              "pseudo_label_miou_rectified": 32 + it / 15, "iou/road": 50.0}, kind="val")
    writer.write(120, {"nonfinite/source_ce": 1.0}, kind="nonfinite")
    writer.close()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iter')  # torn last line of a killed run


def test_training_curves_and_report_command(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    write_run(run)
    assert_real_png(plot_training_curves(run, tmp_path / "c.png"), min_bytes=20000)
    path = report_command(run)
    assert path == run / "curves.png"
    assert_real_png(path, min_bytes=20000)
    assert str(path) in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="metrics.jsonl"):
        report_command(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        report_command(tmp_path / "missing")


def test_panel_image_layout() -> None:
    h, w = 24, 40
    img = np.full((h, w, 3), 200, np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[:, 20:] = 10  # sky
    label[0, 0] = 255  # ignore -> black
    small = torch.full((h // 8, w // 8), 13, dtype=torch.int64)  # car, at stride-8 resolution, as a tensor
    panel = panel_image(img, {"prediction": label, "pseudo label": None, "stride 8": small}, labels.palette(19))
    assert panel.dtype == np.uint8 and panel.ndim == 3
    bar = panel.shape[0] - h
    assert 8 <= bar <= 30 and panel.shape[1] == 4 * w + 3 * 2
    tiles = [panel[bar:, k * (w + 2):k * (w + 2) + w] for k in range(4)]
    assert (tiles[0] == 200).all()
    assert (tiles[1][1:, :20] == (128, 64, 128)).all() and (tiles[1][:, 20:] == (70, 130, 180)).all()
    assert (tiles[1][0, 0] == 0).all()
    assert (tiles[2] == 96).all()  # not available: grey
    assert (tiles[3] == (0, 0, 142)).all()
    assert panel[:bar].max() == 255 and panel[:bar, :w].mean() < 128  # white titles on black bars


def test_figures_are_written_atomically(tmp_path: Path) -> None:
    path = plot_per_class_iou({"road": 50.0, "sky": 80.0}, tmp_path / "sub" / "iou.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["iou.png"]  # no temporary file left
