"""Every shipped config runs: each family's pipeline (all of its stage configs: GTA5, SYNTHIA, ACDC, Dark Zurich) for
two iterations per stage on fixtures written in the family's dataset layouts at a tiny size.

Only sizes, run lengths and the device are overridden; dataset roots are the configs' own relative paths
(``datasets/...``) and the pretrained files they name (``pretrained/...``: ImageNet ResNet, SimCLRv2) are written
there, in those formats, at the tiny architecture. The synthetic family is run by test_pipeline.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fixtures import write_acdc, write_cityscapes, write_dark_zurich, write_gta5, write_synthia
from proda.config import ModelConfig, load_config, resolve_config_path
from proda.models.build import build_model
from proda.models.deeplab import is_backbone_key
from proda.pipeline import run_pipeline

CONFIGS = Path(__file__).parents[1] / "proda" / "configs"
IDS = [7, 8, 11, 21, 23, 26, 0]  # Cityscapes label ids (road, sidewalk, building, vegetation, sky, car, void)
SYNTHIA_IDS = [1, 2, 3, 6, 8, 0]  # SYNTHIA class ids of sky, building, road, vegetation, car, void
TINY_SIZE = (72, 36)
TINY = ["data.source_size=null", "data.target_size=null", "data.crop_size=[32,16]", "data.resize_width=null",
        "data.batch_size=2", "data.num_workers=0", "data.preflight_samples=2", "model.depth=18", "model.width=8",
        "model.head_mid=16", "optim.iterations=2", "run.eval_every=2", "run.checkpoint_every=2",
        "run.device=cpu", "run.tensorboard=false", "run.panel_every=0", "warmup.disc_width=4"]
WRITERS = {
    "gta5": lambda root: write_gta5(root, n=4, size=TINY_SIZE, ids=IDS),
    "synthia": lambda root: write_synthia(root, n=4, size=TINY_SIZE, ids=SYNTHIA_IDS),
    "cityscapes": lambda root: write_cityscapes(root, per_city=2, size=TINY_SIZE, ids=IDS),
    "acdc": lambda root: write_acdc(root, frames=1, size=TINY_SIZE),
    "dark_zurich": lambda root: write_dark_zurich(root, frames=2, size=TINY_SIZE),
}
FAMILIES = ["gta5", "synthia", "cityscapes_acdc", "cityscapes_dark_zurich"]


def write_pretrained(folder: Path) -> None:
    """A torchvision-layout ImageNet backbone and a SimCLRv2 ({'state_dict': ...}) file at the tiny architecture."""
    net = build_model(ModelConfig(depth=18, width=8, head_mid=16), 19)
    backbone = {k: v for k, v in net.state_dict().items() if is_backbone_key(k)}
    feat = net.out_channels
    imagenet = {**backbone, "fc.weight": torch.zeros(1000, feat), "fc.bias": torch.zeros(1000)}
    (folder / "pretrained" / "simclr").mkdir(parents=True)
    torch.save(imagenet, folder / "pretrained" / "resnet101-5d3b4d8f.pth")
    torch.save({"state_dict": backbone}, folder / "pretrained" / "simclr" / "r101_1x_sk0.pth")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_config_of_the_family_runs(family, tmp_path, monkeypatch):
    pipeline = CONFIGS / family / "pipeline.yaml"
    stages = yaml.safe_load(pipeline.read_text())["stages"]
    # every stage config is run by the family's pipeline or by one of its variants (e.g. synthetic/pipeline_6k)
    pipelines = sorted((CONFIGS / family).glob("pipeline*.yaml"))
    run_somewhere = {name for p in pipelines for name in yaml.safe_load(p.read_text())["stages"].values()}
    shipped = {p.name for p in (CONFIGS / family).glob("*.yaml")} - {"base.yaml"} - {p.name for p in pipelines}
    assert shipped <= run_somewhere, f"configs of {family} that no pipeline runs: {shipped - run_somewhere}"
    data = load_config(resolve_config_path(CONFIGS / family / "source_only.yaml")).data
    monkeypatch.chdir(tmp_path)  # the configs' relative dataset and pretrained paths resolve here
    WRITERS[data.source](Path(data.source_root))
    WRITERS[data.target](Path(data.target_root))
    write_pretrained(tmp_path)
    report = run_pipeline(pipeline, [f"out_dir={tmp_path / 'runs'}", *TINY], progress=False)
    assert list(report["stages"]) == list(stages)
    for stage in stages:
        assert 0.0 <= report["stages"][stage]["target_miou"] <= 100.0
        assert (tmp_path / "runs" / stage / "latest.pth").is_file()
