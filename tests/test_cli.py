"""The command line: each verb works on generated data; expected errors are one line, exit 2, no traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import write_cityscapes, write_gta5
from proda.cli import main
from proda.data.labels import compact_to_cityscapes_id, cityscapes_lut
from proda.io import write_png

CONFIG = Path(__file__).parents[1] / "proda" / "configs" / "synthetic" / "source_only.yaml"
IDS = [7, 8, 11, 21, 23, 26, 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_gta5(root / "gta5", n=4, size=(48, 24), ids=IDS)
    raw = write_cityscapes(root / "cityscapes", per_city=2, size=(48, 24), ids=IDS)
    run = root / "run"
    code = main(["train", str(CONFIG), f"data.source_root={root / 'gta5'}", f"data.target_root={root / 'cityscapes'}",
                 f"run.out_dir={run}", "data.crop_size=[32,16]", "data.batch_size=2", "model.width=8",
                 "model.head_mid=16", "optim.iterations=2", "run.eval_every=2", "run.tensorboard=false", "--no-progress"])
    assert code == 0
    return root, run, raw


def test_evaluate_checkpoint_writes_json_equal_to_training_eval(trained, tmp_path):
    root, run, _ = trained
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "latest.pth"), "--dataset", "cityscapes",
                 str(root / "cityscapes"), "--split", "val", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"miou", "per_class_iou"} and len(result["per_class_iou"]) == 19
    trained_eval = json.loads((run / "result.json").read_text())["final"]
    assert result["miou"] == pytest.approx(trained_eval["miou"])


def test_evaluate_predictions_in_both_formats(trained, tmp_path):
    root, _, raw = trained
    lut = cityscapes_lut(19)
    to_id = compact_to_cityscapes_id(19)
    for fmt in ("trainid", "labelid"):
        folder = tmp_path / fmt
        for name, ids in raw["val"].items():
            train_ids = lut[ids]
            train_ids[train_ids == 255] = 0  # a prediction never holds 'ignore'
            write_png(folder / f"{name}.png", train_ids if fmt == "trainid" else to_id[train_ids])
        out = tmp_path / f"{fmt}.json"
        assert main(["evaluate", "--predictions", str(folder), "--dataset", "cityscapes", str(root / "cityscapes"),
                     "--split", "val", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["miou"] == pytest.approx(100.0)


def test_data_check_json_and_exit_codes(trained, tmp_path, capsys):
    root, _, _ = trained
    out = tmp_path / "check.json"
    assert main(["data", "check", "--dataset", "gta5", str(root / "gta5"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_samples"] == 4 and set(report["class_pixels"]) == {str(i) for i in range(19)} | {"ignore"}
    assert sum(report["class_pixels"].values()) == 4 * 48 * 24
    assert main(["data", "check", "--dataset", "cityscapes", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", str(CONFIG), "optim.lrr=1"], "unknown key optim.lrr; valid keys in optim:"),
    (["train", str(CONFIG), "data.source_root=/nonexistent/gta5", "data.target_root=/nonexistent/cs"],
     "/nonexistent/gta5"),
    (["train", str(CONFIG), "run.device=cuda:0"], "run.device: 'cuda:0' requested but CUDA is not available"),
    (["evaluate", "--checkpoint", "/nonexistent.pth", "--dataset", "cityscapes", "/x"], "/nonexistent.pth: checkpoint not found"),
])
def test_expected_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_synth_writes_the_official_layouts(tmp_path):
    assert main(["synth", str(tmp_path / "s"), "--size", "64x32", "--n-source", "2", "--n-target", "2", "--n-val", "1"]) == 0
    assert len(list((tmp_path / "s" / "gta5" / "images").glob("*.png"))) == 2
    assert len(list((tmp_path / "s" / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))) == 1
