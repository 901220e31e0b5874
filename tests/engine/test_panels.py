"""Image panels: PNG files and TensorBoard images of a tiny supervised run and a tiny stage-1 run."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fixtures import write_cityscapes, write_gta5
from proda.config import load_config
from proda.data.labels import palette
from proda.data.pseudo_labels import PseudoLabelStore
from proda.engine.panels import TILE_WIDTH, panel_path, stack_rows, tile_size
from proda.engine.plots import panel_image
from proda.adapt.prototypes import prototypes_command
from proda.engine.pseudo_label_generation import pseudo_label_command
from proda.adapt.registry import train
from proda.models.build import upsample

CONFIGS = Path(__file__).parents[2] / "proda" / "configs" / "synthetic"
IDS = [7, 8, 11, 21, 23, 26, 0]
SIZE = (48, 24)  # (W, H) of every fixture image


def cfg_for(name: str, data: Path, out: Path, *extra: str):
    return load_config(CONFIGS / f"{name}.yaml", [
        f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.out_dir={out}",
        "data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16",
        "optim.iterations=4", "run.eval_every=2", "run.checkpoint_every=2", "run.tensorboard=false",
        "run.log_every=1", "warmup.disc_width=4", "data.num_workers=0", *extra,
    ])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("panels") / "data"
    write_gta5(root / "gta5", n=6, size=SIZE, ids=IDS)
    write_cityscapes(root / "cityscapes", per_city=2, size=SIZE, ids=IDS)  # train: 4 images, val: 2
    return root


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None
    return image[..., ::-1]  # RGB


def expected_shape(rows: int, tiles: int) -> tuple[int, int, int]:
    row = panel_image(np.zeros((SIZE[1], SIZE[0], 3), np.uint8), {f"t{i}": None for i in range(tiles - 1)},
                      palette(19))
    return stack_rows([row] * rows).shape


def tensorboard_images(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def test_supervised_run_writes_panels(data, tmp_path):
    run = tmp_path / "src"
    train(cfg_for("source_only", data, run, "run.tensorboard=true"), progress=False)
    for it in (2, 4):  # at every evaluation by default
        panel = read_png(panel_path(run, it))
        assert panel.shape == expected_shape(rows=2, tiles=3)  # 2 val images: image | truth | prediction
    assert sorted(p.name for p in (run / "panels").iterdir()) == ["iter_0000002.png", "iter_0000004.png"]
    assert tensorboard_images(run) == {"panels/target_val": [2, 4]}
    # the ground-truth tile of the first row is the label in the Cityscapes palette
    panel = read_png(panel_path(run, 4))
    bar = panel.shape[0] - 2 * SIZE[1] - 4
    bar //= 2
    from proda.data.registry import build_dataset

    truth = build_dataset("cityscapes", data / "cityscapes", split="val")[0]["label"]
    tile = panel[bar:bar + SIZE[1], SIZE[0] + 2:2 * SIZE[0] + 2]
    table = np.zeros((256, 3), np.uint8)
    table[:19] = palette(19)
    np.testing.assert_array_equal(tile, table[truth])


def test_panel_schedule_and_off(data, tmp_path):
    run = tmp_path / "every1"
    train(cfg_for("source_only", data, run, "run.panel_every=3", "run.panel_images=1"), progress=False)
    assert sorted(p.name for p in (run / "panels").iterdir()) == ["iter_0000003.png", "iter_0000004.png"]
    assert read_png(panel_path(run, 3)).shape == expected_shape(rows=1, tiles=3)
    off = tmp_path / "off"
    train(cfg_for("source_only", data, off, "run.panel_every=0"), progress=False)
    assert not (off / "panels").exists()


def test_tile_size_caps_the_width():
    assert tile_size(2048, 1024) == (TILE_WIDTH, TILE_WIDTH // 2)
    assert tile_size(48, 24) == (48, 24)
    rows = stack_rows([np.zeros((3, 5, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)], gap=1)
    assert rows.shape == (6, 5, 3) and (rows[3] == 255).all() and (rows[4:, 2:] == 255).all()


def test_stage1_run_writes_pseudo_label_panels(data, tmp_path):
    wu = tmp_path / "warmup"
    train(cfg_for("warmup", data, wu), progress=False)
    cfg = cfg_for("warmup", data, wu)
    prototypes_command(str(wu / "latest.pth"), cfg, None, progress=False)
    pseudo_label_command(str(wu / "latest.pth"), cfg, soft=True, progress=False)
    run = tmp_path / "s1"
    train(cfg_for("stage1", data, run, f"model.init={wu / 'latest.pth'}", f"stage1.soft_labels={wu / 'pseudo_soft'}",
                  f"stage1.prototypes={wu / 'prototypes.pth'}", "run.tensorboard=true"), progress=False)
    panel = read_png(panel_path(run, 4))
    # 4 target training images: image | truth | raw PL | rectified PL | prediction
    assert panel.shape == expected_shape(rows=4, tiles=5)
    assert tensorboard_images(run) == {"panels/target_train": [2, 4]}
    # the raw pseudo label tile of the first row is argmax P0 of the first target training image
    from proda.data.registry import build_dataset

    first = build_dataset("cityscapes", data / "cityscapes", split="train")[0]["name"]
    soft = PseudoLabelStore.open(wu / "pseudo_soft", kind="soft").read_soft(first)
    raw = upsample(torch.from_numpy(soft).float()[None], (SIZE[1], SIZE[0])).argmax(1)[0].numpy()
    bar = (panel.shape[0] - 4 * SIZE[1] - 3 * 4) // 4
    tile = panel[bar:bar + SIZE[1], 2 * (SIZE[0] + 2):2 * (SIZE[0] + 2) + SIZE[0]]
    np.testing.assert_array_equal(tile, palette(19)[raw])
