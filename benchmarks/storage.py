"""Pseudo-label storage: bytes per image and fidelity of proda's formats against the original's files.

Soft labels (stage 1): the original saves the warm-up softmax as float32 ``.npy`` [19, 129, 257] (stride-8
output of a 2048x1024 image). proda stores ``encode_soft`` bytes in a ``PseudoLabelStore``; every setting it
supports is measured: all classes (default) or the top-k classes per pixel, at the default log-probability
step of 1/128 nat and at 1/64 and 1/256. Fidelity is what stage 1 uses the labels for:

* argmax changed: pixels whose argmax P0 differs after encode/decode;
* rectified changed: pixels whose rectified label ``argmax(omega * P0)`` (``rectify_pseudo_labels``) differs
  after encode/decode, with omega drawn like ProDA's rectification weights, ``softmax(-T (d - min d))``,
  T = 1, from random, spatially smooth prototype distances d of two spreads (sigma 2 and 5 nats; the printed
  median range of T*d over the classes, 7 and 18 nats, compares with ~6 nats measured on the demo's warm-up
  model: sigma 5 is a stress case) and, for the real maps, with the omega a real run gives at the start of
  stage 1 (the warm-up model's features and the initial prototypes) and at its end (the stage-1 EMA's features
  and the moved prototypes): stage 1 rectifies with every omega in between, and the end one is the furthest
  from what the labels were written with. How often rectification overrides argmax P0 is printed as "flips".

Maps: (a) synthetic stride-8 softmax maps at the paper size, logits = class prior + smooth random fields
(low-pass noise upsampled) + finer texture, scaled so that the confidence histogram looks like a trained
segmenter's (75 % of pixels above 0.9: "trained") or a warm-up model's (55 %: "warm-up");
(b) the real soft labels of a finished demo run (``proda demo``; its ``runs`` folder, by default
``demo_out/runs``, another with the environment variable ``PRODA_DEMO_RUN`` or ``run.py --demo-run``;
skipped when there is none): 192x96 images, so [19, 13, 25] maps. Those files already hold default-format
values, so their re-encoding at the default setting is exact by construction; their file sizes are what
proda really wrote, but maps that small are dominated by fixed overheads;
(c) the confidence regimes of ``soft_label_formats.py`` (maps and weights shared with the tests), default
and top-3 formats only.

Hard labels (stages 2/3): the original saves a uint8 label PNG and a float16 confidence ``.npy``
[1024, 2048] per image (plus a colour PNG, not counted); proda stores ``encode_hard`` bytes (label +
confidence quantised upwards on a 1/1000 grid). Measured on the full-resolution argmax/max of the synthetic
maps (upsampled bilinearly, align_corners=True, as the original's generator does), with the fraction of
pixels whose 0.95-thresholded label differs from the one thresholding the exact float32 confidence gives.
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import soft_label_formats  # noqa: E402
from soft_label_formats import rectified_labels  # noqa: E402

CLASSES = 19
MAP = (257, 129)  # (w, h)
FULL = (2048, 1024)
DEMO_RUN_DEFAULT = Path("demo_out/runs")


def demo_run() -> Path:
    """The pipeline folder of a finished demo whose warm-up soft labels and stage 1 are measured."""
    return Path(os.environ.get("PRODA_DEMO_RUN", DEMO_RUN_DEFAULT))
SETTINGS = [  # (name, encode_soft kwargs)
    ("all classes, step 1/128 (default)", {}),
    ("all classes, step 1/64", {"step_inv": 64}),
    ("all classes, step 1/256", {"step_inv": 256}),
    ("top-8, step 1/128", {"topk": 8}),
    ("top-4, step 1/128", {"topk": 4}),
    ("top-3, step 1/128", {"topk": 3}),
    ("top-2, step 1/128", {"topk": 2}),
]
REGIMES = {"trained": 0.75, "warm-up": 0.55}  # fraction of pixels with max probability > 0.9
SPREADS = (2.0, 5.0)  # std of the random prototype distances, in units of 1/T


def _lowpass(rng: np.random.Generator, n: int, size: tuple[int, int], factor: int) -> np.ndarray:
    """n unit-variance smooth fields [n, h, w]: white noise at 1/factor resolution, upsampled bicubically."""
    w, h = size
    out = np.empty((n, h, w), dtype=np.float64)
    for i in range(n):
        z = rng.standard_normal((h // factor + 2, w // factor + 2))
        f = cv2.resize(z, (w, h), interpolation=cv2.INTER_CUBIC)
        out[i] = (f - f.mean()) / (f.std() + 1e-12)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def realistic_soft_map(rng: np.random.Generator, confident_fraction: float, size=MAP) -> np.ndarray:
    """float32 [C, h, w] softmax shaped like a segmenter's stride-8 output, with a share
    ``confident_fraction`` of pixels whose max probability exceeds 0.9.

    Class regions are the argmax of smooth fields plus a class prior (a few "stuff" classes dominate); the
    region's class gets a logit margin, blurred over ~1 output pixel (soft boundaries); every class logit
    also varies smoothly (low-pass noise upsampled, std 2) and with finer texture (std 0.5). Only the margin
    is calibrated (bisection) to the wanted confidence; the spread of the losing classes' log-probabilities
    then stays like a network's (see the printed tail shares), instead of collapsing to 0.
    """
    w, h = size
    prior = np.sort(rng.standard_normal(CLASSES))[::-1]
    regions = (_lowpass(rng, CLASSES, size, 12) + prior[:, None, None]).argmax(axis=0)
    indicator = np.stack([cv2.GaussianBlur((regions == k).astype(np.float64), (0, 0), 1.0) for k in range(CLASSES)])
    noise = 2.0 * _lowpass(rng, CLASSES, size, 4) + 0.5 * _lowpass(rng, CLASSES, size, 2)
    lo, hi = 0.0, 60.0
    for _ in range(40):  # the confident share grows with the margin
        mid = 0.5 * (lo + hi)
        frac = float((_softmax(mid * indicator + noise).max(axis=0) > 0.9).mean())
        lo, hi = (mid, hi) if frac < confident_fraction else (lo, mid)
    return _softmax(lo * indicator + noise).astype(np.float32)


def random_weights(rng: np.random.Generator, shape: tuple[int, int, int], spread: float) -> np.ndarray:
    """ProDA's omega = softmax(-T (d - min d)), T = 1, for smooth random distances of std ``spread``."""
    c, h, w = shape
    d = 10.0 + spread * _lowpass(rng, c, (w, h), 4)
    return _softmax(-(d - d.min(axis=0, keepdims=True))).astype(np.float32)


def real_weights(run: Path, names: list[str]) -> dict[str, list[np.ndarray]]:
    """omega (T = 1) on the target images the real soft labels were written for, at the start of stage 1
    (the warm-up model = the EMA's start, and the initial prototypes) and at its end (the stage-1 EMA and
    the moved prototypes); either is left out when its files are missing."""
    from proda.adapt.losses import prototype_distances, rectification_weights
    from proda.adapt.prototypes import PrototypeBank
    from proda.config import load_config
    from proda.data.registry import build_dataset
    from proda.data.transforms import image_to_tensor
    from proda.checkpoint_io import load_checkpoint
    from proda.models.build import normalize
    from proda.models.weights import load_trained_model

    warm = run / "warmup"
    if not ((warm / "latest.pth").is_file() and (warm / "prototypes.pth").is_file()):
        return {}
    cfg = load_config(warm / "config.yaml")
    ds = build_dataset("cityscapes", cfg.data.target_root, split=cfg.data.target_split, with_labels=False)
    index = {ds[i]["name"]: i for i in range(len(ds))}
    start, meta = load_trained_model(warm / "latest.pth")
    teachers = {"real_start": (start, PrototypeBank.load(warm / "prototypes.pth").prototypes)}
    if (run / "stage1" / "latest.pth").is_file():
        state = load_checkpoint(run / "stage1" / "latest.pth")
        ema, _ = load_trained_model(warm / "latest.pth")
        ema.load_state_dict(state["modules"]["ema"])
        teachers["real_end"] = (ema.eval(), state["stage_state"]["prototypes"]["prototypes"])
    out = {key: [] for key in teachers}
    with torch.no_grad():
        for name in names:
            image = normalize(image_to_tensor(ds[index[name]]["image"])[None], meta["input"]["mean"], meta["input"]["std"])
            for key, (model, prototypes) in teachers.items():
                omega = rectification_weights(prototype_distances(model(image)["feat"], prototypes), 1.0)
                out[key].append(omega[0].numpy())
    return out


def log_weight_range(weights: list[np.ndarray]) -> float:
    """Median over pixels of max_k log omega_k - min_k log omega_k (= the range of T*d across classes)."""
    return float(np.median(np.concatenate([(np.log(w.max(0)) - np.log(np.maximum(w.min(0), 1e-38))).ravel()
                                           for w in weights])))


def confidence_stats(maps: list[np.ndarray]) -> dict:
    m = np.concatenate([p.max(axis=0).ravel() for p in maps])
    v = np.concatenate([p.ravel() for p in maps])
    return {"mean_max_prob": float(m.mean()), "share_above_0.9": float((m > 0.9).mean()),
            "share_above_0.99": float((m > 0.99).mean()),
            "share_of_values_below_e-8": float((v < np.exp(-8)).mean()),
            "share_of_values_below_e-16": float((v < np.exp(-16)).mean())}


def _npy_size(a: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, a)
    return len(buf.getvalue())


def soft_rows(maps: list[np.ndarray], weights: dict[str, list[np.ndarray]]) -> dict:
    from proda.data.pseudo_labels import decode_soft, encode_soft

    float_bytes = float(np.mean([_npy_size(p) for p in maps]))
    formats = {}
    for name, kw in SETTINGS:
        sizes, argmax_changed, enc_s, dec_s = [], [], [], []
        rect = {s: [] for s in weights}
        for i, p in enumerate(maps):
            t0 = time.perf_counter()
            data = encode_soft(p, **kw)
            t1 = time.perf_counter()
            dec = decode_soft(data)
            t2 = time.perf_counter()
            enc_s.append(t1 - t0)
            dec_s.append(t2 - t1)
            sizes.append(len(data))
            argmax_changed.append(float((dec.argmax(0) != p.argmax(0)).mean()))
            for s, oms in weights.items():
                omega = oms[i][None]
                rect[s].append(float((rectified_labels(dec, omega) != rectified_labels(p, omega)).mean()))
        formats[name] = {
            "encode_soft_kwargs": kw,
            "bytes_per_image": float(np.mean(sizes)),
            "size_ratio_vs_float32_npy": float(np.mean(sizes)) / float_bytes,
            "argmax_changed": float(np.mean(argmax_changed)),
            "rectified_changed": {s: float(np.mean(v)) for s, v in rect.items()},
            "rectified_changed_worst_image": {s: float(np.max(v)) for s, v in rect.items()},
            "encode_ms": 1e3 * _common.median(enc_s),
            "decode_ms": 1e3 * _common.median(dec_s),
        }
    return {
        "float32_npy_bytes_per_image": float_bytes,
        "weights": {
            s: {"rectification_flips_argmax_p0": float(np.mean([(rectified_labels(p, om[None])[0] != p.argmax(0)).mean()
                                                                 for om, p in zip(oms, maps)])),
                "median_range_of_T_d_nats": log_weight_range(oms)}
            for s, oms in weights.items()
        },
        "formats": formats,
    }


def hard_rows(maps: list[np.ndarray], threshold: float = 0.95) -> dict:
    from PIL import Image

    from proda.data.pseudo_labels import decode_hard, encode_hard, threshold_labels

    orig, ours, changed_orig, changed_ours, enc_s, dec_s = [], [], [], [], [], []
    for p in maps:
        full = F.interpolate(torch.from_numpy(p)[None], size=(FULL[1], FULL[0]), mode="bilinear", align_corners=True)[0]
        conf_t, label_t = full.max(dim=0)
        del full
        conf, label = conf_t.numpy(), label_t.numpy().astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(label).save(png, format="PNG")  # the original writes the label PNG with PIL
        conf16 = conf.astype(np.float16)
        orig.append(len(png.getvalue()) + _npy_size(conf16))
        t0 = time.perf_counter()
        data = encode_hard(label, conf)
        t1 = time.perf_counter()
        dec_label, dec_conf = decode_hard(data)
        t2 = time.perf_counter()
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
        ours.append(len(data))
        truth = threshold_labels(label, conf, threshold)
        changed_ours.append(float((threshold_labels(dec_label, dec_conf, threshold) != truth).mean()))
        # the original's loader: label = 250 where conf16 <= threshold (float16 compared with a Python float)
        changed_orig.append(float((np.where(conf16 <= threshold, 255, label) != truth).mean()))
    return {
        "original_png_plus_float16_npy_bytes_per_image": float(np.mean(orig)),
        "proda_bytes_per_image": float(np.mean(ours)),
        "size_ratio_proda_vs_original": float(np.mean(ours) / np.mean(orig)),
        "threshold": threshold,
        "thresholded_label_changed_original_float16": float(np.mean(changed_orig)),
        "thresholded_label_changed_proda": float(np.mean(changed_ours)),
        "encode_ms": 1e3 * _common.median(enc_s),
        "decode_ms": 1e3 * _common.median(dec_s),
    }


def real_maps(run: Path, limit: int) -> tuple[list[np.ndarray], dict] | None:
    folder = run / "warmup" / "pseudo_soft"
    if not (folder / "meta.json").is_file():
        return None
    from proda.data.pseudo_labels import PseudoLabelStore

    store = PseudoLabelStore.open(folder, kind="soft")
    files = sorted(folder.glob("*.soft"))
    sizes = [f.stat().st_size for f in files]
    c, (w, h) = store.num_classes, store.map_size
    names = [f.stem for f in files[:limit]]
    maps = [store.read_soft(n) for n in names]
    info = {
        "folder": str(folder), "files": len(files), "map_shape": [c, h, w],
        "stored_bytes_per_image": float(np.mean(sizes)),
        "float32_npy_bytes_per_image": float(_npy_size(np.zeros((c, h, w), np.float32))),
        "stored_encoding": store.meta.get("encoding", {}), "names": names,
    }
    info["stored_size_ratio_vs_float32_npy"] = info["stored_bytes_per_image"] / info["float32_npy_bytes_per_image"]
    return maps, info


def run(quick: bool = False) -> dict:
    _common.single_thread()
    rng = np.random.default_rng(0)
    n = 1 if quick else 3
    result: dict = {"settings": [s for s, _ in SETTINGS], "soft": {}, "hard": {}}
    all_maps = []
    for regime, frac in REGIMES.items():
        maps = [realistic_soft_map(rng, frac) for _ in range(n)]
        all_maps += maps
        weights = {f"spread_{s:g}": [random_weights(rng, p.shape, s) for p in maps] for s in SPREADS}
        result["soft"][f"synthetic_{regime}"] = {"confidence": confidence_stats(maps), "maps": n,
                                                 **soft_rows(maps, weights)}
    run_dir = demo_run()
    real = real_maps(run_dir, 40 if quick else 200)
    if real is not None:
        maps, info = real
        weights = {f"spread_{s:g}": [random_weights(rng, p.shape, s) for p in maps] for s in SPREADS}
        weights.update(real_weights(run_dir, info.pop("names")))
        result["soft"]["real_demo_warmup"] = {"confidence": confidence_stats(maps), "maps": len(maps), **info,
                                              **soft_rows(maps, weights)}
    else:
        result["soft"]["real_demo_warmup"] = {"missing": f"{run_dir}/warmup/pseudo_soft (run `proda demo` first)"}
    result["hard"] = {"maps": len(all_maps), **hard_rows(all_maps)}
    _print(result)
    result["soft_label_formats"] = soft_label_formats.run(quick)  # prints its own table
    return result


_REAL = {"real_start": ("measured omega, start of stage 1", "w stage-1 start"),
         "real_end": ("measured omega, end of stage 1", "w stage-1 end")}


def _kind(key: str) -> str:
    return _REAL[key][0] if key in _REAL else "random omega, sigma " + key.split("_")[1]


def _short(key: str) -> str:
    return _REAL[key][1] if key in _REAL else "random w, s=" + key.split("_")[1]


def _pct(x: float) -> str:
    return f"{100 * x:.3f} %" if x < 0.1 else f"{100 * x:.1f} %"


def _print(r: dict) -> None:
    for key, block in r["soft"].items():
        if "missing" in block:
            print(f"storage ({key}): {block['missing']} not found, skipped\n")
            continue
        conf = block["confidence"]
        rows = []
        kinds = list(block["weights"])
        for name in r["settings"]:
            s = block["formats"][name]
            rows.append([name, _common.fmt_bytes(s["bytes_per_image"]), f"{100 * s['size_ratio_vs_float32_npy']:.1f} %",
                         _pct(s["argmax_changed"]),
                         *[_pct(s["rectified_changed"][x]) for x in kinds],
                         f"{s['encode_ms']:.0f}/{s['decode_ms']:.1f}"])
        wt = block["weights"]
        shape = block.get("map_shape", [CLASSES, MAP[1], MAP[0]])
        notes = [
            f"float32 .npy (original): {_common.fmt_bytes(block['float32_npy_bytes_per_image'])} per image; "
            f"confidence: mean max-prob {conf['mean_max_prob']:.3f}, {100 * conf['share_above_0.9']:.0f} % of pixels "
            f"> 0.9, {100 * conf['share_above_0.99']:.0f} % > 0.99; probabilities below e^-8: "
            f"{100 * conf['share_of_values_below_e-8']:.0f} %, below e^-16 (the format's floor): "
            f"{100 * conf['share_of_values_below_e-16']:.1f} %",
            *[f"{_kind(x)} ({_short(x)}): median range of T*d over classes {wt[x]['median_range_of_T_d_nats']:.1f} "
              f"nats; rectification flips argmax P0 on {100 * wt[x]['rectification_flips_argmax_p0']:.0f} % of pixels"
              for x in kinds],
        ]
        if "stored_bytes_per_image" in block:
            notes.append(
                f"as stored by proda in {block['folder']} ({block['files']} files, encoding {block['stored_encoding']}): "
                f"{_common.fmt_bytes(block['stored_bytes_per_image'])} per image = "
                f"{100 * block['stored_size_ratio_vs_float32_npy']:.1f} % of float32; these maps already hold "
                "default-format values, so the default row's changes are 0 by construction")
        _common.table(
            f"storage, soft labels, {key} maps {shape} ({block['maps']} maps)",
            ["format", "bytes/image", "vs float32", "argmax changed",
             *[f"rect. changed ({_short(x)})" for x in kinds], "enc/dec ms"],
            rows, notes,
        )
    h = r["hard"]
    _common.table(
        f"storage, hard labels 2048x1024 (from {h['maps']} synthetic maps)",
        ["format", "bytes/image", "vs original", f"label at conf>{h['threshold']} changed"],
        [
            ["original: label PNG + float16 conf .npy", _common.fmt_bytes(h["original_png_plus_float16_npy_bytes_per_image"]),
             "100 %", _pct(h["thresholded_label_changed_original_float16"])],
            [f"proda encode_hard (enc {h['encode_ms']:.0f} ms, dec {h['decode_ms']:.0f} ms)",
             _common.fmt_bytes(h["proda_bytes_per_image"]), f"{100 * h['size_ratio_proda_vs_original']:.1f} %",
             _pct(h["thresholded_label_changed_proda"])],
        ],
        ["changed: against thresholding the exact float32 confidence (float16 rounds values near 0.95 across it)"],
    )


if __name__ == "__main__":
    _common.cli(run, __doc__)
