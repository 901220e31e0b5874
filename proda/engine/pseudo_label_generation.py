"""Generating pseudo labels for the target training set (``proda pseudo-label``).

* soft (stage 1's fixed P0): the model's softmax at network output resolution, no flip, stored compactly;
* hard (stages 2/3): softmax of the image and of its horizontal flip, upsampled to label resolution and
  averaged; argmax and confidence stored compactly (the threshold is applied when training reads them).

Generation resumes: images whose file exists are skipped; each process of a distributed run takes every
W-th image, so files never collide. Free disk space is checked against an estimate before starting.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data.pseudo_labels import PseudoLabelStore, class_balanced_thresholds, encode_hard, encode_soft
from ..data.transforms import image_to_tensor
from ..errors import DataError
from ..models.build import normalize
from . import dist
from ..checkpoint_io import content_digest
from .inference import infer_probabilities


@torch.no_grad()
def soft_probabilities(model, image: torch.Tensor, mean, std) -> torch.Tensor:
    """[C, h, w] softmax at network output resolution of one [3,H,W] image in [0,1]."""
    return model(normalize(image[None], mean, std))["out"].float().softmax(1)[0]


def generate_pseudo_labels(model, reader, store: PseudoLabelStore, device: torch.device, soft: bool,
                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), progress: bool = True) -> int:
    """Write the missing labels of this process's share of ``reader``; returns how many were written."""
    model.eval()
    names = [s.name for s in reader.samples]
    todo = [i for i in range(dist.rank(), len(reader), dist.world_size()) if not store.has(names[i])]
    for i in tqdm(todo, desc="soft labels" if soft else "hard labels", disable=not (progress and dist.is_main())):
        sample = reader[i]
        image = image_to_tensor(sample["image"]).to(device)
        if soft:
            data = encode_soft(soft_probabilities(model, image, mean, std).cpu().numpy())
        else:
            prob = infer_probabilities(model, image[None], tuple(image.shape[-2:]), mean, std, flip=True)[0]
            conf, label = prob.max(0)
            data = encode_hard(label.to(torch.uint8).cpu().numpy(), conf.cpu().numpy())
        store.write(sample["name"], data)
    dist.barrier()
    return len(todo)


def output_size(model, image_size: tuple[int, int], device: torch.device) -> tuple[int, int]:
    """(w, h) of the network output for an input of ``image_size`` (w, h)."""
    w, h = image_size
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w, device=device))["out"]
    return int(out.shape[-1]), int(out.shape[-2])


def check_free_space(folder: Path, needed: int) -> None:
    """DataError naming the folder, the estimate and the free space when the estimate does not fit."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"{folder}: pseudo labels need about {format_bytes(needed)}, only "
                        f"{format_bytes(free)} free on that disk; free some space or choose another --out")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (B, KiB, MiB, GiB, TiB): small estimates stay readable, unlike a fixed GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def pseudo_label_command(checkpoint: str, cfg, soft: bool, out: str | None = None, progress: bool = True) -> Path:
    from ..data.readers import target_reader
    from ..models.weights import load_model_for_config
    from .device import prepare_device

    device = prepare_device(cfg.run.device)
    model, meta = load_model_for_config(checkpoint, cfg, device)
    reader = target_reader(cfg, with_labels=False)
    first = reader[0]["image"]
    image_size = (first.shape[1], first.shape[0])
    kind = "soft" if soft else "hard"
    folder = Path(out) if out else Path(os.path.dirname(os.path.abspath(checkpoint))) / f"pseudo_{kind}"
    map_size = output_size(model, image_size, device) if soft else image_size
    store = PseudoLabelStore.create(folder, kind, meta["num_classes"], map_size, checkpoint=os.path.abspath(checkpoint),
                                    stage=str(meta.get("stage", "")), checkpoint_digest=content_digest(checkpoint))
    missing = store.missing([s.name for s in reader.samples])
    if dist.is_main():
        check_free_space(folder, store.estimate_bytes(len(missing)))
    generate_pseudo_labels(model, reader, store, device, soft, meta["input"]["mean"], meta["input"]["std"], progress)
    if dist.is_main():
        print(f"{folder}: {kind} pseudo labels for {len(reader)} images ({len(reader) - len(missing)} were there)")
    return folder


def selection_thresholds(store: PseudoLabelStore, names: list[str], threshold: float, class_keep: float,
                         device: torch.device | str = "cpu", collective: bool = False,
                         progress: bool = True) -> float | np.ndarray:
    """What training keeps of hard pseudo labels (see threshold_labels): ``threshold`` alone when
    ``class_keep`` is 0, else per-class thresholds from the confidences of every image in ``names``
    (class_balanced_thresholds). ``collective``: under torch.distributed each process reads its share of
    the images and the counts are summed (every process must then call)."""
    if class_keep <= 0:
        return threshold
    shared = collective and dist.is_initialized()
    mine = names[dist.rank()::dist.world_size()] if shared else names
    hist = store.confidence_histogram(mine, progress=progress and dist.is_main())
    if shared:
        hist = dist.all_reduce_sum(torch.from_numpy(hist).to(device)).cpu().numpy()
    return class_balanced_thresholds(hist, threshold, class_keep)


def hard_label_quality(cfg, folder: str | Path, threshold: float, class_keep: float = 0.0,
                       progress: bool = True) -> dict[str, float]:
    """How good stored hard labels are, where the target training set has labels (benchmarks).

    ``miou``: argmax labels against the truth over every labelled pixel; ``miou_kept``: over the pixels
    training keeps (``threshold``, and the class-balanced share ``class_keep``); ``kept_fraction``: share of
    labelled pixels kept. Empty when there is no ground truth.
    """
    from ..data.readers import target_reader
    from ..data.labels import IGNORE_INDEX
    from ..data.pseudo_labels import threshold_labels
    from .metrics import ConfusionMatrix

    reader = target_reader(cfg, with_labels=True)
    if not reader.has_labels:
        return {}
    store = PseudoLabelStore.open(folder, kind="hard", num_classes=cfg.data.num_classes)
    keep_above = selection_thresholds(store, [s.name for s in reader.samples], threshold, class_keep,
                                      progress=progress)
    every, kept = ConfusionMatrix(cfg.data.num_classes), ConfusionMatrix(cfg.data.num_classes)
    kept_pixels = labelled = 0
    for i in tqdm(range(len(reader)), desc="pseudo-label quality", disable=not progress, leave=False):
        sample = reader[i]
        truth = torch.from_numpy(sample["label"]).long()
        label, conf = store.read_hard(sample["name"])
        if label.shape != sample["label"].shape:
            label = cv2.resize(label, truth.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
            conf = cv2.resize(conf, truth.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        thresholded = torch.from_numpy(threshold_labels(label, conf, keep_above)).long()
        every.update(torch.from_numpy(label).long(), truth)
        keep = thresholded != IGNORE_INDEX
        kept.update(thresholded.masked_fill(~keep, 0), truth.masked_fill(~keep, IGNORE_INDEX))
        valid = truth != IGNORE_INDEX
        labelled += int(valid.sum())
        kept_pixels += int((valid & keep).sum())
    def finite(value: float) -> float | None:
        return None if value != value else value  # nothing kept: no score (JSON has no NaN)

    return {"miou": finite(every.miou()), "miou_kept": finite(kept.miou()),
            "kept_fraction": kept_pixels / max(labelled, 1), "threshold": threshold, "class_keep": class_keep}
