"""One stage-1 iteration broken down: the network passes of each view and everything ProDA adds.

The step is assembled from proda's own functions in the order of ``proda.adapt.stage1.Stage1.step``, the
trainer's backward/optimizer step and ``Stage1.after_step``; each view's loss is back-propagated right
after its forward (as the original does for the source loss; the gradients are the same as the trainer's
single backward of the summed losses, and the cost too, since the three graphs are disjoint). Rows marked
``[ProDA]`` are the logic ProDA adds around the network passes; the EMA forward and the strong view's
passes are network passes that exist only because of ProDA as well.

Settings (both at the stage-1 hyper-parameters of their configs; data are random images, random P0 and
prototypes: the cost does not depend on the values):

* demo: ``configs/synthetic/stage1.yaml`` (ResNet-18 width 16, ProDA head 64, batch 8, crop 128x64, full
  target image 192x96, EMA in eval mode);
* ResNet-101: ``configs/gta5/stage1.yaml``'s model (DeepLabV2 ResNet-101, ProDA head 256, EMA in train mode
  as the released code ran it) at a CPU-sized scale: batch 1, crop 224x128, full image 448x256 (the paper's
  896x512 / 2048x1024 shrunk 4x in area, RandomSized width scaled accordingly).

Time per component is the median over the measured iterations (after one warm-up iteration), 1 thread.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROWS = [  # (key, label, added by ProDA's logic)
    ("source_forward", "source: forward", False),
    ("source_backward", "source: CE + backward", False),
    ("ema_forward", "EMA: full-image forward (no grad)", False),
    ("rectification", "[ProDA] rectification: full_to_weak, distances, omega, argmax", True),
    ("weak_forward", "target weak: forward + upsample", False),
    ("sce_regular", "[ProDA] SCE + regulariser (forward)", True),
    ("weak_backward", "target weak: backward", False),
    ("teacher_to_strong", "[ProDA] teacher distances -> strong view (warp_to_strong)", True),
    ("strong_forward", "target strong: forward + upsample feat", False),
    ("consistency_kl", "[ProDA] consistency KL (forward)", True),
    ("strong_backward", "target strong: backward", False),
    ("optimizer_step", "optimizer step (SGD)", False),
    ("ema_update", "[ProDA] EMA update", True),
    ("prototype_update", "[ProDA] prototype update (full/4 assign, class means, momentum)", True),
]


def _inputs(cfg, full_size, resize_width, batch, rng):
    """One batch as the data streams would give it: source crops + labels, target weak/strong/full, P0."""
    from proda.data.strong import strong_view
    from proda.data.transforms import apply_weak_geometry, image_to_tensor, sample_weak_geometry

    d, s1 = cfg.data, cfg.stage1
    crop = tuple(d.crop_size)
    gw, gh = crop[0] // s1.loss_stride, crop[1] // s1.loss_stride
    fw, fh = full_size
    src, weak, strong, full, geoms, transforms = [], [], [], [], [], []
    for _ in range(batch):
        image = rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8)
        g = sample_weak_geometry(rng, (fw, fh), crop, resize_width, tuple(d.scale_range), d.hflip)
        c, _ = apply_weak_geometry(g, image)
        s, t = strong_view(c, rng, n_ops=s1.strong_ops, cutout=s1.cutout)
        weak.append(image_to_tensor(c))
        strong.append(image_to_tensor(s))
        full.append(image_to_tensor(image))
        geoms.append(g.to_tensor())
        transforms.append(t.to_tensor())
        src.append(image_to_tensor(rng.integers(0, 256, (crop[1], crop[0], 3), dtype=np.uint8)))
    soft = torch.softmax(4 * torch.randn(batch, d.num_classes, gh, gw), dim=1)
    return {
        "source": {"image": torch.stack(src), "label": torch.randint(0, d.num_classes, (batch, crop[1], crop[0]))},
        "target": {"image": torch.stack(weak), "strong": torch.stack(strong), "full": torch.stack(full),
                   "geometry": torch.stack(geoms), "strong_transform": torch.stack(transforms), "soft": soft},
    }


def _stage(cfg):
    from proda.adapt.ema import init_ema
    from proda.adapt.prototypes import PrototypeBank
    from proda.models.build import build_model

    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.data.num_classes)
    ema = init_ema(net)
    opt = torch.optim.SGD(net.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult), lr=cfg.optim.lr,
                          momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    bank = PrototypeBank(cfg.data.num_classes, net.feat_channels)
    bank.prototypes = torch.randn(cfg.data.num_classes, net.feat_channels).abs()
    return net, ema, opt, bank


def one_step(cfg, net, ema, opt, bank, batch) -> dict[str, float]:
    """One iteration, timed per component (seconds)."""
    from proda.adapt.ema import ema_update
    from proda.adapt.losses import (
        mean_log_prob_regularizer, prototype_consistency_kl, prototype_distances, rectification_weights,
        rectify_pseudo_labels, symmetric_cross_entropy,
    )
    from proda.adapt.prototypes import class_mean_features
    from proda.adapt.supervised import segmentation_loss
    from proda.data.strong import warp_to_strong
    from proda.data.transforms import WeakGeometry, full_to_weak
    from proda.models.build import normalize, upsample

    s1, mean, std = cfg.stage1, cfg.model.mean, cfg.model.std
    src, tgt = batch["source"], batch["target"]
    crop = tuple(cfg.data.crop_size)
    gw, gh = crop[0] // s1.loss_stride, crop[1] // s1.loss_stride
    protos = bank.prototypes
    net.train()
    ema.train(s1.ema_train_mode)
    t: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(key: str) -> None:
        now = time.perf_counter()
        t[key] = now - clock[0]
        clock[0] = now

    out = net(normalize(src["image"], mean, std))["out"]
    lap("source_forward")
    segmentation_loss(out, src["label"]).backward()
    del out
    lap("source_backward")
    with torch.no_grad():
        ema_out = ema(normalize(tgt["full"], mean, std))
        lap("ema_forward")
        geoms = [WeakGeometry.from_tensor(g) for g in tgt["geometry"]]
        feat_weak = full_to_weak(ema_out["feat"].float(), geoms, (gw, gh))
        distances = prototype_distances(feat_weak, protos)
        weights = rectification_weights(distances, s1.temperature)
        pseudo = rectify_pseudo_labels(tgt["soft"], weights, s1.pseudo_threshold)
        lap("rectification")
    logits = upsample(net(normalize(tgt["image"], mean, std))["out"], (gh, gw))
    lap("weak_forward")
    loss = symmetric_cross_entropy(logits, pseudo, s1.sce_alpha, s1.sce_beta)
    loss = loss + s1.regular_weight * mean_log_prob_regularizer(logits)
    lap("sce_regular")
    loss.backward()
    del loss, logits
    lap("weak_backward")
    teacher, valid = warp_to_strong(distances, tgt["strong_transform"], mode="nearest")
    lap("teacher_to_strong")
    feat_strong = upsample(net(normalize(tgt["strong"], mean, std))["feat"], (gh, gw))
    lap("strong_forward")
    kl = s1.consistency_weight * prototype_consistency_kl(teacher, valid, feat_strong, protos, s1.temperature)
    lap("consistency_kl")
    kl.backward()
    del kl, feat_strong
    lap("strong_backward")
    opt.step()
    opt.zero_grad(set_to_none=True)
    lap("optimizer_step")
    ema_update(ema, net, s1.ema_momentum)
    lap("ema_update")
    h, w = tgt["full"].shape[-2:]
    size = (max(1, h // 4), max(1, w // 4))
    feat_full = upsample(ema_out["feat"].float(), size)
    assign = upsample(ema_out["out"].float(), size).argmax(1)
    means, present = class_mean_features(feat_full, assign, bank.num_classes, s1.prototype_min_pixels)
    bank.momentum_update(means, present, s1.prototype_momentum)
    lap("prototype_update")
    return t


def measure(name: str, cfg, full_size, resize_width, batch_size: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    net, ema, opt, bank = _stage(cfg)
    batches = [_inputs(cfg, full_size, resize_width, batch_size, rng) for _ in range(2)]
    one_step(cfg, net, ema, opt, bank, batches[0])  # warm-up
    laps = [one_step(cfg, net, ema, opt, bank, batches[i % 2]) for i in range(steps)]
    med = {k: 1e3 * _common.median(lap[k] for lap in laps) for k, _, _ in ROWS}
    total = sum(med.values())
    prod_a = sum(med[k] for k, _, added in ROWS if added)
    d = cfg.data
    return {
        "setting": {"name": name, "depth": cfg.model.depth, "width": cfg.model.width, "head_mid": cfg.model.head_mid,
                    "batch": batch_size, "crop": list(d.crop_size), "full_image": list(full_size),
                    "ema_train_mode": cfg.stage1.ema_train_mode, "measured_steps": steps,
                    "threads": torch.get_num_threads()},
        "ms": med,
        "share": {k: v / total for k, v in med.items()},
        "step_ms": total,
        "step_ms_median_of_totals": 1e3 * _common.median(sum(lap.values()) for lap in laps),
        "proda_logic_ms": prod_a,
        "proda_logic_share": prod_a / total,
        "proda_network_passes_share": (med["ema_forward"] + med["strong_forward"] + med["strong_backward"]) / total,
    }


def run(quick: bool = False) -> dict:
    _common.single_thread()
    from proda.config import load_config, replace

    root = _common.ROOT
    demo = load_config(root / "configs/synthetic/stage1.yaml")
    r101 = load_config(root / "configs/gta5/stage1.yaml")
    # the paper's 896x512 crops of 2048x1024 with RandomSized(2200), shrunk to a 448x256 image
    r101 = replace(r101, **{"data.crop_size": (224, 128), "data.batch_size": 1})
    result = {
        "demo": measure("demo", demo, (192, 96), demo.data.resize_width, demo.data.batch_size, 4 if quick else 15),
        "resnet101": measure("resnet101", r101, (448, 256), round(2200 * 448 / 2048), 1, 2 if quick else 5),
    }
    _print(result)
    return result


def _print(r: dict) -> None:
    for key, m in r.items():
        s = m["setting"]
        rows = [[label, f"{m['ms'][k]:.1f}", f"{100 * m['share'][k]:.1f} %"] for k, label, _ in ROWS]
        rows.append(["total (sum of medians)", f"{m['step_ms']:.1f}", "100 %"])
        _common.table(
            f"stage1_step, {key}: ResNet-{s['depth']} width {s['width']}, batch {s['batch']}, crop "
            f"{s['crop'][0]}x{s['crop'][1]}, full image {s['full_image'][0]}x{s['full_image'][1]} "
            f"({s['measured_steps']} steps, {s['threads']} thread)",
            ["component", "ms", "share of step"],
            rows,
            [f"[ProDA] logic: {100 * m['proda_logic_share']:.1f} % of the step; the network passes that exist only "
             f"for ProDA (EMA full-image forward, strong view forward+backward): {100 * m['proda_network_passes_share']:.1f} %",
             f"median of whole-step totals: {m['step_ms_median_of_totals']:.1f} ms"],
        )


if __name__ == "__main__":
    _common.cli(run, __doc__)
