"""Writers of tiny datasets in the exact official layouts, for tests (``from fixtures import write_gta5``).

Every writer returns the ground-truth *raw* label arrays it wrote (GTA5 palette indices, SYNTHIA class ids,
Cityscapes label ids), so a test can compare a reader's output with ``lut[raw]``.

Images are not random noise: R = (raw label * 7) % 256, G = x * 4 % 256, B = 200. A test can therefore check
that an image and its label are the same sample, aligned, and in RGB (not BGR) order: see ``expected_image``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from proda.data import labels
from proda.data.labels import CITYSCAPES_LABELS, CITYSCAPES_MAX_ID, SYNTHIA_MAX_ID
from proda.io import encode_palette_png, encode_png

DEFAULT_SIZE = (32, 16)  # (W, H)
DEFAULT_SPLIT_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}


def put(path: str | Path, data: bytes) -> None:
    """Write a fixture file directly: proda's atomic, fsync'ed writes would only slow the tests down."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG (or grey/16-bit, whatever ``rgb`` holds; see proda.io.encode_png)."""
    put(path, encode_png(rgb))


def gta5_palette() -> np.ndarray:
    """[256, 3] palette of GTA5 labels: index = Cityscapes label id, colour = its Cityscapes colour."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        if lab.id >= 0:
            pal[lab.id] = lab.color
    return pal


def expected_image(raw: np.ndarray) -> np.ndarray:
    """The HxWx3 RGB image the writers store next to the raw label ``raw``."""
    h, w = raw.shape
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[..., 0] = (raw.astype(np.int64) * 7) % 256
    image[..., 1] = (np.arange(w) * 4 % 256)[None, :]
    image[..., 2] = 200
    return image


def random_ids(rng: np.random.Generator, size: tuple[int, int], ids: Iterable[int]) -> np.ndarray:
    """HxW uint8 raw label of values drawn from ``ids``; ``size`` is (W, H)."""
    return rng.choice(np.asarray(list(ids), dtype=np.uint8), size=(size[1], size[0]))


def write_gta5_label(path: str | Path, raw: np.ndarray) -> None:
    """A GTA5 label: 8-bit palette PNG (mode P) whose indices are the Cityscapes ids."""
    put(path, encode_palette_png(raw, gta5_palette()))


def write_synthia_label(path: str | Path, classes: np.ndarray, instances: np.ndarray | None = None) -> None:
    """A SYNTHIA GT/LABELS file: 16-bit 3-channel PNG, class in R, instance in G, written by cv2 as BGR.

    B holds a large value so that a reader taking the wrong channel sees ids far out of range.
    """
    h, w = classes.shape
    if instances is None:
        instances = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 37 + 300).astype(np.uint16)
    rgb = np.stack([classes.astype(np.uint16), instances.astype(np.uint16), np.full((h, w), 60000, np.uint16)], -1)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    put(path, buf.tobytes())


def write_cityscapes_label(path: str | Path, raw: np.ndarray) -> None:
    """A Cityscapes ``*_gtFine_labelIds.png``: 8-bit grey (mode L) label ids."""
    put(path, encode_png(np.asarray(raw, dtype=np.uint8)))


def truncate(path: str | Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its bytes, like an interrupted copy."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_gta5(
    root: str | Path,
    n: int = 3,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    ids: Iterable[int] = range(CITYSCAPES_MAX_ID + 1),
) -> dict[str, np.ndarray]:
    """``root/images/NNNNN.png`` + ``root/labels/NNNNN.png`` (1-based, 5 digits); returns ``{name: raw ids}``."""
    root, rng, ids = Path(root), np.random.default_rng(seed), list(ids)
    out: dict[str, np.ndarray] = {}
    for k in range(1, n + 1):
        name = f"{k:05d}"
        raw = random_ids(rng, size, ids)
        write_image(root / "images" / f"{name}.png", expected_image(raw))
        write_gta5_label(root / "labels" / f"{name}.png", raw)
        out[name] = raw
    return out


def write_synthia(
    root: str | Path,
    n: int = 3,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    ids: Iterable[int] = range(SYNTHIA_MAX_ID + 1),
) -> dict[str, np.ndarray]:
    """``root/RGB/NNNNNNN.png`` + ``root/GT/LABELS/NNNNNNN.png`` (0-based, 7 digits); returns ``{name: class ids}``."""
    root, rng, ids = Path(root), np.random.default_rng(seed), list(ids)
    out: dict[str, np.ndarray] = {}
    for k in range(n):
        name = f"{k:07d}"
        raw = random_ids(rng, size, ids)
        write_image(root / "RGB" / f"{name}.png", expected_image(raw))
        write_synthia_label(root / "GT" / "LABELS" / f"{name}.png", raw)
        out[name] = raw
    return out


def cityscapes_paths(root: str | Path, split: str, name: str) -> tuple[Path, Path]:
    """(image, labelIds) paths of the sample ``name`` (``<city>_<seq>_<frame>_leftImg8bit``)."""
    root, city, stem = Path(root), name.split("_")[0], name[: -len("_leftImg8bit")]
    return (
        root / "leftImg8bit" / split / city / f"{name}.png",
        root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
    )


def write_cityscapes(
    root: str | Path,
    split_cities: dict[str, list[str]] | None = None,
    per_city: int = 2,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    ids: Iterable[int] = range(CITYSCAPES_MAX_ID + 1),
) -> dict[str, dict[str, np.ndarray]]:
    """Cityscapes fine layout; returns ``{split: {"<city>_<seq>_<frame>_leftImg8bit": raw label ids}}``.

    Besides ``*_gtFine_labelIds.png`` it writes the other gtFine files of the real download (``_color``,
    16-bit ``_instanceIds``, ``_polygons.json``) so readers are tested to pick the right one.
    Default cities: two in train (aachen, bochum), one in val (frankfurt).
    """
    root, rng, ids = Path(root), np.random.default_rng(seed), list(ids)
    palette = gta5_palette()
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, cities in (split_cities or DEFAULT_SPLIT_CITIES).items():
        out[split] = {}
        for city in cities:
            for seq in range(per_city):
                name = f"{city}_{seq:06d}_000019_leftImg8bit"
                raw = random_ids(rng, size, ids)
                image_path, label_path = cityscapes_paths(root, split, name)
                write_image(image_path, expected_image(raw))
                write_cityscapes_label(label_path, raw)
                stem = str(label_path)[: -len("_labelIds.png")]
                write_image(f"{stem}_color.png", palette[raw])
                write_image(f"{stem}_instanceIds.png", raw.astype(np.uint16) * 1000 + 1)
                Path(f"{stem}_polygons.json").write_text(
                    json.dumps({"imgHeight": size[1], "imgWidth": size[0], "objects": []})
                )
                out[split][name] = raw
    return out


# -- folder datasets (`dataset.yaml`) ---------------------------------------------------------------------

FOLDER_CLASSES = ["background", "road", "lane_marking", "vehicle", "person", "vegetation"]
FOLDER_VALUES = {0: 255, 10: 0, 20: 1, 30: 2, 40: 3, 50: 4, 60: 5}  # raw label value -> train id


def write_folder(
    root: str | Path,
    splits: Iterable[str] | None = ("train", "val"),
    n: int = 3,
    size: tuple[int, int] = DEFAULT_SIZE,
    labelled: bool = True,
    shift: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A folder dataset of the 6 :data:`FOLDER_CLASSES` with labels in raw values (:data:`FOLDER_VALUES`),
    ``images/<split>/seq_a/<k>.jpg`` + ``labels/<split>/seq_a/<k>_mask.png`` (no split folders when
    ``splits`` is None). Each image is its label's class colour plus ``shift`` (a domain shift) and noise, so
    a model can learn it. Returns ``{"<split>/seq_a/<k>": raw label}``."""
    import yaml

    root = Path(root)
    descriptor = {"classes": FOLDER_CLASSES, "images": "images", "labels": "labels" if labelled else None,
                  "image_suffix": ".jpg", "label_suffix": "_mask.png", "label_values": FOLDER_VALUES}
    if splits is not None:
        descriptor["splits"] = list(splits)
    put(root / "dataset.yaml", yaml.safe_dump(descriptor, sort_keys=False).encode())
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 200, size=(256, 3))
    written = {}
    for split in (splits or [None]):
        for k in range(n):
            raw = np.full((size[1], size[0]), 10, dtype=np.uint8)  # background, with blocks of the other values
            for value in rng.choice(list(FOLDER_VALUES), size=4):
                x, y = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 6)
                raw[y:y + 6, x:x + 8] = value
            rel = Path(*([split] if split else []), "seq_a", f"{k:04d}")
            image = np.clip(colours[raw] + shift + rng.integers(-10, 10, raw.shape + (3,)), 0, 255).astype(np.uint8)
            ok, jpg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            put(root / "images" / rel.with_suffix(".jpg"), jpg.tobytes())
            if labelled:
                put(root / "labels" / rel.parent / f"{rel.name}_mask.png", encode_png(raw))
            written[rel.as_posix()] = raw
    return written


# ------------------------------------------------------------------------------------- ACDC, Dark Zurich
ACDC_SIZE = (6, 4)  # (W, H)
ACDC_ROAD, ACDC_SKY = 7, 23  # Cityscapes label ids (trainIds 0 and 10)
# One recording per condition, as in ACDC (sequence names are unique across the dataset)
ACDC_SEQUENCES = {"fog": "GOPR0475", "night": "GOPR0351", "rain": "GOPR0400", "snow": "GOPR0122"}


def half_road_half_sky(size: tuple[int, int]) -> np.ndarray:
    raw = np.full(size[::-1], ACDC_ROAD, dtype=np.uint8)
    raw[:, size[0] // 2:] = ACDC_SKY
    return raw


# Ground truth of every val image, per condition: a road-only model then scores (hand-checked below)
# fog 100, night 25 (road 12/24, sky 0), rain 0 (road 0/24, sky 0), snow 100.
ACDC_VAL_PATTERNS = {
    "fog": lambda size: np.full(size[::-1], ACDC_ROAD, np.uint8),
    "night": half_road_half_sky,
    "rain": lambda size: np.full(size[::-1], ACDC_SKY, np.uint8),
    "snow": lambda size: np.full(size[::-1], ACDC_ROAD, np.uint8),
}


def _write_scene(path: Path, raw: np.ndarray) -> None:
    put(path, encode_png(expected_image(raw)))


def write_acdc(root: Path, label_formats=("labelIds",), frames: int = 2, seed: int = 0,
               size: tuple[int, int] = ACDC_SIZE) -> dict[str, np.ndarray]:
    """ACDC's layout with every condition and split, reference images beside; returns {image stem: raw ids}."""
    rng = np.random.default_rng(seed)
    raws = {}
    for condition, seq in ACDC_SEQUENCES.items():
        for split in ("train", "val", "test"):
            for k in range(frames):
                name = f"{seq}_frame_{100 * ('train', 'val', 'test').index(split) + k:06d}"
                raw = ACDC_VAL_PATTERNS[condition](size) if split == "val" else random_ids(rng, size, (0, ACDC_ROAD, 8, ACDC_SKY, 26))
                _write_scene(root / "rgb_anon" / condition / split / seq / f"{name}_rgb_anon.png", raw)
                _write_scene(root / "rgb_anon" / condition / f"{split}_ref" / seq / f"{name}_rgb_ref_anon.png", raw)
                if split == "test":
                    continue
                raws[f"{name}_rgb_anon"] = raw
                gt = root / "gt" / condition / split / seq
                if "labelIds" in label_formats:
                    put(gt / f"{name}_gt_labelIds.png", encode_png(raw))
                if "labelTrainIds" in label_formats:
                    put(gt / f"{name}_gt_labelTrainIds.png", encode_png(labels.cityscapes_lut(19)[raw]))
        # a reference image left inside a split folder is not a sample either
        _write_scene(root / "rgb_anon" / condition / "train" / seq / f"{seq}_frame_000999_ref_rgb_anon.png",
                    np.zeros(size[::-1], np.uint8))
    return raws


def write_dark_zurich(root: Path, frames: int = 2, size: tuple[int, int] = ACDC_SIZE) -> dict[str, np.ndarray]:
    """Dark Zurich's layout: unlabelled train at three times of day, labelled night val, unlabelled test."""
    raws = {}
    for t, time in enumerate(("day", "twilight", "night")):
        for k in range(frames):
            name = f"GOPR036{t}_frame_{k:06d}"
            _write_scene(root / "rgb_anon" / "train" / time / f"GOPR036{t}" / f"{name}_rgb_anon.png",
                        np.zeros(size[::-1], np.uint8))
    for k in range(frames):
        name = f"GOPR0356_frame_{k:06d}"
        raws[f"{name}_rgb_anon"] = raw = half_road_half_sky(size)
        _write_scene(root / "rgb_anon" / "val" / "night" / "GOPR0356" / f"{name}_rgb_anon.png", raw)
        _write_scene(root / "rgb_anon" / "val_ref" / "day" / "GOPR0356_ref" / f"{name}_ref_rgb_anon.png", raw)
        put(root / "gt" / "val" / "night" / "GOPR0356" / f"{name}_gt_labelIds.png", encode_png(raw))
        _write_scene(root / "rgb_anon" / "test" / "night" / "GOPR0357" / f"GOPR0357_frame_{k:06d}_rgb_anon.png", raw)
    return raws


# ------------------------------------------------------------------------------------- training views
def target_views(rng: np.random.Generator, cfg, full_size: tuple[int, int], n: int = 2) -> dict:
    """A stage's target batch made by hand: ``n`` random full images of ``full_size`` (W, H), their weak crops
    with the recorded geometry, and strong views with their exact transforms, as the training views make them."""
    import torch

    from proda.data.strong import strong_view
    from proda.data.transforms import WeakCropper, image_to_tensor

    cropper = WeakCropper.from_config(cfg.data)
    views: dict[str, list] = {"full": [], "image": [], "geometry": [], "strong": [], "strong_transform": []}
    for _ in range(n):
        image = rng.integers(0, 256, (full_size[1], full_size[0], 3), dtype=np.uint8)
        geom, crop, _ = cropper(rng, image)
        strong, transform = strong_view(crop, rng)
        for key, value in (("full", image_to_tensor(image)), ("image", image_to_tensor(crop)),
                           ("geometry", geom.to_tensor()), ("strong", image_to_tensor(strong)),
                           ("strong_transform", transform.to_tensor())):
            views[key].append(value)
    return {k: torch.stack(v) for k, v in views.items()}


#: raw Cityscapes ids of the tiny two-domain data of the command-level tests (road, sidewalk, building, sky,
#: person, car, unlabeled)
TINY_IDS = [7, 8, 11, 21, 23, 26, 0]


def write_tiny_domains(root: Path) -> list[str]:
    """A 4-image GTA5 source and a 2-per-city Cityscapes target at 48x24 under ``root``; returns the overrides
    that point a run at them."""
    write_gta5(root / "gta5", n=4, size=(48, 24), ids=TINY_IDS)
    write_cityscapes(root / "cityscapes", per_city=2, size=(48, 24), ids=TINY_IDS)
    return [f"data.source_root={root / 'gta5'}", f"data.target_root={root / 'cityscapes'}"]
