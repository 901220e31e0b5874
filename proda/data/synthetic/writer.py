"""Writing the benchmark: file names in the official GTA5 and Cityscapes layouts, ``meta.json`` and the README,
skipping an up-to-date benchmark, removing stale files, and rendering in parallel processes."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...io import write_bytes, write_json, write_palette_png, write_png
from .render import DEFAULT_SIZE, GENERATOR_VERSION, _check_size, render_scene
from .styles import DEFAULT_GAP, LABEL_PALETTE, SOURCE_STYLE, TARGET_STYLE, DomainStyle, target_style_at

DEFAULT_N_SOURCE = 500
DEFAULT_N_TARGET = 500
DEFAULT_N_VAL = 100
# Synthetic city names (train and val cities are disjoint, as in Cityscapes); image i goes to city i % len.
TRAIN_CITIES = ("aachsynth", "bochpixel", "darmvoxel", "kolnraster")
VAL_CITIES = ("frankmesh", "lindaupoly")
CITYSCAPES_FRAME = 19  # every real Cityscapes fine image is frame 000019 of its sequence


def gta5_name(index: int) -> str:
    """File name of source image ``index`` (0-based): ``00001.png`` ..."""
    return f"{index + 1:05d}.png"


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """``(city, '<city>_<seq:06d>_<frame:06d>')`` of target image ``index`` of ``split`` ('train' or 'val')."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{CITYSCAPES_FRAME:06d}"


def benchmark_files(out: str | Path, n_source: int, n_target: int, n_val: int) -> list[tuple[str, int, Path, Path]]:
    """``(domain, index, image path, label path)`` of every file of a benchmark, in writing order."""
    out = Path(out)
    files = []
    for i in range(n_source):
        files.append(("source", i, out / "gta5" / "images" / gta5_name(i), out / "gta5" / "labels" / gta5_name(i)))
    for domain, split, n in (("target_train", "train", n_target), ("target_val", "val", n_val)):
        for i in range(n):
            city, stem = cityscapes_stem(split, i)
            files.append((domain, i,
                          out / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                          out / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))
    return files


def benchmark_meta(seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, n_source: int = DEFAULT_N_SOURCE,
                   n_target: int = DEFAULT_N_TARGET, n_val: int = DEFAULT_N_VAL, source_style: DomainStyle = SOURCE_STYLE,
                   target_style: DomainStyle = TARGET_STYLE, gap: float = 1.0) -> dict[str, Any]:
    """The content of ``meta.json``: everything the files depend on (plus where they are)."""
    width, height = _check_size(size)
    return {
        "generator": "proda.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": [width, height],
        "n_source": int(n_source),
        "n_target": int(n_target),
        "n_val": int(n_val),
        "source": {"dataset": "gta5", "root": "gta5"},
        "target": {"dataset": "cityscapes", "root": "cityscapes", "train_cities": list(TRAIN_CITIES),
                   "val_cities": list(VAL_CITIES)},
        "gap": float(gap),  # the share of the appearance change that target_style carries (styles.target_style_at)
        "styles": {"source": _jsonable(asdict(source_style)), "target": _jsonable(asdict(target_style))},
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, so a re-read meta.json compares equal


_README = """\
proda synthetic domain-shift benchmark (generator version {version}, seed {seed})

A procedurally generated stand-in for GTA5 -> Cityscapes, written by proda.data.synthetic.write_benchmark.

gta5/images/NNNNN.png, gta5/labels/NNNNN.png        source, {n_source} images ("rendered" look)
cityscapes/leftImg8bit/train/<city>/*.png           target train, {n_target} images ("real camera" look)
cityscapes/leftImg8bit/val/<city>/*.png + gtFine     target val, {n_val} images
cityscapes/gtFine/train/<city>/*_gtFine_labelIds.png target train labels (for the oracle only)

Image size {width}x{height}. Labels are raw Cityscapes label ids (GTA5: palette PNG, index = label id;
Cityscapes: 8-bit grey). Ids 1 (ego vehicle), 4 (static), 9 (parking) and 10 (rail track) occur and are
ignored in evaluation. All parameters, including the domain styles, are in meta.json.
"""

_OWN_FILE = re.compile(r"^(\d{5}\.png|[a-z]+_\d{6}_\d{6}_(leftImg8bit|gtFine_labelIds)\.png)$")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove_stale(out: Path, keep: set[Path]) -> int:
    """Delete benchmark-named PNGs under the benchmark's own folders that the new parameters do not write."""
    removed = 0
    folders = [out / "gta5" / "images", out / "gta5" / "labels"]
    for kind in ("leftImg8bit", "gtFine"):
        for split in ("train", "val"):
            base = out / "cityscapes" / kind / split
            if base.is_dir():
                folders += [d for d in base.iterdir() if d.is_dir()]
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.is_file() and _OWN_FILE.match(f.name) and f not in keep:
                f.unlink()
                removed += 1
        if folder.parent.name in ("train", "val") and not any(folder.iterdir()):
            folder.rmdir()
    return removed


_CHUNK = 25  # images per task handed to a worker process
_WRITE_THREADS = 8


def _write_chunk(job: tuple[int, tuple[int, int], DomainStyle, DomainStyle, list[tuple[str, int, Path, Path]]]) -> int:
    """Render and write a list of images (runs in a worker process or inline); returns how many."""
    seed, size, source_style, target_style, items = job
    with ThreadPoolExecutor(_WRITE_THREADS) as writers:
        pending = []
        for domain, index, img_path, lbl_path in items:
            image, label = render_scene(seed, domain, index, size, source_style, target_style)
            pending.append(writers.submit(write_png, img_path, image))
            if domain == "source":
                pending.append(writers.submit(write_palette_png, lbl_path, label, LABEL_PALETTE))
            else:
                pending.append(writers.submit(write_png, lbl_path, label))
        for f in pending:
            f.result()  # re-raises a failed write
    return len(items)


def write_benchmark(
    out: str | Path,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_source: int = DEFAULT_N_SOURCE,
    n_target: int = DEFAULT_N_TARGET,
    n_val: int = DEFAULT_N_VAL,
    progress: bool = True,
    source_style: DomainStyle = SOURCE_STYLE,
    target_style: DomainStyle = TARGET_STYLE,
    workers: int | None = None,
    gap: float = DEFAULT_GAP,
) -> dict[str, Any]:
    """Write the benchmark under ``out`` (see the module docstring for the layout); return its meta data.

    If ``out/meta.json`` already describes the same parameters, nothing is written (``result['skipped']``
    is True). Otherwise the old ``meta.json`` is removed first, every file is (re)written, PNGs of an
    earlier, larger benchmark are deleted, and ``meta.json`` is written last: an interrupted run never
    looks complete.

    ``workers`` processes render in parallel (default: 2 when there are at least 200 images, else 1); the
    files do not depend on it. Each process writes through a small thread pool, since every write is an
    fsync-ed atomic replace and mostly waits on the disk.

    ``gap`` (0..2, extrapolated above 1) is the share of ``target_style``'s appearance change that the target
    images get (:func:`~.styles.target_style_at`); the default is the calibrated benchmark's.
    """
    out = Path(out)
    for name, n in (("n_source", n_source), ("n_target", n_target), ("n_val", n_val)):
        if int(n) < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if int(n_source) > 99999:
        raise ValueError(f"n_source must be <= 99999 (5-digit GTA5 names), got {n_source}")
    target_style = target_style_at(gap, source_style, target_style)
    meta = benchmark_meta(seed, size, n_source, n_target, n_val, source_style, target_style, gap)
    meta_path = out / "meta.json"
    if meta_path.is_file() and _read_meta(meta_path) == meta:
        return {**meta, "skipped": True, "seconds": 0.0}
    meta_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files = benchmark_files(out, n_source, n_target, n_val)
    removed = _remove_stale(out, {f for _, _, img, lbl in files for f in (img, lbl)})
    total = len(files)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= 200 else 1
    chunks = [files[i: i + _CHUNK] for i in range(0, total, _CHUNK)]
    jobs = [(int(seed), tuple(meta["size"]), source_style, target_style, chunk) for chunk in chunks]
    done, next_report = 0, max(1, total // 10)

    def report(n: int) -> None:
        nonlocal done, next_report
        done += n
        if progress and (done >= next_report or done == total):
            print(f"synth: {done}/{total} images ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
            next_report = done + max(1, total // 10)

    if workers <= 1 or len(chunks) <= 1:
        for job in jobs:
            report(_write_chunk(job))
    else:
        import multiprocessing

        # spawn, not fork: the caller may hold threads (torch, a DataLoader) that fork would copy half-way.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
            for n in pool.map(_write_chunk, jobs):
                report(n)
    write_bytes(out / "README.txt", _README.format(width=meta["size"][0], height=meta["size"][1], **meta).encode())
    write_json(meta_path, meta)
    seconds = time.perf_counter() - t0
    if progress and removed:
        print(f"synth: removed {removed} stale file(s) of an earlier benchmark", file=sys.stderr, flush=True)
    return {**meta, "skipped": False, "seconds": seconds}
