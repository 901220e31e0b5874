"""Class prototypes: per-image class-mean features and the bank that averages them (docs/method.md 1.3, 2.1.11).

The original keeps ``objective_vectors [C,256]`` and ``objective_vectors_num [C]`` and updates them one
(image, class) mean at a time. :class:`PrototypeBank` does the same arithmetic, vectorised over classes and
sequential over images in batch order, so the numbers match the original's loop:

* initialisation (``calc_prototype.py``): running mean ``η_k ← (η_k·n_k + v)/(n_k+1)``,
  ``n_k ← min(n_k+1, 3000)``;
* training (``--moving_prototype``): ``η_k ← (1−m)·η_k + m·v`` with m = 1e-4, up to B updates per class per
  iteration, classes absent from an image untouched.

Classes never seen keep a zero prototype (finite, so distances and softmaxes stay finite; a zero prototype
is simply far from every real feature). :meth:`PrototypeBank.unseen_classes` lists them so the caller can warn.

Distributed training: each process computes ``class_mean_features`` on its own images, then
:func:`proda.engine.dist.all_gather_rows` concatenates all processes' results in rank order, so every process applies the
same B·N sequential updates a single process with the whole batch would, and the banks stay identical.
Rank order is batch order because the training streams (proda.engine.data) give rank r the r-th B-slice of
each global micro-batch (with gradient accumulation, stage 1 gathers once per micro-batch, in order). The
per-image means are gathered rather than per-class sums and counts all-reduced: the sequential per-image
moving average is not a function of the batch's summed statistics, so only the gathered means reproduce it
(tests/engine/test_distributed.py checks 2 processes against 1 to float rounding).
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import cv2
import torch
from tqdm import tqdm

from ..checkpoint_io import load_checkpoint
from ..data.labels import IGNORE_INDEX
from ..data.readers import target_reader
from ..data.transforms import image_to_tensor
from ..engine import dist
from ..engine.device import no_autocast, prepare_device
from ..errors import CheckpointError
from ..io import atomic_write
from ..models.build import normalize
from ..models.weights import load_model_for_config

__all__ = ["class_mean_features", "PrototypeBank", "compute_prototypes", "prototypes_command"]

FORMAT = "proda-prototypes-1"


def class_mean_features(
    feat: torch.Tensor,
    assign: torch.Tensor,
    num_classes: int,
    min_pixels: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, per class, the mean feature of the pixels assigned to it: ([B,C,D] float32, [B,C] bool).

    ``feat`` is [B,D,H,W], ``assign`` [B,H,W] class ids (the EMA argmax in ProDA; ``ignore_index`` pixels
    are skipped; other values must lie in [0, num_classes)). A class is *present* in an image when it has at
    least ``min_pixels`` pixels (the original's 10, which keeps a few stray pixels from dragging a
    prototype); means of absent classes are 0. One batched matrix product with a one-hot assignment, no loop
    over classes, float32 whatever the autocast state.

    (The original also skips a mean vector whose components sum to exactly 0; for real features that is a
    measure-zero event and is not reproduced.)
    """
    if feat.dim() != 4 or assign.shape != (feat.shape[0], *feat.shape[2:]):
        raise ValueError(
            f"expected feat [B,D,H,W] and assign [B,H,W], got {tuple(feat.shape)} and {tuple(assign.shape)}"
        )
    b, d = feat.shape[:2]
    with no_autocast(feat.device):
        f = feat.float().reshape(b, d, -1)  # [B,D,N]
        a = assign.to(device=feat.device, dtype=torch.long).reshape(b, -1)
        a = torch.where(a == ignore_index, torch.full_like(a, num_classes), a)  # extra bin, dropped below
        onehot = torch.nn.functional.one_hot(a, num_classes + 1).to(torch.float32)  # [B,N,C+1]
        sums = torch.bmm(f, onehot)[:, :, :num_classes].transpose(1, 2)  # [B,C,D]
        counts = onehot.sum(dim=1)[:, :num_classes]  # [B,C], exact integers in float32 up to 2^24 px
    present = counts >= max(int(min_pixels), 1)
    means = sums / counts.clamp_min(1).unsqueeze(-1)
    means = torch.where(present.unsqueeze(-1), means, torch.zeros((), device=means.device))
    return means, present


class PrototypeBank:
    """Prototypes η [C,D] (float32) with the original's initial-accumulation counts n [C] (capped at 3000).

    ``initialized[k]`` is True once class k received at least one mean (from either update); unseen classes
    keep a zero prototype. ``provenance`` holds where the prototypes came from (set by :meth:`save`/:meth:`load`).
    """

    def __init__(
        self, num_classes: int, dim: int, device: torch.device | str | None = None, count_cap: int = 3000
    ) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be positive, got {num_classes} and {dim}")
        self.num_classes, self.dim, self.count_cap = int(num_classes), int(dim), int(count_cap)
        self.prototypes = torch.zeros(self.num_classes, self.dim, dtype=torch.float32, device=device)
        self.counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        self.initialized = torch.zeros(self.num_classes, dtype=torch.bool, device=device)
        self.provenance: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return self.prototypes.device

    def to(self, device: torch.device | str) -> "PrototypeBank":
        self.prototypes = self.prototypes.to(device)
        self.counts = self.counts.to(device)
        self.initialized = self.initialized.to(device)
        return self

    def unseen_classes(self) -> list[int]:
        """Classes that never received a mean (zero prototype): worth a warning at stage start."""
        return [int(k) for k in torch.nonzero(~self.initialized).flatten().tolist()]

    def _check(self, means: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if means.dim() != 3 or means.shape[1:] != (self.num_classes, self.dim) or present.shape != means.shape[:2]:
            raise ValueError(
                f"expected means [B,{self.num_classes},{self.dim}] and present [B,{self.num_classes}], "
                f"got {tuple(means.shape)} and {tuple(present.shape)}"
            )
        means = means.detach().to(device=self.device, dtype=torch.float32)
        return means, present.to(device=self.device, dtype=torch.bool)

    @torch.no_grad()
    def accumulate_initial(self, means: torch.Tensor, present: torch.Tensor) -> None:
        """The original's ``calc_prototype`` running mean, one image at a time in batch order.

        ``η_k ← (η_k·n_k + v)/(n_k+1)`` then ``n_k ← min(n_k+1, cap)``: an exact mean of the first ``cap``
        vectors, after which each new vector still enters with weight 1/(cap+1).
        """
        means, present = self._check(means, present)
        for v, p in zip(means, present):
            n = self.counts.to(torch.float32).unsqueeze(1)
            updated = (self.prototypes * n + v) / (n + 1)
            self.prototypes = torch.where(p.unsqueeze(1), updated, self.prototypes)
            self.counts = torch.where(p, (self.counts + 1).clamp_max(self.count_cap), self.counts)
            self.initialized |= p

    @torch.no_grad()
    def momentum_update(self, means: torch.Tensor, present: torch.Tensor, momentum: float = 1e-4) -> None:
        """The training-time moving average ``η_k ← (1−m)·η_k + m·v``, one image at a time in batch order.

        A class present in several images moves several times per call, as in the original; absent classes
        are untouched. ``counts`` (initialisation bookkeeping) is left as is.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"prototype momentum must be in [0, 1], got {momentum}")
        means, present = self._check(means, present)
        for v, p in zip(means, present):
            updated = self.prototypes * (1.0 - momentum) + momentum * v
            self.prototypes = torch.where(p.unsqueeze(1), updated, self.prototypes)
            self.initialized |= p

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "count_cap": self.count_cap,
            "prototypes": self.prototypes.detach().cpu().clone(),
            "counts": self.counts.cpu().clone(),
            "initialized": self.initialized.cpu().clone(),
            "provenance": dict(self.provenance),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        protos = torch.as_tensor(state["prototypes"], dtype=torch.float32)
        if tuple(protos.shape) != (self.num_classes, self.dim):
            raise CheckpointError(
                f"prototypes of shape {tuple(protos.shape)} do not fit "
                f"{self.num_classes} classes × {self.dim} channels"
            )
        if not bool(torch.isfinite(protos).all()):
            raise CheckpointError("prototypes contain non-finite values")
        self.prototypes = protos.to(self.device).clone()
        counts = state.get("counts", torch.zeros(self.num_classes))
        self.counts = torch.as_tensor(counts, dtype=torch.long).to(self.device)
        init = state.get("initialized")
        if init is None:  # the original's bare tensor: a class was seen when its prototype is non-zero
            self.initialized = (self.prototypes != 0).any(1)
        else:
            self.initialized = torch.as_tensor(init, dtype=torch.bool).to(self.device)
        self.count_cap = int(state.get("count_cap", self.count_cap))
        self.provenance = dict(state.get("provenance", {}))

    def save(self, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> None:
        """Write the bank atomically; ``provenance`` (checkpoint, iteration, dataset, ...) is stored with it.

        A ``date`` (UTC, ISO 8601) is added when the provenance has none.
        """
        prov = {**self.provenance, **(provenance or {})}
        prov.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.provenance = prov
        with atomic_write(path, "wb") as f:
            torch.save(self.state_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str = "cpu") -> "PrototypeBank":
        """Read a bank written by :meth:`save`, the original's bare ``torch.save(tensor[C,D])`` file, or the
        prototypes inside a proda checkpoint (a converted ProDA stage-1 file, or a stage-1 run).

        For a bare tensor, counts are unknown (0) and a class counts as initialised when its row is non-zero.
        """
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: prototype file not found")
        obj = load_checkpoint(path, map_location=map_location)
        if isinstance(obj, dict) and obj.get("format") == "proda":
            # a proda checkpoint: a converted original stage-1 file, or a stage-1 run's live prototypes
            obj = obj.get("prototypes") or obj.get("stage_state", {}).get("prototypes")
            if obj is None:
                raise CheckpointError(f"{path}: a proda checkpoint without prototypes")
        if isinstance(obj, torch.Tensor):
            if obj.dim() != 2:
                raise CheckpointError(f"{path}: expected a [C,D] prototype tensor, got shape {tuple(obj.shape)}")
            obj = {"prototypes": obj, "provenance": {"source": str(path), "format": "original [C,D] tensor"}}
        if not isinstance(obj, dict) or "prototypes" not in obj:
            raise CheckpointError(f"{path}: not a prototype file (no 'prototypes' entry)")
        protos = obj["prototypes"]
        num_classes = int(obj.get("num_classes", protos.shape[0]))
        dim = int(obj.get("dim", protos.shape[1]))
        bank = cls(num_classes, dim, device=map_location)
        try:
            bank.load_state_dict(obj)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        return bank


@torch.no_grad()
def compute_prototypes(
    model: torch.nn.Module,
    reader,
    device: torch.device,
    num_classes: int,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    input_size: tuple[int, int] | None = None,
    min_pixels: int = 10,
    progress: bool = True,
) -> PrototypeBank:
    """Initial prototypes: class centroids of the head features over the target training set.

    As the original ``calc_prototype.py``: the model in eval mode on un-augmented target images, pixels
    assigned by the model's own argmax at network output resolution, per image and class with at least
    ``min_pixels`` pixels the mean feature, aggregated by the running mean of
    :meth:`PrototypeBank.accumulate_initial`. The original makes four identical passes (its issue #53 asks
    why; with deterministic eval passes they only re-weight once counts hit the cap): one pass is made here.
    """
    model.eval()
    bank: PrototypeBank | None = None
    n = len(reader)
    # every rank runs the same number of steps (all-gather needs them), padding with a repeat of its last image
    per_rank = -(-n // dist.world_size())
    for k in tqdm(range(per_rank), desc="prototypes", disable=not (progress and dist.is_main())):
        i = min(dist.rank() + k * dist.world_size(), n - 1)
        real = dist.rank() + k * dist.world_size() < n
        image = reader[i]["image"]
        if input_size is not None and (image.shape[1], image.shape[0]) != tuple(input_size):
            image = cv2.resize(image, tuple(input_size), interpolation=cv2.INTER_LINEAR)
        out = model(normalize(image_to_tensor(image)[None].to(device), mean, std))
        feat = out["feat"].float()
        if bank is None:
            bank = PrototypeBank(num_classes, feat.shape[1], device=device)
        means, present = class_mean_features(feat, out["out"].argmax(1), num_classes, min_pixels)
        present &= real
        means, present = dist.all_gather_rows(means, present)
        bank.accumulate_initial(means, present)
    if bank is None:
        raise ValueError("no target images to compute prototypes from")
    return bank


def prototypes_command(checkpoint: str, cfg, out: str | None, progress: bool = True) -> str:
    """`proda prototypes`: compute from a checkpoint over the config's target training split and save."""
    device = prepare_device(cfg.run.device)
    model, meta = load_model_for_config(checkpoint, cfg, device)
    reader = target_reader(cfg, with_labels=False)
    bank = compute_prototypes(model, reader, device, meta["num_classes"], meta["input"]["mean"], meta["input"]["std"],
                              min_pixels=cfg.stage1.prototype_min_pixels, progress=progress)
    path = out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "prototypes.pth")
    provenance: dict[str, Any] = {
        "checkpoint": os.path.abspath(checkpoint), "dataset": cfg.data.target_root, "split": cfg.data.target_split,
        "num_images": len(reader), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if dist.is_main():
        bank.save(path, provenance)
        unseen = bank.unseen_classes()
        names = meta["class_names"]
        print(f"wrote {path}: {bank.num_classes} prototypes of dimension {bank.dim} from {len(reader)} images"
              + (f"; never predicted (zero prototype): {', '.join(names[k] for k in unseen)}" if unseen else ""))
    return path
