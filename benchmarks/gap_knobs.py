"""Which part of the synthetic benchmark's domain gap makes which error: source-only models evaluated on the
target validation images rendered again with one appearance knob (or one class's colour shift) set back to
the source's.

The source images do not depend on the target's style, so source-only checkpoints trained on the benchmark
stay valid for every variant: nothing trains here, each variant costs a render of the validation split and
one evaluation per checkpoint. Every row also gives the Pearson correlation of its per-class IoU with the
real setting's source-only profile (DeepLab-v2 ResNet-101 trained on GTA5, evaluated on Cityscapes val,
Tsai et al. CVPR 2018, Table 1), the figure a realistic benchmark should resemble.

    python benchmarks/gap_knobs.py CKPT[,CKPT...] [--gap 0.9] [--seed 0] [--val 100]
        [--spread 0] [--variants default,class_shift,class_shift:sky,...] [--json FILE]

A variant is ``default`` (the benchmark as ``proda synth --gap G`` writes it), a knob of ``GAP_FIELDS``
(e.g. ``saturation``) or ``class_shift:NAME`` (only that class's colour shift removed); without
``--variants`` every knob and every class's shift is tried. Columns: mean over the checkpoints of target val
mIoU, pixel accuracy, building precision (building is the class the others collapse into), sky IoU, the
correlation r with the real profile, and each class's IoU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import _common

import numpy as np
import torch

from proda.data.labels import class_names, compact_to_cityscapes_id
from proda.data.registry import build_dataset
from proda.data.synthetic import DEFAULT_GAP, GAP_FIELDS, SOURCE_STYLE, TARGET_STYLE, DomainStyle, write_benchmark
from proda.engine.inference import evaluate_model
from proda.models.weights import load_trained_model

NAMES = class_names(19)
#: Per-class IoU of DeepLab-v2 ResNet-101 trained on GTA5 alone, on Cityscapes val (Tsai et al. 2018): 36.6 mIoU.
REAL_SOURCE_ONLY = (75.8, 16.8, 77.2, 12.5, 21.0, 25.5, 30.1, 20.1, 81.3, 24.6, 70.3, 53.8, 26.4, 49.9, 17.2, 25.9,
                    6.5, 25.3, 36.0)


def variant_style(variant: str) -> DomainStyle:
    """The target style of one variant (before the gap is applied, as ``write_benchmark`` applies it)."""
    if variant == "default":
        return TARGET_STYLE
    if variant.startswith("class_shift:"):
        name = variant.split(":", 1)[1]
        if name not in NAMES:
            raise SystemExit(f"{variant}: unknown class {name!r}; classes: {', '.join(NAMES)}")
        label_id = int(compact_to_cityscapes_id(19)[NAMES.index(name)])  # class_shift is keyed by raw label id
        return replace(TARGET_STYLE, class_shift=tuple(c for c in TARGET_STYLE.class_shift if c[0] != label_id))
    if variant not in GAP_FIELDS:
        raise SystemExit(f"unknown variant {variant!r}: 'default', a knob of {', '.join(GAP_FIELDS)}, or class_shift:NAME")
    return replace(TARGET_STYLE, **{variant: getattr(SOURCE_STYLE, variant)})


def measure(models: list, root: Path) -> dict:
    """Mean over the models of the figures of one rendered validation split."""
    reader = build_dataset("cityscapes", root, split="val", num_classes=19)
    rows = []
    for model, meta in models:
        cm = evaluate_model(model, reader, torch.device("cpu"), 19, mean=meta["input"]["mean"],
                            std=meta["input"]["std"], progress=False)
        mat = cm.mat.double()
        precision = mat.diagonal() / mat.sum(0).clamp_min(1)
        rows.append({"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy(),
                     "building_precision": 100 * precision[NAMES.index("building")].item(),
                     "per_class_iou": [100 * v for v in cm.iou().nan_to_num(0).tolist()]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("miou", "pixel_accuracy", "building_precision")}
    per_class = np.mean([r["per_class_iou"] for r in rows], axis=0)
    return {**mean, "per_class_iou": dict(zip(NAMES, per_class.round(2).tolist())),
            "r_real": float(np.corrcoef(per_class, REAL_SOURCE_ONLY)[0, 1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", help="source-only checkpoints, comma-separated")
    ap.add_argument("--gap", type=float, default=DEFAULT_GAP, help="the benchmark's gap (default: the calibrated one)")
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed")
    ap.add_argument("--val", type=int, default=100, help="validation images per variant")
    ap.add_argument("--spread", type=float, default=TARGET_STYLE.class_shift_spread,
                    help="class_shift_spread of every variant (default: the benchmark's)")
    ap.add_argument("--variants", default=None)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    _common.single_thread()
    variants = (args.variants.split(",") if args.variants else
                ["default", *GAP_FIELDS, *(f"class_shift:{n}" for n in NAMES)])
    styles = {v: replace(variant_style(v), class_shift_spread=args.spread) for v in variants}  # bad names fail first
    models = [load_trained_model(c, torch.device("cpu")) for c in args.checkpoints.split(",")]  # in eval mode
    results = {}
    short = [n.replace("traffic ", "")[:5] for n in NAMES]
    print(f"{'variant':26s} {'mIoU':>6s} {'pixacc':>6s} {'buildP':>6s} {'sky':>5s} {'r':>5s} | " + " ".join(f"{s:>5s}" for s in short))
    for variant, style in styles.items():
        with tempfile.TemporaryDirectory() as tmp:
            write_benchmark(tmp, seed=args.seed, n_source=0, n_target=0, n_val=args.val, progress=False,
                            target_style=style, workers=1, gap=args.gap)
            r = results[variant] = measure(models, Path(tmp) / "cityscapes")
        iou = list(r["per_class_iou"].values())
        print(f"{variant:26s} {r['miou']:6.2f} {r['pixel_accuracy']:6.1f} {r['building_precision']:6.1f} "
              f"{r['per_class_iou']['sky']:5.1f} {r['r_real']:5.2f} | " + " ".join(f"{v:5.1f}" for v in iou), flush=True)
    if args.json:
        summary = {"gap": args.gap, "spread": args.spread, "checkpoints": args.checkpoints, "variants": results}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
