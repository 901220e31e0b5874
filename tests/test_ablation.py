"""`proda ablation` on a tiny dataset (2 seeds, 2 iterations a run), and the stage-1 switch its first row needs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixtures import target_views, write_tiny_domains
from proda.ablation import ROWS, VARIANTS, run_ablation, variant_overrides
from proda.adapt.prototypes import PrototypeBank
from proda.adapt.stage1 import Stage1
from proda.cli import main
from proda.config import load_config
from proda.errors import ConfigError
from proda.models.build import build_model

PIPELINE = Path(__file__).parents[1] / "proda" / "configs" / "synthetic" / "pipeline.yaml"
TINY = ["data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16", "optim.iterations=2",
        "run.eval_every=2", "warmup.disc_width=4", "run.tensorboard=false", "run.panel_every=0"]
SEEDS = [1337, 1]


def tiny_pipeline(root: Path) -> Path:
    """The synthetic pipeline with the oracle in this process (no second interpreter to start: faster here)."""
    raw = yaml.safe_load(PIPELINE.read_text())
    raw["stages"] = {k: str(PIPELINE.parent / v) for k, v in raw["stages"].items()}
    raw["background_oracle"] = False
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    overrides = [f"out_dir={root / 'out'}", *write_tiny_domains(root), *TINY]
    summary = run_ablation(tiny_pipeline(root), overrides, SEEDS, progress=False)
    return root, overrides, summary


def test_every_row_of_every_seed_with_numpy_mean_and_std(ablation):
    root, _, summary = ablation
    out = root / "out"
    written = json.loads((out / "ablation.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["seeds"] == SEEDS
    assert list(written["rows"]) == list(ROWS)
    for name, row in written["rows"].items():
        assert len(row["miou"]) == 2 and all(0.0 <= v <= 100.0 for v in row["miou"]), name
        assert row["mean"] == pytest.approx(np.mean(row["miou"]), abs=1e-12)
        assert row["std"] == pytest.approx(np.std(row["miou"]), abs=1e-12)
    # each row's figure is its run's own final evaluation; distill is the last distillation stage
    for i, seed in enumerate(SEEDS):
        for name, folder in (("self_training", "self_training"), ("distill", "stage3")):
            result = json.loads((out / f"seed_{seed}" / folder / "result.json").read_text())
            assert written["rows"][name]["miou"][i] == result["final"]["miou"]
    table = (out / "ablation.md").read_text()
    assert table.startswith("# proda ablation: 2 training seed(s)")
    for name, row in written["rows"].items():
        assert f"| {name} | {row['mean']:.2f} ± {row['std']:.2f} | {ROWS[name]} |" in table
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ablation.png").stat().st_size > 10_000


def test_each_seed_trains_in_its_own_folder_from_its_own_warmup(ablation):
    root, _, _ = ablation
    for seed in SEEDS:
        folder = root / "out" / f"seed_{seed}"
        for variant in VARIANTS:
            cfg = yaml.safe_load((folder / variant / "config.yaml").read_text())
            assert cfg["run"]["seed"] == seed
            assert cfg["model"]["init"] == str(folder / "warmup" / "latest.pth")
            assert cfg["stage1"]["soft_labels"] == str(folder / "warmup" / "pseudo_soft")
            assert cfg["optim"]["iterations"] == 2  # stage 1's budget
    # the seeds differ: the same row's figures are not all equal across them
    rows = json.loads((root / "out" / "ablation.json").read_text())["rows"]
    assert any(row["miou"][0] != row["miou"][1] for row in rows.values())


def test_a_finished_ablation_is_skipped(ablation):
    root, overrides, summary = ablation
    out = root / "out"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed_*/*/latest.pth")}
    stamps |= {p: p.stat().st_mtime_ns for p in out.glob("seed_*/*/pseudo_*/meta.json")}
    assert len(stamps) == 2 * (9 + 3)  # 9 trained steps, soft labels and two rounds of hard labels per seed
    again = run_ablation(root / "pipeline.yaml", overrides, SEEDS, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again == summary


def test_the_variants_terms(ablation):
    """The synthetic stage 1 turns SCE and the regulariser off: denoise takes the paper's SCE weights then."""
    root, _, _ = ablation
    stage1 = load_config(PIPELINE.parent / "stage1.yaml").stage1
    assert (stage1.sce_alpha, stage1.sce_beta, stage1.consistency_weight) == (0.0, 0.0, 10.0)
    expected = {  # rectify, sce_alpha, sce_beta, consistency, regular
        "self_training": (False, 1.0, 0.0, 0.0, 0.0),
        "denoise": (True, 0.1, 1.0, 0.0, 0.0),
        "denoise_structure": (True, 0.1, 1.0, 10.0, 0.0),
    }
    for variant, terms in expected.items():
        cfg = yaml.safe_load((root / "out" / "seed_1" / variant / "config.yaml").read_text())["stage1"]
        assert (cfg["rectify"], cfg["sce_alpha"], cfg["sce_beta"], cfg["consistency_weight"],
                cfg["regular_weight"]) == terms, variant
    # a config with its own SCE weights keeps them
    paper = load_config(PIPELINE.parent / "stage1.yaml", ["stage1.sce_alpha=0.3", "stage1.sce_beta=0.5"]).stage1
    assert variant_overrides("denoise", paper)[1:3] == ["stage1.sce_alpha=0.3", "stage1.sce_beta=0.5"]


def test_seeds_and_run_seed_together_are_refused(tmp_path, capsys):
    assert main(["ablation", "synthetic/pipeline", f"out_dir={tmp_path}", "run.seed=3", "--seeds", "1,2"]) == 2
    assert "run.seed=... and --seeds both set the training seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ablation", "synthetic/pipeline", "--seeds", "1,x"])
    assert "expected comma-separated integers such as 1337,1,2, got '1,x'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="run.seed=... and --seeds"):
        run_ablation("synthetic/pipeline", [f"out_dir={tmp_path}", "run.seed=3"], [1])


# ------------------------------------------------------------------------------------------- stage1.rectify
C, CROP, FULL = 19, (32, 16), (48, 24)  # classes, crop (w, h), full image (w, h)


def stage1_batch(cfg, rng: np.random.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """A hand-made stage-1 batch of two images: weak crops with their geometry, strong views, full images,
    near-flat soft labels P0 (so that rectification changes most labels) and, as the 'truth', argmax P0."""
    target = target_views(rng, cfg, FULL)
    target["soft"] = (0.01 * torch.randn(2, C, CROP[1] // 4, CROP[0] // 4)).softmax(1)
    target["label_grid"] = target["soft"].argmax(1)
    source = {"image": torch.rand(2, 3, CROP[1], CROP[0]),
              "label": torch.from_numpy(rng.integers(0, C, (2, CROP[1], CROP[0]))).long()}
    return {"source": source, "target": target}


def tiny_stage1(*overrides: str) -> Stage1:
    torch.manual_seed(0)
    cfg = load_config("synthetic/stage1", [
        "model.depth=18", "model.width=8", "model.head_mid=16", f"data.crop_size=[{CROP[0]},{CROP[1]}]",
        "data.batch_size=2", "data.resize_width=null", "data.scale_range=[0.9,1.1]",
        "stage1.sce_alpha=1", "stage1.sce_beta=0", *overrides])
    model = build_model(cfg.model, C)
    bank = PrototypeBank(C, model.feat_channels)
    bank.accumulate_initial(10 * torch.randn(1, C, model.feat_channels), torch.ones(1, C, dtype=torch.bool))
    stage = Stage1(cfg, torch.device("cpu"), model, bank)
    stage.train_mode()
    return stage


@pytest.mark.parametrize("rectify", [False, True])
def test_without_rectification_the_pseudo_label_is_argmax_p0(rectify):
    stage = tiny_stage1(f"stage1.rectify={str(rectify).lower()}")
    losses = stage.step(stage1_batch(stage.cfg, np.random.default_rng(0)), 0)
    assert torch.isfinite(losses["target_sce"])
    # the stage counts its training pseudo labels against the batch's truth, here argmax P0 itself
    counts = stage.pl_rect.mat
    assert counts.sum() == 2 * (CROP[1] // 4) * (CROP[0] // 4)
    if rectify:
        assert counts.sum() - counts.diag().sum() > counts.sum() // 2  # the prototypes moved most labels
    else:
        assert counts.sum() == counts.diag().sum()  # every label is argmax P0


def test_the_threshold_selects_the_self_training_labels_too():
    """The self-training row keeps the pseudo labels the same threshold keeps in the denoising rows: argmax P0
    where max P0 reaches it, ignored elsewhere (before, the threshold applied to rectified labels only)."""
    stage = tiny_stage1("stage1.rectify=false", "stage1.pseudo_threshold=0.9")
    batch = stage1_batch(stage.cfg, np.random.default_rng(0))
    soft = batch["target"]["soft"]
    confident = torch.zeros(soft.shape[0], *soft.shape[2:], dtype=torch.bool)
    confident[:, :, ::2] = True  # every other column: P0 puts 0.95 on one class
    classes = torch.randint(0, C, confident.shape)
    peaked = torch.full_like(soft, 0.05 / (C - 1)).scatter_(1, classes[:, None], 0.95)
    batch["target"]["soft"] = torch.where(confident[:, None], peaked, soft)
    batch["target"]["label_grid"] = batch["target"]["soft"].argmax(1)
    stage.step(batch, 0)
    counts = stage.pl_rect.mat
    assert counts.sum() == confident.sum()  # the flat pixels (max P0 about 1/19) are no label
    assert counts.sum() == counts.diag().sum()  # and the kept ones are argmax P0
