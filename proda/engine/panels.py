"""Image panels of a training run: what the model (and whatever the stage adds, e.g. its pseudo labels) looks
like over time.

A mIoU curve says *that* something is off; a picture says *what* (labels mapped into the wrong classes, a
collapsed prediction, pseudo labels drifting to one class). At every evaluation by default
(``run.panel_every``: null = with each evaluation, 0 = never, N = every N iterations) the trainer calls
:meth:`PanelWriter.maybe_write`, which draws one row per image for the first ``run.panel_images`` images of
a fixed list, always the same ones, so panels compare over time: image | ground truth (if known) | the label
maps the stage offers (``Stage.panel_maps``) | prediction. The images are those of the stage's
``panel_reader()`` (e.g. ProDA's stage 1 draws target *training* images, where its soft labels live, with its
raw and rectified pseudo labels), or else the target *validation* split.

Label maps use the Cityscapes palette (ignore is black); tiles are at most :data:`TILE_WIDTH` pixels wide.
The panel goes to TensorBoard (tag ``panels/target_train`` or ``panels/target_val``) and, for people
without TensorBoard, to ``RUN_DIR/panels/iter_XXXXXXX.png`` (written atomically). Only the main process
draws; a panel costs a few forward passes (the evaluation of ``panel_images`` images).

Default on, with the evaluations: panels are cheap next to an evaluation of the whole validation split,
they land next to the mIoU they illustrate, and a stage without evaluation (self-supervised pre-training,
no segmentation output) draws none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..data.readers import run_classes
from ..data.transforms import image_to_tensor
from ..io import write_png
from . import dist
from .inference import infer_probabilities, resize_image
from .plots import panel_image

TILE_WIDTH = 384  # px: a 2048x1024 Cityscapes image is drawn at 384x192
_ROW_GAP = 4


def panel_path(run_dir: str | Path, iteration: int) -> Path:
    return Path(run_dir) / "panels" / f"iter_{iteration:07d}.png"


def tile_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of a tile: the image's own size, or :data:`TILE_WIDTH` wide with its aspect ratio."""
    if width <= TILE_WIDTH:
        return width, height
    return TILE_WIDTH, max(1, round(height * TILE_WIDTH / width))


def stack_rows(rows: list[np.ndarray], gap: int = _ROW_GAP) -> np.ndarray:
    """Rows (HxWx3 uint8, widths may differ) one under the other on white, left-aligned."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for r in rows:
        out[y:y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return out


class PanelWriter:
    """Draws the panels of one :class:`~proda.engine.trainer.Trainer` run (reads its stage, readers, config)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        cfg = trainer.cfg
        self.every = cfg.run.panel_every
        self.enabled = dist.is_main() and trainer.stage.evaluates and self.every != 0

    def due(self, iteration: int, evaluated: bool) -> bool:
        if not self.enabled:
            return False
        if self.every is None:
            return evaluated
        return iteration % self.every == 0 or iteration == self.trainer.cfg.optim.iterations

    def maybe_write(self, iteration: int, evaluated: bool, writer) -> Path | None:
        """The trainer's hook, called after each iteration's evaluation: draw and write the panel when due."""
        if not self.due(iteration, evaluated):
            return None
        panel, tag = self.render()
        path = panel_path(self.trainer.run_dir, iteration)
        write_png(path, panel)
        writer.add_image(tag, panel.transpose(2, 0, 1), iteration)
        return path

    # ------------------------------------------------------------------------------------------ drawing
    def _reader(self):
        own = self.trainer.stage.panel_reader()
        if own is not None:
            return own, "panels/target_train"
        return self.trainer._val_reader(), "panels/target_val"

    @torch.no_grad()
    def render(self) -> tuple[np.ndarray, str]:
        """(HxWx3 uint8 panel, TensorBoard tag) with the models as they are now; their modes are restored."""
        trainer, cfg = self.trainer, self.trainer.cfg
        stage, device = trainer.stage, trainer.device
        reader, tag = self._reader()
        model = stage.modules["model"]  # the bare module (never a DDP wrapper: only this process runs it)
        training = model.training
        model.eval()
        try:
            rows = [self._row(reader[i], model, device, cfg) for i in range(min(cfg.run.panel_images, len(reader)))]
        finally:
            model.train(training)
        return stack_rows(rows), tag

    def _row(self, sample: dict[str, Any], model: torch.nn.Module, device: torch.device, cfg) -> np.ndarray:
        image = sample["image"]
        w, h = tile_size(image.shape[1], image.shape[0])
        maps: dict[str, Any] = {"ground truth": sample.get("label"), **self.trainer.stage.panel_maps(sample, (h, w))}
        net_input = image_to_tensor(resize_image(image, cfg.data.val_size))[None].to(device)
        prob = infer_probabilities(model, net_input, (h, w), cfg.model.mean, cfg.model.std)
        maps["prediction"] = prob.argmax(1)[0]
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) if (w, h) != image.shape[1::-1] else image
        title = str(sample["name"]).removesuffix("_leftImg8bit")  # Cityscapes names: keep the informative part
        return panel_image(small, maps, run_classes(cfg).palette_array(), image_title=title)
