"""File input/output shared by every part of proda: atomic writes and PNG reading with exact dtypes.

Every file proda writes goes through :func:`atomic_write` (temporary file in the same folder, fsync,
rename), so a process killed at any moment leaves the old file or the new one, never a torn one. A kill
can leave a hidden temporary file (``.NAME.XXXX.tmp``) beside the target: it is never read (readers skip
hidden files) and a resumed run removes those of its run folder (:func:`remove_stale_temp_files`).

Test hook: ``PRODA_TEST_PAUSE_IN_ATOMIC_WRITE=SECONDS`` (optionally ``PRODA_TEST_PAUSE_IN_ATOMIC_WRITE_MATCH=GLOB``,
matched against the target's file name) makes :func:`atomic_write` announce itself on stderr and sleep after
the temporary file is complete and before it is renamed, so that tests can kill a process in the middle of a
checkpoint write deterministically (tests/engine/test_kill.py). Unset, it costs one dictionary lookup.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from PIL import Image

from .errors import DataError

cv2.setNumThreads(0)
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # decoding runs inside DataLoader workers; opencv's own pool only oversubscribes


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; outputs are ordinary files
            os.fsync(f.fileno())
        _test_pause(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _test_pause(tmp: str, path: Path) -> None:
    """The kill-test hook (see the module docstring): pause between a complete temporary file and its rename."""
    seconds = os.environ.get("PRODA_TEST_PAUSE_IN_ATOMIC_WRITE")
    if not seconds or not fnmatch.fnmatch(path.name, os.environ.get("PRODA_TEST_PAUSE_IN_ATOMIC_WRITE_MATCH", "*")):
        return
    print(f"proda test hook: pausing {seconds} s before renaming {tmp} -> {path}", file=sys.stderr, flush=True)
    time.sleep(float(seconds))


def remove_stale_temp_files(folder: str | os.PathLike, names: tuple[str, ...] = ("*",)) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls (and hard-link swaps) left in ``folder``.

    Only hidden ``.NAME.XXXX.tmp`` / ``.NAME.link`` files whose NAME matches one of the ``names`` globs are
    removed; call it only where no other process is writing those names (a run folder its run owns).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    with os.scandir(folder) as entries:
        for e in entries:
            if not e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                continue
            if e.name.endswith(".link"):
                target = e.name[1 : -len(".link")]
            elif e.name.endswith(".tmp") and e.name.count(".") >= 3:
                target = e.name[1:].rsplit(".", 2)[0]  # .NAME.XXXX.tmp (mkstemp's XXXX has no dot)
                if target.startswith(".") and target.endswith(".link"):  # the copy made where links fail
                    target = target[1 : -len(".link")]
            else:
                continue
            if any(fnmatch.fnmatch(target, pattern) for pattern in names):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an HxW (uint8 or uint16) or HxWx3 RGB (uint8 or uint16) array."""
    array = np.ascontiguousarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG arrays must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., ::-1]  # opencv writes BGR
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    write_bytes(path, encode_png(array))


def encode_palette_png(index: np.ndarray, palette: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit palette-indexed image (mode 'P'), as GTA5 stores its labels."""
    image = Image.fromarray(np.asarray(index, dtype=np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    image.putpalette(flat.reshape(-1).tolist())
    import io as _io

    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_palette_png(path: str | os.PathLike, index: np.ndarray, palette: np.ndarray) -> None:
    """An 8-bit palette-indexed PNG (mode 'P'), as GTA5 stores its labels."""
    write_bytes(path, encode_palette_png(index, palette))


def _imread(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise DataError(f"{path}: file not found")
    if data.size == 0:
        raise DataError(f"{path}: file is empty")
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{path}: not a readable image (corrupt or truncated?)")
    return array


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB image; grey images are expanded, an alpha channel is dropped."""
    path = Path(path)
    array = _imread(path)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]
    return np.ascontiguousarray(array[..., ::-1])


def read_label_ids(path: str | os.PathLike, *, modes: tuple[str, ...] = ("L", "P")) -> np.ndarray:
    """HxW uint8 raw ids of an 8-bit single-channel label: grey (Cityscapes) or palette-indexed (GTA5).

    Palette PNGs are read as their indices (never converted to colours, which destroys GTA5 ids).
    ``modes`` narrows the accepted PIL modes, e.g. ``("P",)`` for GTA5, whose grey-converted labels hold
    luminances instead of ids.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in modes:
                array = np.asarray(image)
                return np.ascontiguousarray(array)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable label image ({exc})") from None
    raise DataError(
        f"{path}: label must be an 8-bit single-channel PNG (mode {' or '.join(modes)}), got mode {mode}"
        + (" (an RGB-converted label? its class ids are lost)" if mode in ("RGB", "RGBA") else "")
        + (" (a grey-converted palette label? its class ids are lost)" if mode == "L" else "")
    )


def read_synthia_label(path: str | os.PathLike) -> np.ndarray:
    """HxW uint8 class ids from a SYNTHIA GT/LABELS PNG: 16-bit, class id in the first (R) channel.

    Pillow reduces 16-bit RGB PNGs to their high byte (every id reads as 0), so opencv reads these.
    """
    path = Path(path)
    array = _imread(path)
    if array.dtype != np.uint16:
        raise DataError(f"{path}: SYNTHIA labels are 16-bit PNGs, got {array.dtype} (converted to 8-bit?)")
    if array.ndim != 3 or array.shape[2] < 3:
        raise DataError(f"{path}: SYNTHIA labels have 3 channels (class, instance, -), got shape {array.shape}")
    classes = array[..., 2]  # opencv returns BGR(A): channel 2 is R, the class id
    if classes.max(initial=0) > 255:
        raise DataError(f"{path}: class id {int(classes.max())} out of range")
    return classes.astype(np.uint8)
