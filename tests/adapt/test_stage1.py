"""Stage 1 end to end on a tiny dataset: warm-up -> prototypes -> soft labels -> stage 1, and its resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import write_cityscapes, write_gta5
from proda.adapt.prototypes import PrototypeBank
from proda.config import load_config
from proda.data.pseudo_labels import PseudoLabelStore
from proda.adapt.prototypes import prototypes_command
from proda.engine.pseudo_label_generation import pseudo_label_command
from proda.adapt.registry import train
from proda.engine.trainer import Trainer
from proda.adapt.registry import build_stage

CONFIGS = Path(__file__).parents[2] / "proda" / "configs" / "synthetic"
IDS = [7, 8, 11, 21, 23, 26, 0]


def cfg_for(name: str, data: Path, out: Path, *extra: str):
    return load_config(CONFIGS / f"{name}.yaml", [
        f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.out_dir={out}",
        "data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16",
        "optim.iterations=4", "run.eval_every=2", "run.checkpoint_every=2", "run.tensorboard=false",
        "run.log_every=1", "warmup.disc_width=4", *extra,
    ])


@pytest.fixture(scope="module")
def warmed_up(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage1")
    data = root / "data"
    write_gta5(data / "gta5", n=6, size=(48, 24), ids=IDS)
    write_cityscapes(data / "cityscapes", per_city=2, size=(48, 24), ids=IDS)
    wu = root / "warmup"
    train(cfg_for("warmup", data, wu), progress=False)
    cfg = cfg_for("warmup", data, wu)
    prototypes_command(str(wu / "latest.pth"), cfg, None, progress=False)
    pseudo_label_command(str(wu / "latest.pth"), cfg, soft=True, progress=False)
    return data, wu


def stage1_cfg(data: Path, wu: Path, out: Path, *extra: str):
    return cfg_for("stage1", data, out, f"model.init={wu / 'latest.pth'}",
                   f"stage1.soft_labels={wu / 'pseudo_soft'}", f"stage1.prototypes={wu / 'prototypes.pth'}",
                   *PAPER_LOSSES, *extra)


# every stage-1 loss on (the synthetic config turns the pseudo-label terms off; configs/gta5 has these values)
PAPER_LOSSES = ("stage1.sce_alpha=0.1", "stage1.sce_beta=1.0", "stage1.regular_weight=0.1")


def test_artifacts_of_the_warm_up(warmed_up):
    data, wu = warmed_up
    bank = PrototypeBank.load(wu / "prototypes.pth")
    assert bank.prototypes.shape == (19, 16) and torch.isfinite(bank.prototypes).all()
    assert bank.provenance["checkpoint"].endswith("latest.pth")
    store = PseudoLabelStore.open(wu / "pseudo_soft", kind="soft", num_classes=19)
    names = [p.stem for p in (wu / "pseudo_soft").glob("*.soft")]
    assert len(names) == 4  # the target training split
    soft = store.read_soft(names[0])
    assert soft.shape[0] == 19 and np.allclose(soft.sum(0), 1, atol=1e-3)


def test_stage1_trains_and_reports_pseudo_label_quality(warmed_up, tmp_path):
    data, wu = warmed_up
    result = train(stage1_cfg(data, wu, tmp_path / "s1"), progress=False)
    assert result.iteration == 4
    quality = result.final["pseudo_label_miou"]
    assert 0.0 <= quality["raw"] <= 100.0 and 0.0 <= quality["rectified"] <= 100.0
    assert "pseudo_label_miou_raw" in result.final


def test_stage1_resume_is_exact(warmed_up, tmp_path):
    data, wu = warmed_up
    straight = Trainer(stage1_cfg(data, wu, tmp_path / "a"), build_stage, progress=False)
    straight.fit()
    Trainer(stage1_cfg(data, wu, tmp_path / "b"), build_stage, progress=False).fit(stop_after=2)
    resumed = Trainer(stage1_cfg(data, wu, tmp_path / "b"), build_stage, progress=False)
    resumed.fit()
    for name in ("model", "ema"):
        a, b = straight.stage.modules[name].state_dict(), resumed.stage.modules[name].state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert torch.equal(straight.stage.bank.prototypes, resumed.stage.bank.prototypes)
    # the prototypes moved during training
    assert not torch.equal(PrototypeBank.load(wu / "prototypes.pth").prototypes, straight.stage.bank.prototypes)


def test_a_skipped_step_does_not_move_the_prototypes(warmed_up, tmp_path):
    """The trainer skips after_step for a non-finite loss; that step's EMA outputs must not be used later."""
    data, wu = warmed_up
    trainer = Trainer(stage1_cfg(data, wu, tmp_path / "s"), build_stage, progress=False)
    stage = trainer.stage
    from proda.engine.data import training_loader

    batch = {name: next(iter(training_loader(ds, 2, 0, start_step=0, num_workers=0))) for name, ds in stage.streams.items()}
    stage.train_mode()
    stage.step(batch, 0)  # imagine its loss was non-finite: no after_step
    stage.step(batch, 1)
    assert len(stage._pending) == 1
    stage.step(batch, 1)  # a second micro-batch of the same iteration (gradient accumulation) is kept
    assert len(stage._pending) == 2
