"""Stages built from in-memory modules and tensors (no file, no process group, no patching) take one step.

This is what the stage builders make possible: ``Stage.build`` reads files, the constructor only takes objects.
"""
from __future__ import annotations

import numpy as np
import torch

from fixtures import target_views
from proda.adapt.distill import DistillStage
from proda.adapt.prototypes import PrototypeBank
from proda.adapt.stage1 import Stage1
from proda.config import load_config
from proda.models.build import build_model

C, CROP, FULL = 19, (32, 16), (48, 24)  # classes, crop (w, h), full image (w, h)
TINY = ["model.depth=18", "model.width=8", "model.head_mid=16", f"data.crop_size=[{CROP[0]},{CROP[1]}]",
        "data.batch_size=2", "data.resize_width=null", "data.scale_range=[0.9,1.1]"]


def tiny_cfg(name: str, *extra: str):
    return load_config(f"synthetic/{name}", [*TINY, *extra])


def source_batch(rng: np.random.Generator, n: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(n, 3, CROP[1], CROP[0], generator=torch.Generator().manual_seed(1)),
            "label": torch.from_numpy(rng.integers(0, C, (n, CROP[1], CROP[0]))).long()}


def test_stage1_from_tensors_takes_a_step_and_moves_its_prototypes():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = tiny_cfg("stage1", "stage1.sce_alpha=0.1", "stage1.sce_beta=1.0", "stage1.regular_weight=0.1",
                   "stage1.prototype_min_pixels=1", "stage1.prototype_momentum=0.5")
    model = build_model(cfg.model, C)
    bank = PrototypeBank(C, model.feat_channels)
    bank.accumulate_initial(torch.randn(1, C, model.feat_channels), torch.ones(1, C, dtype=torch.bool))
    gathered = []

    def gather(means, present):  # what engine.dist.all_gather_rows does with one process, recorded
        gathered.append(means.shape)
        return means, present

    stage = Stage1(cfg, torch.device("cpu"), model, bank, gather=gather)
    assert stage.streams == {} and "ema" in stage.modules
    tgt = target_views(rng, cfg, FULL)
    gw, gh = CROP[0] // 4, CROP[1] // 4
    tgt["soft"] = torch.rand(2, C, gh, gw).softmax(1)
    batch = {"source": source_batch(rng), "target": tgt}
    before = bank.prototypes.clone()
    stage.train_mode()
    losses = stage.step(batch, 0)
    assert set(losses) == {"source_ce", "target_sce", "regular", "consistency"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    stage.optimizers["model"].step()
    ema_before = [p.clone() for p in stage.ema.parameters()]
    stage.after_step(batch, 0)
    assert gathered == [torch.Size([2, C, model.feat_channels])]  # one gather per micro-batch, B images
    assert not torch.equal(bank.prototypes, before)  # moved towards this batch's class means
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, stage.ema.parameters()))


def test_distill_stage_from_modules_takes_a_step():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cfg = tiny_cfg("stage2", "distill.kd_weight=1.0")
    model, teacher = build_model(cfg.model, C), build_model(cfg.model, C)
    stage = DistillStage(cfg, torch.device("cpu"), model, teacher, ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), keep_above=0.95)
    assert all(not p.requires_grad for p in stage.teacher.parameters()) and not stage.teacher.training
    tgt = target_views(rng, cfg, FULL)
    gw, gh = CROP[0] // 4, CROP[1] // 4
    tgt["pseudo_weak"] = torch.from_numpy(rng.integers(0, C, (2, gh, gw))).long()
    batch = {"source": source_batch(rng), "target": tgt}
    stage.train_mode()
    losses = stage.step(batch, 0)
    assert set(losses) == {"source_ce", "target_ce", "distill"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
