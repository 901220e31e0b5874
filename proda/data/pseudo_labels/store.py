"""A folder of pseudo labels, one atomically written file per image, resumable and checked on opening."""
from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...errors import DataError, StalePseudoLabelsError
from ...io import write_bytes, write_json
from .codec import DEFAULT_CONF_STEPS, FORMAT_VERSION, decode_hard, decode_soft, hard_header, soft_header
from .selection import confidence_codes


_KINDS = ("soft", "hard")
_NAME_OK = re.compile(r"^[^./\\\x00][^/\\\x00]*$")
# Per-image size before any file exists, for the disk-space check: the largest measured ratios with margin
# (soft, all classes: <= 33 % of float32; top-3/4: <= 5 / 8 %; hard: <= 0.41 byte/pixel for labels + codes).
def _prior_soft_ratio(topk: int | None) -> float:
    return 0.35 if topk is None else 0.02 + 0.03 * topk


_PRIOR_HARD_BYTES_PER_PIXEL = 0.5


class PseudoLabelStore:
    """A folder of pseudo labels: ``meta.json`` plus one ``<image name>.soft`` / ``.hard`` file per image.

    Every file is written atomically (a killed generation leaves whole files only), so resuming is
    ``store.missing(names)``; processes generating disjoint names can share one store. ``meta.json`` says
    what the files are (kind, classes, map size, encoding) and where they came from (checkpoint, stage,
    date), so that stage 1 cannot silently read labels of the wrong kind, class count or model.
    """

    META = "meta.json"

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.kind: str = meta["kind"]
        self.num_classes: int = int(meta["num_classes"])
        self.map_size: tuple[int, int] = (int(meta["map_size"][0]), int(meta["map_size"][1]))
        self.suffix = "." + self.kind

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        kind: str,
        num_classes: int,
        map_size: tuple[int, int],
        *,
        checkpoint: str = "",
        stage: str = "",
        encoding: dict[str, Any] | None = None,
        date: str | None = None,
        checkpoint_digest: str = "",
    ) -> "PseudoLabelStore":
        """A new store, or the existing one at ``root`` if it holds the same labels (resuming a generation).

        ``map_size`` is (w, h): the network output size for soft labels, the full label size for hard ones.
        ``encoding`` records the encoder's arguments (e.g. ``{"topk": None}`` or ``{"conf_steps": 1000}``);
        files describe themselves, so it only informs ``estimate_bytes`` and readers of the folder.
        An existing store made for another kind, class count, size, encoding, checkpoint or stage is a
        DataError: resuming into it would mix labels of two models. With ``checkpoint_digest`` (the
        checkpoint's content digest) on both sides the checkpoint is compared by content, so a moved or
        copied run folder resumes; without, by path.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        meta = {
            "kind": kind,
            "num_classes": int(num_classes),
            "map_size": [int(map_size[0]), int(map_size[1])],
            "format_version": FORMAT_VERSION,
            "encoding": dict(encoding or {}),
            "provenance": {
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": str(checkpoint_digest),
                "stage": str(stage),
                "date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        }
        root = Path(root)
        if (root / cls.META).exists():
            store = cls.open(root)
            old = store.meta
            for key in ("kind", "num_classes", "map_size", "format_version", "encoding"):
                if old.get(key) != meta[key]:
                    raise DataError(f"{root}: existing pseudo labels have {key} {old.get(key)!r}, not {meta[key]!r}")
            before, now = old["provenance"], meta["provenance"]
            by_content = bool(before.get("checkpoint_sha256") and checkpoint_digest)
            if by_content and before["checkpoint_sha256"] != now["checkpoint_sha256"]:
                raise StalePseudoLabelsError(
                    f"{root}: existing pseudo labels come from another checkpoint (made from "
                    f"{before.get('checkpoint')!r}, whose content differs from {now['checkpoint']!r}); "
                    "use another folder or delete this one"
                )
            for key in ("stage",) if by_content else ("checkpoint", "stage"):
                if before.get(key) != now[key]:
                    raise StalePseudoLabelsError(
                        f"{root}: existing pseudo labels come from {key} {before.get(key)!r}, "
                        f"not {now[key]!r}; use another folder or delete this one"
                    )
            return store
        write_json(root / cls.META, meta)
        return cls(root, meta)

    @classmethod
    def open(
        cls, root: str | os.PathLike, kind: str | None = None, num_classes: int | None = None
    ) -> "PseudoLabelStore":
        """The store at ``root``, checked against what the caller expects (DataError naming the folder)."""
        root = Path(root)
        path = root / cls.META
        if not root.is_dir():
            raise DataError(f"{root}: pseudo-label folder not found")
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{root}: not a pseudo-label folder ({cls.META} is missing)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc})") from None
        try:
            ok = (
                meta["kind"] in _KINDS
                and isinstance(meta["num_classes"], int)
                and len(meta["map_size"]) == 2
                and isinstance(meta["provenance"], dict)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise DataError(f"{path}: malformed pseudo-label metadata")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{root}: pseudo-label format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        if kind is not None and meta["kind"] != kind:
            raise DataError(f"{root}: holds {meta['kind']} pseudo labels, {kind} labels are needed here")
        if num_classes is not None and meta["num_classes"] != num_classes:
            raise DataError(f"{root}: pseudo labels have {meta['num_classes']} classes, the model has {num_classes}")
        return cls(root, meta)

    def path(self, name: str) -> Path:
        """File of image ``name`` (the image file's stem, e.g. ``aachen_000000_000019_leftImg8bit``)."""
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise ValueError(f"invalid image name {name!r} (a file stem, no folders, not starting with '.')")
        return self.root / (name + self.suffix)

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` (from encode_soft / encode_hard) for ``name``, atomically; checks it fits the store."""
        if self.kind == "soft":
            hd = soft_header(data)
            if hd.num_classes != self.num_classes or hd.size != self.map_size:
                raise ValueError(
                    f"{name}: soft labels of {hd.num_classes} classes at {hd.size}, "
                    f"store {self.root} holds {self.num_classes} at {self.map_size}"
                )
        else:
            hh = hard_header(data)
            if hh.size != self.map_size:
                raise ValueError(f"{name}: hard labels at {hh.size}, store {self.root} holds {self.map_size}")
        write_bytes(self.path(name), data)

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names (in the given order) that have no file yet: what a resumed generation still has to do."""
        names = list(names)
        for n in names:
            self.path(n)  # validate
        with os.scandir(self.root) as entries:
            present = {e.name for e in entries if e.name.endswith(self.suffix)}
        return [n for n in names if n + self.suffix not in present]

    def _read(self, name: str, kind: str) -> bytes:
        if self.kind != kind:
            raise DataError(f"{self.root}: holds {self.kind} pseudo labels, not {kind}")
        path = self.path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: no pseudo label for image {name!r} (generation incomplete?)") from None

    def read_soft(self, name: str) -> np.ndarray:
        """float32 [C, h, w] probabilities of image ``name``."""
        path, data = self.path(name), self._read(name, "soft")
        try:
            probs = decode_soft(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        if probs.shape != (self.num_classes, self.map_size[1], self.map_size[0]):
            raise DataError(f"{path}: soft labels of shape {probs.shape}, the store's meta says "
                            f"{(self.num_classes, self.map_size[1], self.map_size[0])}")
        return probs

    def read_hard(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(label uint8 [H, W], confidence float32 [H, W])`` of image ``name``; see threshold_labels."""
        return self._read_hard(name)[:2]

    def _read_hard(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        path, data = self.path(name), self._read(name, "hard")
        try:
            label, conf = decode_hard(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        if label.shape != (self.map_size[1], self.map_size[0]):
            raise DataError(f"{path}: hard labels of shape {label.shape}, the store's meta says {self.map_size[::-1]}")
        return label, conf, hard_header(data).conf_steps

    def confidence_histogram(self, names: Iterable[str], progress: bool = False) -> np.ndarray:
        """int64 ``[C, N + 1]``: pixels of each predicted class per confidence code, over images ``names``
        (for :func:`class_balanced_thresholds`; codes on the grid of :data:`DEFAULT_CONF_STEPS`)."""
        from tqdm import tqdm

        c, n = self.num_classes, DEFAULT_CONF_STEPS
        hist = np.zeros(c * (n + 1), dtype=np.int64)
        for name in tqdm(list(names), desc="pseudo-label confidences", disable=not progress, leave=False):
            label, conf, steps = self._read_hard(name)
            if steps != n:
                raise DataError(f"{self.path(name)}: confidences on a grid of 1/{steps}; class-balanced "
                                f"thresholds need proda's grid of 1/{n} (regenerate with `proda pseudo-label`)")
            valid = label < c
            codes = np.clip(confidence_codes(conf[valid], n), 0, n)
            hist += np.bincount(label[valid].astype(np.int64) * (n + 1) + codes, minlength=c * (n + 1))
        return hist.reshape(c, n + 1)

    def estimate_bytes(self, n_images: int) -> int:
        """Disk bytes ``n_images`` more files will take (for a free-space check before generating).

        From the files already written (mean size + 10 %) when there are some, else a conservative prior
        (the largest ratios measured on synthetic maps, with margin).
        """
        sizes = []
        with os.scandir(self.root) as entries:
            for e in entries:
                if e.name.endswith(self.suffix) and not e.name.startswith(".") and e.is_file():
                    sizes.append(e.stat().st_size)
                    if len(sizes) >= 64:
                        break
        if sizes:
            per_image = 1.1 * float(np.mean(sizes))
        else:
            w, h = self.map_size
            if self.kind == "soft":
                topk = self.meta.get("encoding", {}).get("topk")
                per_image = 4.0 * self.num_classes * w * h * _prior_soft_ratio(topk)
            else:
                per_image = _PRIOR_HARD_BYTES_PER_PIXEL * w * h
        return int(math.ceil(per_image * n_images)) + 4096
