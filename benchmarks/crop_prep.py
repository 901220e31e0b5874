"""Soft-label crop preparation at the paper setting: proda's crop-window resampling vs the original's.

Setting (docs/method.md 1.2, 2.1.2, 4.3, 9.8): Cityscapes image 2048x1024, 19 classes, stored soft map
at the network's stride-8 output of the full image, [19, 129, 257] (ceil-mode geometry: what both the
original and proda's DeepLabV2 produce for 1024x2048), weak view RandomSized(2200) with width factor
U(0.5, 1.5) (scale 0.54-1.61 of the native 2048), 896x512 crop, horizontal flip p=0.5, and P0 wanted on the
crop/4 loss grid, [19, 128, 224].

* proda: ``soft_labels_for_crop(soft, geom, (224, 128))``, as ``Stage1TargetView`` calls it: one bilinear
  ``grid_sample`` of the crop window straight from the stored map to the loss grid.
* original (reimplemented here with ``F.interpolate`` bilinear, as the original's loader and step do):
  stored map -> full resolution [19, 1024, 2048] (align_corners=True) -> RandomSized size (align_corners=True,
  up to [19, 1650, 3300]) -> crop 896x512 -> flip -> bilinear x0.25 (align_corners=True) -> [19, 128, 224].

Memory is the peak *resident* memory added while preparing one sample (Linux VmHWM, reset through
``/proc/self/clear_refs`` before each call, minus the resident size just before the call; freed heap is
returned with ``malloc_trim`` first). Large torch CPU tensors are mmapped by the allocator, so this sees
every intermediate tensor the approach materialises. Both variants run in the same process, interleaved
over the same random geometries; times and memory are medians over samples.
"""
from __future__ import annotations

import ctypes
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FULL = (2048, 1024)  # (W, H) of a Cityscapes image
MAP = (257, 129)  # (w, h) of its stride-8 soft map
CLASSES = 19
CROP = (896, 512)
GRID = (224, 128)  # crop / 4
RESIZE_WIDTH, SCALE_RANGE = 2200, (0.5, 1.5)


def original_crop(soft: torch.Tensor, geom, out_size=GRID, rescale_align_corners: bool = True) -> torch.Tensor:
    """The original's path: whole map to full resolution, to the random scale, crop, flip, then /4.

    ``rescale_align_corners=False`` resizes to the random scale with the half-pixel convention instead (the
    convention of the image's own resize, and the one proda uses); True is what the original does.
    """
    w, h = geom.full_size
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box
    full = F.interpolate(soft[None], size=(h, w), mode="bilinear", align_corners=True)
    scaled = F.interpolate(full, size=(sh, sw), mode="bilinear", align_corners=rescale_align_corners)
    del full
    crop = scaled[..., y0:y1, x0:x1]
    crop = crop.flip(-1) if geom.flip else crop.contiguous()
    del scaled
    return F.interpolate(crop, size=(out_size[1], out_size[0]), mode="bilinear", align_corners=True)[0]


def exact_crop(soft: np.ndarray, geom, out_size=GRID) -> np.ndarray:
    """Independent float64 reference: each loss-grid sample evaluated once, by bilinear interpolation of the
    stored map at its exact position, under the conventions that make the chain consistent with the image
    (map samples at full pixels j*(W-1)/(w-1), as align_corners=True upsampling of the network output; the
    random rescale half-pixel like the image's resize; loss-grid samples at crop pixels j*(L-1)/(n-1))."""
    c, mh, mw = soft.shape
    w, h = geom.full_size
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box

    def positions(n, start, length, scaled, full, m):
        t = np.arange(n) * (length - 1) / max(n - 1, 1)
        u = (start + t + 0.5) * full / scaled - 0.5
        return np.clip(u * (m - 1) / (full - 1), 0, m - 1)

    px = positions(out_size[0], x0, x1 - x0, sw, w, mw)
    py = positions(out_size[1], y0, y1 - y0, sh, h, mh)
    if geom.flip:
        px = px[::-1]
    ix, iy = np.minimum(np.floor(px).astype(int), mw - 2), np.minimum(np.floor(py).astype(int), mh - 2)
    fx, fy = px - ix, py - iy
    s = soft.astype(np.float64)
    top = s[:, iy][:, :, ix] * (1 - fx) + s[:, iy][:, :, ix + 1] * fx
    bottom = s[:, iy + 1][:, :, ix] * (1 - fx) + s[:, iy + 1][:, :, ix + 1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def _libc_trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn) -> tuple[float, int | None]:
    """(seconds, peak resident bytes added) of one call of ``fn``."""
    _libc_trim()
    can_reset = _reset_peak()
    before = _status("VmRSS:")
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _status("VmHWM:") - before if can_reset else None
    del out
    return dt, peak


def run(quick: bool = False) -> dict:
    _common.single_thread()
    from proda.data.pseudo_labels import decode_soft, encode_soft, soft_labels_for_crop
    from soft_label_formats import synthetic_soft_map  # the synthetic maps the benchmarks share with the tests
    from proda.data.transforms import WeakGeometry, sample_weak_geometry

    rng = np.random.default_rng(0)
    soft_np = synthetic_soft_map(rng, CLASSES, MAP)  # float32 [19, 129, 257], a typical warm-up softmax
    soft_t = torch.from_numpy(soft_np)
    n_geoms = 4 if quick else 10
    geoms = [sample_weak_geometry(rng, FULL, CROP, RESIZE_WIDTH, SCALE_RANGE, True) for _ in range(n_geoms)]
    # the worst case for the original: the largest scale (width 3300)
    geoms[0] = WeakGeometry(FULL, (3300, 1650), (3300 - 896, 1650 - 512, 3300, 1650), True)

    # the loader's full path, from the stored bytes: proda decodes its format, the original np.loads float32
    encoded = encode_soft(soft_np)
    npy_bytes = _npy_bytes(soft_np)

    variants = {
        "proda": lambda g: soft_labels_for_crop(soft_np, g, GRID),
        "original": lambda g: original_crop(soft_t, g),
        "proda_with_decode": lambda g: soft_labels_for_crop(decode_soft(encoded), g, GRID),
        "original_with_npy_load": lambda g: original_crop(torch.from_numpy(_npy_load(npy_bytes)), g),
    }
    for name, fn in variants.items():  # warm-up (kernels, first-touch allocations)
        fn(WeakGeometry(FULL, (1100, 550), (0, 0, 896, 512), False))

    times: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, list[int]] = {k: [] for k in variants}
    names = list(variants)
    for i, g in enumerate(geoms):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            dt, peak = measure(lambda: variants[name](g))
            times[name].append(dt)
            if peak is not None:
                peaks[name].append(peak)

    # agreement on the same geometries
    diffs, diffs_matched, mean_diffs, argmax_dis, exact_proda, exact_orig, exact_orig_hp = [], [], [], [], [], [], []
    for g in geoms:
        a = soft_labels_for_crop(soft_np, g, GRID)
        b = original_crop(soft_t, g)
        c = original_crop(soft_t, g, rescale_align_corners=False)
        e = torch.from_numpy(exact_crop(soft_np, g))
        diffs.append(float((a - b).abs().max()))
        diffs_matched.append(float((a - c).abs().max()))
        mean_diffs.append(float((a - b).abs().mean()))
        argmax_dis.append(float((a.argmax(0) != b.argmax(0)).float().mean()))
        exact_proda.append(float((a.double() - e).abs().max()))
        exact_orig.append(float((b.double() - e).abs().max()))
        exact_orig_hp.append(float((c.double() - e).abs().max()))

    med = {k: _common.median(v) for k, v in times.items()}
    mem = {k: (_common.median(v) if v else None) for k, v in peaks.items()}
    mem_max = {k: (max(v) if v else None) for k, v in peaks.items()}
    scaled_max = max(g.scaled_size[0] * g.scaled_size[1] for g in geoms)
    result = {
        "setting": {
            "image": list(FULL), "soft_map": [CLASSES, MAP[1], MAP[0]], "crop": list(CROP), "loss_grid": list(GRID),
            "resize_width": RESIZE_WIDTH, "scale_range": list(SCALE_RANGE), "samples": n_geoms,
            "largest_scaled_size": max(g.scaled_size for g in geoms), "threads": torch.get_num_threads(),
        },
        "time_ms_per_sample": {k: 1e3 * v for k, v in med.items()},
        "time_ratio_original_over_proda": med["original"] / med["proda"],
        "time_ratio_original_with_npy_load_over_proda_with_decode": med["original_with_npy_load"] / med["proda_with_decode"],
        "peak_rss_bytes_per_sample_median": mem,
        "peak_rss_bytes_per_sample_max": mem_max,
        "peak_rss_ratio_original_over_proda": (mem["original"] / mem["proda"]) if mem["proda"] else None,
        "original_intermediate_bytes_at_largest_scale": 4 * CLASSES * (FULL[0] * FULL[1] + scaled_max),
        "max_abs_diff_proda_vs_original": max(diffs),
        "mean_abs_diff_proda_vs_original": float(np.mean(mean_diffs)),
        "argmax_disagreement_proda_vs_original": float(np.mean(argmax_dis)),
        "max_abs_diff_proda_vs_original_with_half_pixel_rescale": max(diffs_matched),
        "max_abs_diff_vs_exact_one_step_bilinear": {
            "proda": max(exact_proda), "original": max(exact_orig), "original_with_half_pixel_rescale": max(exact_orig_hp),
        },
    }
    _print(result)
    return result


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data))


def _print(r: dict) -> None:
    t, m, mx = r["time_ms_per_sample"], r["peak_rss_bytes_per_sample_median"], r["peak_rss_bytes_per_sample_max"]
    fb = lambda v: _common.fmt_bytes(v) if v is not None else "n/a"  # noqa: E731
    rows = [
        ["proda (crop window -> loss grid)", f"{t['proda']:.2f}", fb(m["proda"]), fb(mx["proda"])],
        ["original (full -> scale -> crop -> /4)", f"{t['original']:.1f}", fb(m["original"]), fb(mx["original"])],
        ["ratio original / proda", f"{r['time_ratio_original_over_proda']:.0f}x",
         f"{r['peak_rss_ratio_original_over_proda']:.0f}x" if r["peak_rss_ratio_original_over_proda"] else "n/a", ""],
        ["proda incl. decode_soft", f"{t['proda_with_decode']:.1f}", fb(m["proda_with_decode"]), fb(mx["proda_with_decode"])],
        ["original incl. np.load float32", f"{t['original_with_npy_load']:.1f}", fb(m["original_with_npy_load"]),
         fb(mx["original_with_npy_load"])],
        ["ratio (incl. loading)", f"{r['time_ratio_original_with_npy_load_over_proda_with_decode']:.0f}x", "", ""],
    ]
    s, ex = r["setting"], r["max_abs_diff_vs_exact_one_step_bilinear"]
    _common.table(
        f"crop_prep: soft label [19,129,257] -> P0 [19,128,224] for a 896x512 crop of 2048x1024, scale 0.54-1.61 "
        f"({s['samples']} samples, {s['threads']} thread)",
        ["approach", "ms/sample", "peak RSS (median)", "peak RSS (max)"],
        rows,
        [
            "peak RSS: resident memory added during one call (VmHWM after reset minus RSS before), median/max over samples",
            f"original's two full-size intermediates at scale {s['largest_scaled_size']}: "
            f"{_common.fmt_bytes(r['original_intermediate_bytes_at_largest_scale'])}",
            f"max |proda - original| = {r['max_abs_diff_proda_vs_original']:.3g} "
            f"(mean {r['mean_abs_diff_proda_vs_original']:.2g}, argmax differs on "
            f"{100 * r['argmax_disagreement_proda_vs_original']:.2f} % of pixels); with the original's rescale done "
            f"half-pixel like the image: max {r['max_abs_diff_proda_vs_original_with_half_pixel_rescale']:.3g}",
            "against an exact float64 one-step bilinear evaluation of the stored map: proda "
            f"{ex['proda']:.2g}, original {ex['original']:.3g}, original with half-pixel rescale "
            f"{ex['original_with_half_pixel_rescale']:.3g} (the original's error is its chain of resizes "
            "re-interpolating interpolated values near the stored samples)",
        ],
    )


if __name__ == "__main__":
    _common.cli(run, __doc__)
