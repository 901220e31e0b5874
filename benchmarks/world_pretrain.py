"""A stand-in for ImageNet pre-training on the synthetic benchmark: supervised patch classification on
"world" images, scenes of another benchmark seed each rendered in its own random appearance.

On real data every network of ProDA starts from an ImageNet backbone: features trained on other images, with
image-level labels, over photographs of every look. Nothing like it exists for the embedded benchmark, whose
networks start from random weights, so nothing in them knows more than the source classifier (README, "The
errors' structure, not their amount, is what the labels teach"). This script makes the analogue:

* **other images**: street scenes of benchmark seed ``--world-seed`` (not the benchmark's), the source's
  layout and object mix;
* **every look**: each image gets its own appearance, drawn at random: every knob of the domain gap
  (``GAP_FIELDS``) at its own random position between the source's and the target's value, and a random
  per-class colour shift (RGB gains in [1 - g, 1 + g], saturation factor in [s_lo, s_hi]) for every class,
  so that a class is seen under many colourings (the target's is one point of that range, as Cityscapes'
  look is among ImageNet's photographs);
* **image-level labels**: object-centric patches (``--patch`` pixels square) classified by the class of most
  of their central cell, as ImageNet's images are labelled by their main object; no segmentation is learnt.

The backbone (the network of ``--config``'s ``model`` section) is trained with a linear classifier on its
pooled features, class-balanced patch sampling, SGD with a poly schedule; the result is a proda checkpoint
whose backbone initialises any run with ``model.init=OUT/world_backbone.pth model.init_format=proda_backbone``.

    python benchmarks/world_pretrain.py OUT [--config synthetic/source_only_6k.yaml] [key=value ...]
        [--images 2000] [--iterations 3000] [--batch 64] [--patch 40] [--world-seed 101] [--seed 1337]

Prints the patch accuracy on held-out world images and on the benchmark's target validation images
(``--target-val DIR/cityscapes``, optional: a diagnostic only, nothing is chosen by it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import _common

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from proda.checkpoint_io import save_checkpoint
from proda.config import load_config
from proda.data.labels import cityscapes_lut
from proda.data.registry import build_dataset
from proda.data.synthetic import GAP_FIELDS, SOURCE_STYLE, TARGET_STYLE, render_scene
from proda.data.synthetic.styles import blend_knob
from proda.engine.inference import predict_logits
from proda.io import write_json
from proda.models.build import build_model, normalize
from proda.models.weights import load_trained_model

NUM_CLASSES = 19
_STYLE_STREAM = 7  # seeds an image's appearance draw apart from its scene's generator


def world_style(rng: np.random.Generator, gain: float, saturation: tuple[float, float], max_share: float = 1.0):
    """One image's random appearance: every gap knob at its own random share (0..max_share, extrapolated
    above 1 as ``target_style_at`` does) of the source -> target change, and a random colour shift of every
    class."""
    values = {}
    for name in GAP_FIELDS:
        s, t = getattr(SOURCE_STYLE, name), getattr(TARGET_STYLE, name)
        share = float(rng.uniform(0.0, max_share))
        if name == "class_shift":
            ids = sorted({c[0] for c in TARGET_STYLE.class_shift})
            values[name] = tuple((i, *(float(v) for v in rng.uniform(1 - gain, 1 + gain, 3)),
                                  float(rng.uniform(*saturation))) for i in ids)
        elif isinstance(t, bool):
            values[name] = bool(rng.random() < 0.5)
        else:
            values[name] = blend_knob(name, s, t, share)
    return replace(TARGET_STYLE, name="world", **values)


def _render(job: tuple[int, int, float, tuple[float, float], float]) -> tuple[np.ndarray, np.ndarray]:
    world_seed, index, gain, saturation, max_share = job
    style = world_style(np.random.default_rng([world_seed, _STYLE_STREAM, index]), gain, saturation, max_share)
    image, raw = render_scene(world_seed, "source", index, source_style=style)
    return image, cityscapes_lut(NUM_CLASSES)[raw]


def render_world(world_seed: int, n: int, gain: float, saturation: tuple[float, float], max_share: float = 1.0,
                 workers: int = 2):
    jobs = [(world_seed, i, gain, saturation, max_share) for i in range(n)]
    with ProcessPoolExecutor(workers) as pool:
        out = list(tqdm(pool.map(_render, jobs, chunksize=25), total=n, desc="world images", file=sys.stderr))
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def patch_index(labels: np.ndarray, patch: int, cell: int = 8, stride: int = 4, purity: float = 0.6):
    """(image, top, left, class) of every patch whose central ``cell`` x ``cell`` pixels are at least
    ``purity`` one class."""
    n, h, w = labels.shape
    rows = []
    half = (patch - cell) // 2
    for top in range(0, h - patch + 1, stride):
        for left in range(0, w - patch + 1, stride):
            centre = labels[:, top + half: top + half + cell, left + half: left + half + cell].reshape(n, -1)
            counts = np.stack([(centre == c).sum(1) for c in range(NUM_CLASSES)], 1)
            cls, best = counts.argmax(1), counts.max(1)
            keep = best >= purity * cell * cell
            for i in np.nonzero(keep)[0]:
                rows.append((i, top, left, cls[i]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def balanced_batch(index: np.ndarray, by_class: list[np.ndarray], batch: int, rng: np.random.Generator):
    present = [c for c in range(NUM_CLASSES) if len(by_class[c])]
    classes = rng.choice(present, batch)
    return index[[by_class[c][rng.integers(len(by_class[c]))] for c in classes]]


def crops(images: np.ndarray, rows: np.ndarray, patch: int, rng: np.random.Generator | None) -> torch.Tensor:
    out = np.stack([images[i, t: t + patch, l: l + patch] for i, t, l, _ in rows])
    if rng is not None:
        flip = rng.random(len(out)) < 0.5
        out[flip] = out[flip, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float() / 255.0


class PatchClassifier(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.fc = nn.Linear(net.out_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net.features(x).mean(dim=(2, 3)))


def _evaluated_rows(rows: np.ndarray, limit: int) -> np.ndarray:
    """The same ``limit`` patches for every model read (a fixed random subset)."""
    return rows[np.random.default_rng(0).permutation(len(rows))[:limit]]


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    per_class = [float((pred[truth == c] == c).mean()) for c in range(NUM_CLASSES) if (truth == c).any()]
    return {"accuracy": float((pred == truth).mean()), "mean_class_accuracy": float(np.mean(per_class))}


@torch.no_grad()
def accuracy(model: PatchClassifier, images, rows, patch, mean, std, limit: int = 4000) -> dict:
    model.eval()
    rows = _evaluated_rows(rows, limit)
    pred = torch.cat([model(normalize(crops(images, rows[i: i + 256], patch, None), mean, std)).argmax(1)
                      for i in range(0, len(rows), 256)]).numpy()
    model.train()
    return _scores(pred, rows[:, 3])


@torch.no_grad()
def segmentation_patch_accuracy(checkpoint: str, images, rows, patch: int, limit: int = 4000, cell: int = 8) -> dict:
    """The same patches read by a segmentation model: its whole-image prediction, the most frequent class
    of the patch's central cell (what the patch label is)."""
    model, meta = load_trained_model(checkpoint)
    rows = _evaluated_rows(rows, limit)
    preds = {}
    for i in np.unique(rows[:, 0]):
        x = torch.from_numpy(images[i]).permute(2, 0, 1)[None].float() / 255.0
        logits = predict_logits(model, x, images.shape[1:3], meta["input"]["mean"], meta["input"]["std"])
        preds[i] = logits[0].argmax(0).numpy()
    half = (patch - cell) // 2
    pred = np.array([np.bincount(preds[i][t + half: t + half + cell, l + half: l + half + cell].ravel(),
                                 minlength=NUM_CLASSES).argmax() for i, t, l, _ in rows])
    return _scores(pred, rows[:, 3])


def read_val(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and compact labels of a Cityscapes-layout validation split, through the project's reader."""
    reader = build_dataset("cityscapes", root, split="val", num_classes=NUM_CLASSES)
    samples = [reader[i] for i in range(len(reader))]
    return np.stack([s["image"] for s in samples]), np.stack([s["label"] for s in samples])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("overrides", nargs="*", help="key=value settings of --config (e.g. model.width=16)")
    ap.add_argument("--config", default="synthetic/source_only_6k.yaml")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--patch", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--gain", type=float, default=0.2, help="per-class RGB gains drawn from [1-g, 1+g]")
    ap.add_argument("--saturation", type=float, nargs=2, default=(0.5, 1.2))
    ap.add_argument("--max-share", type=float, default=1.0,
                    help="each gap knob of a world image at a random share 0..this of the source -> target change")
    ap.add_argument("--world-seed", type=int, default=101)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--target-val", type=Path, default=None)
    ap.add_argument("--compare", default="", help="segmentation checkpoints (comma-separated) read on the same "
                    "target validation patches, e.g. the source-only models: does the backbone know more?")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(args.config, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images, labels = render_world(args.world_seed, args.images + args.held_out, args.gain, tuple(args.saturation),
                                  args.max_share)
    train_rows = patch_index(labels[: args.images], args.patch)
    held_rows = patch_index(labels[args.images:], args.patch)
    held_rows[:, 0] += args.images
    by_class = [np.nonzero(train_rows[:, 3] == c)[0] for c in range(NUM_CLASSES)]
    print(f"{len(train_rows)} training patches; per class: {[len(b) for b in by_class]} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    net = build_model(cfg.model, NUM_CLASSES)
    model = PatchClassifier(net)
    mean, std = cfg.model.mean, cfg.model.std
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)
    bar = tqdm(range(args.iterations), desc="world pre-training", file=sys.stderr)
    for it in bar:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (1 - it / args.iterations) ** 0.9
        rows = balanced_batch(train_rows, by_class, args.batch, rng)
        x = normalize(crops(images, rows, args.patch, rng), mean, std)
        loss = F.cross_entropy(model(x), torch.from_numpy(rows[:, 3]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if it % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    result = {"world_held_out": accuracy(model, images, held_rows, args.patch, mean, std),
              "seconds": time.perf_counter() - t0, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.target_val is not None:
        val_images, val_labels = read_val(args.target_val)
        val_rows = patch_index(val_labels, args.patch)
        result["target_val"] = accuracy(model, val_images, val_rows, args.patch, mean, std)
        for ckpt in filter(None, args.compare.split(",")):
            result[f"target_val by {ckpt}"] = segmentation_patch_accuracy(ckpt, val_images, val_rows, args.patch)
    save_checkpoint(args.out / "world_backbone.pth", {"model": net.state_dict(), "iteration": args.iterations,
                                                      "patch_classifier": model.fc.state_dict()})
    write_json(args.out / "world_pretrain.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
