"""ACDC and Dark Zurich in their official layouts: readers, `data check`, per-condition evaluation and the
two benchmark-server formats of `proda predict`, on tiny datasets written at test time."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import ACDC_SEQUENCES as SEQUENCES, expected_image, put, write_acdc, write_dark_zurich

from proda.checkpoint_io import save_checkpoint
from proda.cli import main
from proda.config import load_config
from proda.data import labels
from proda.data.acdc import ACDCDataset
from proda.data.check import check_dataset
from proda.data.dark_zurich import DarkZurichDataset
from proda.data.registry import build_dataset
from proda.engine.inference import evaluate_per_condition, format_condition_table
from proda.engine.predict import cityscapes_train_ids, predict_paths
from proda.errors import ConfigError, DataError
from proda.io import encode_png, read_label_ids
from proda.models.deeplab import DeepLabV2
from proda.models.meta import model_meta

SIZE = (6, 4)  # (W, H) of every image (the writers' default)
@pytest.fixture
def acdc(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "ACDC"
    return root, write_acdc(root)


@pytest.fixture
def dark_zurich(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "dark_zurich"
    return root, write_dark_zurich(root)


# ---------------------------------------------------------------------------------------------------
# Readers


def test_acdc_reads_every_condition_without_reference_images(acdc) -> None:
    root, raws = acdc
    reader = ACDCDataset(root, "train")
    assert len(reader) == 8 and reader.conditions == ("fog", "night", "rain", "snow")
    assert [reader.condition_of(i) for i in range(len(reader))] == [c for c in SEQUENCES for _ in range(2)]
    assert not any("ref" in s.image.name for s in reader.samples)
    item = reader[2]
    assert item["condition"] == "night" and item["name"] == "GOPR0351_frame_000000_rgb_anon"
    np.testing.assert_array_equal(item["label"], labels.cityscapes_lut(19)[raws[item["name"]]])
    np.testing.assert_array_equal(item["image"], expected_image(raws[item["name"]]))


def test_acdc_selects_conditions_and_subsets(acdc) -> None:
    root, _ = acdc
    reader = ACDCDataset(root, "val", conditions="snow,fog")  # kept in the dataset's order
    assert reader.conditions == ("fog", "snow") and len(reader) == 4
    night = ACDCDataset(root, "val").only("night")
    assert night.conditions == ("night",) and {s.name for s in night.samples} == {
        "GOPR0351_frame_000100_rgb_anon", "GOPR0351_frame_000101_rgb_anon"}
    with pytest.raises(ConfigError, match="unknown ACDC condition 'sun'; expected 'all' or any of fog, night, rain, snow"):
        ACDCDataset(root, "val", conditions="sun")
    with pytest.raises(ConfigError, match="ACDC has no split 'all'"):
        ACDCDataset(root, "all")


def test_acdc_test_split_is_unlabelled_and_trainid_labels_read_the_same(tmp_path: Path) -> None:
    both = tmp_path / "both"
    write_acdc(both, label_formats=("labelIds", "labelTrainIds"))
    only_train_ids = tmp_path / "train_ids"
    write_acdc(only_train_ids, label_formats=("labelTrainIds",))
    by_ids, by_train_ids = ACDCDataset(both, "val", classes=16), ACDCDataset(only_train_ids, "val", classes=16)
    assert (by_ids.label_format, by_train_ids.label_format) == ("labelIds", "labelTrainIds")
    for i in range(len(by_ids)):
        np.testing.assert_array_equal(by_ids.read_label(i), by_train_ids.read_label(i))
    assert set(np.unique(by_ids.read_label(2)).tolist()) == {0, 9}  # road, and sky at 16 classes
    test = ACDCDataset(both, "test")
    assert len(test) == 8 and not test.has_labels and "label" not in test[0]


def test_acdc_errors_name_the_file_or_folder(acdc) -> None:
    root, _ = acdc
    gt = root / "gt" / "fog" / "val" / "GOPR0475" / "GOPR0475_frame_000100_gt_labelIds.png"
    gt.unlink()
    with pytest.raises(DataError, match=r"GOPR0475_frame_000100_rgb_anon\.png: no label .*GOPR0475_frame_000100_gt_labelIds\.png"):
        ACDCDataset(root, "val")
    with pytest.raises(DataError, match=r"rgb_anon/rain/val: ACDC images folder not found"):
        (root / "rgb_anon" / "rain" / "val").rename(root / "moved")
        ACDCDataset(root, "val", conditions="rain")
    put(root / "gt" / "snow" / "val" / "GOPR0122" / "GOPR0122_frame_000100_gt_labelIds.png", encode_png(np.full((4, 6), 40, np.uint8)))
    with pytest.raises(DataError, match=r"GOPR0122_frame_000100_gt_labelIds\.png: unknown label values \[40\]"):
        ACDCDataset(root, "val", conditions="snow").read_label(0)


def test_dark_zurich_times_of_day_and_splits(dark_zurich) -> None:
    root, raws = dark_zurich
    night = DarkZurichDataset(root)  # default: the night training images, unlabelled
    assert night.conditions == ("night",) and len(night) == 2 and not night.has_labels
    train = DarkZurichDataset(root, "train", time_of_day="all")
    assert [train.condition_of(i) for i in range(len(train))] == ["day", "day", "twilight", "twilight", "night", "night"]
    assert train[0]["condition"] == "day" and "label" not in train[0]
    val = DarkZurichDataset(root, "val")
    assert len(val) == 2 and val.has_labels and not any("ref" in s.image.name for s in val.samples)
    np.testing.assert_array_equal(val[1]["label"], labels.cityscapes_lut(19)[raws[val[1]["name"]]])
    assert not DarkZurichDataset(root, "test").has_labels
    with pytest.raises(ConfigError, match="Dark Zurich's val split is recorded at night only"):
        DarkZurichDataset(root, "val", time_of_day="day")


def test_registry_builds_both_with_a_subset(acdc, dark_zurich) -> None:
    reader = build_dataset("acdc", acdc[0], split="val", subset="night", label_cache=None)
    assert isinstance(reader, ACDCDataset) and reader.conditions == ("night",)
    reader = build_dataset("dark_zurich", dark_zurich[0], split="train", subset="day,twilight", label_cache=None)
    assert isinstance(reader, DarkZurichDataset) and reader.conditions == ("day", "twilight")
    with pytest.raises(ConfigError, match="cityscapes has no subsets"):
        build_dataset("cityscapes", acdc[0], subset="fog")


def test_data_check_reports_unpaired_and_bad_files_by_name(acdc, capsys) -> None:
    root, _ = acdc
    report = check_dataset("acdc", root, split="val", progress=False)
    assert report.ok and report.num_samples == 8
    (root / "gt" / "night" / "val" / "GOPR0351" / "GOPR0351_frame_000101_gt_labelIds.png").unlink()
    put(root / "gt" / "fog" / "val" / "GOPR0475" / "GOPR0475_frame_000555_gt_labelIds.png", encode_png(np.zeros((4, 6), np.uint8)))
    put(root / "gt" / "rain" / "val" / "GOPR0400" / "GOPR0400_frame_000100_gt_labelIds.png", encode_png(np.full((4, 6), 99, np.uint8)))
    report = check_dataset("acdc", root, split="val", progress=False)
    assert report.num_samples == 7 and len(report.problems) == 3
    text = "\n".join(report.problems)
    assert "GOPR0351_frame_000101_rgb_anon.png: no label" in text
    assert "GOPR0475_frame_000555_gt_labelIds.png: label without an image" in text
    assert "GOPR0400_frame_000100_gt_labelIds.png: unknown label values [99]" in text
    assert main(["data", "check", "--dataset", "acdc", str(root), "--split", "val"]) == 1
    assert "GOPR0351_frame_000101_rgb_anon.png: no label" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Evaluation per condition


class ConstantModel(torch.nn.Module):
    """Predicts one class everywhere (logit 10 against 0)."""

    def __init__(self, class_id: int, num_classes: int = 19) -> None:
        super().__init__()
        self.class_id, self.num_classes = class_id, num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = torch.zeros(x.shape[0], self.num_classes, x.shape[2], x.shape[3])
        out[:, self.class_id] = 10.0
        return {"out": out}


def test_evaluation_reports_each_condition_and_the_whole(acdc) -> None:
    root, _ = acdc
    reader = ACDCDataset(root, "val")
    matrices = evaluate_per_condition(ConstantModel(0), reader, torch.device("cpu"), 19, progress=False)
    assert list(matrices) == ["fog", "night", "rain", "snow", "all"]
    mious = {c: m.miou() for c, m in matrices.items()}
    # all: road IoU 120 / 192 (every pixel predicted road, 120 are), sky 0 -> 31.25
    assert mious == pytest.approx({"fog": 100.0, "night": 25.0, "rain": 0.0, "snow": 100.0, "all": 31.25})
    table = format_condition_table(matrices, {"fog": 2, "night": 2, "rain": 2, "snow": 2, "all": 8})
    assert table.splitlines()[2:] == ["fog             2   100.00", "night           2    25.00",
                                      "rain            2     0.00", "snow            2   100.00",
                                      "all             8    31.25"]
    # a reader without conditions, or with one, is scored whole
    one = evaluate_per_condition(ConstantModel(0), reader.only("night"), torch.device("cpu"), 19, progress=False)
    assert list(one) == ["all"] and one["all"].miou() == pytest.approx(25.0)


def constant_net(train_id: int, num_classes: int = 19) -> DeepLabV2:
    """The smallest real network, made to predict one class everywhere (constant features)."""
    torch.manual_seed(0)
    net = DeepLabV2(num_classes, depth=18, width=8, head_mid=16)
    with torch.no_grad():
        net.layer5.bottleneck[2].weight.zero_()
        net.layer5.bottleneck[2].bias.fill_(1.0)
        net.layer5.head[1].weight.zero_()
        net.layer5.head[1].weight[train_id] = 0.25
    return net.eval()


def write_ckpt(path: Path, net: DeepLabV2, num_classes: int = 19) -> Path:
    cfg = load_config(None, ["data.source_root=x", "data.target_root=y", "model.depth=18", "model.width=8",
                             "model.head_mid=16", f"data.num_classes={num_classes}"])
    save_checkpoint(path, {"format": "proda", "stage": "supervised", "iteration": 0,
                           "model": net.state_dict(), "meta": model_meta(cfg)})
    return path


def test_evaluate_command_writes_the_condition_table(acdc, tmp_path: Path, capsys) -> None:
    root, _ = acdc
    ckpt = write_ckpt(tmp_path / "road.pth", constant_net(0))
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "acdc", str(root), "--split", "val",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["miou"] == pytest.approx(31.25)
    assert {c: r["miou"] for c, r in result["per_condition"].items()} == pytest.approx(
        {"fog": 100.0, "night": 25.0, "rain": 0.0, "snow": 100.0})
    assert result["per_condition"]["night"]["num_images"] == 2
    assert result["per_condition"]["night"]["per_class_iou"]["road"] == pytest.approx(50.0)
    assert "night           2    25.00" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "acdc", str(root), "--split", "test"]) == 2
    assert "has no public labels" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Benchmark-server formats


def test_acdc_format_writes_trainid_pngs_named_after_the_images(acdc, tmp_path: Path) -> None:
    root, _ = acdc
    ckpt = write_ckpt(tmp_path / "sky.pth", constant_net(9, num_classes=16), num_classes=16)
    out = tmp_path / "submit"
    written = predict_paths(ckpt, [str(root / "rgb_anon" / "*" / "test" / "*" / "*.png")], out, formats=("acdc",), progress=False)
    names = sorted(p.name for p in written)
    assert len(names) == 8 and names[0] == "GOPR0122_frame_000200_rgb_anon.png"
    assert {p.parent for p in written} == {out / "labelTrainIds"}
    pred = read_label_ids(written[0])
    assert pred.dtype == np.uint8 and pred.shape == SIZE[::-1]
    assert set(np.unique(pred).tolist()) == {10}  # sky: class 9 of the 16-class model, Cityscapes trainId 10


def test_dark_zurich_format_writes_labels_invalid_masks_and_16_bit_confidence(dark_zurich, tmp_path: Path) -> None:
    root, _ = dark_zurich
    ckpt = write_ckpt(tmp_path / "road.pth", constant_net(0))
    test_images = str(root / "rgb_anon" / "test" / "night")
    out = tmp_path / "submit"
    written = predict_paths(ckpt, [test_images], out, formats=("dark_zurich",), progress=False, invalid_threshold=0.0)
    stem = "GOPR0357_frame_000000_rgb_anon.png"
    assert written[:3] == [out / "labelTrainIds" / stem, out / "labelTrainIds_invalid" / stem, out / "confidence" / stem]
    assert sorted(p.name for p in (out / "confidence").iterdir()) == [stem, "GOPR0357_frame_000001_rgb_anon.png"]
    label = read_label_ids(out / "labelTrainIds" / stem)
    assert label.dtype == np.uint8 and set(np.unique(label).tolist()) == {0}
    np.testing.assert_array_equal(read_label_ids(out / "labelTrainIds_invalid" / stem), label)  # nothing invalid
    import cv2

    confidence = cv2.imread(str(out / "confidence" / stem), cv2.IMREAD_UNCHANGED)
    # road logit 0.25 * 16 features = 4 against 18 zeros: softmax max e^4 / (e^4 + 18)
    p = math.exp(4.0) / (math.exp(4.0) + 18.0)
    assert confidence.dtype == np.uint16 and confidence.shape == SIZE[::-1]
    assert set(np.unique(confidence).tolist()) == {round(p * 65535)}
    # a threshold above the confidence marks every pixel invalid
    predict_paths(ckpt, [test_images], out, formats=("dark_zurich",), progress=False, invalid_threshold=0.9)
    assert set(np.unique(read_label_ids(out / "labelTrainIds_invalid" / stem)).tolist()) == {255}


def test_server_format_errors() -> None:
    assert cityscapes_train_ids(labels.class_names(13))[:4].tolist() == [0, 1, 2, 6]
    with pytest.raises(ConfigError, match="lane_marking are not Cityscapes classes"):
        cityscapes_train_ids(("road", "lane_marking"))
    with pytest.raises(ConfigError, match="one benchmark-server format at a time"):
        predict_paths("unused.pth", ["unused"], "out", formats=("acdc", "dark_zurich"))
    with pytest.raises(ConfigError, match=r"invalid threshold is a confidence in \[0, 1\], got 1.5"):
        predict_paths("unused.pth", ["unused"], "out", formats=("dark_zurich",), invalid_threshold=1.5)


def test_shipped_configs_adapt_cityscapes_to_both() -> None:
    from proda.pipeline import PipelineSpec

    acdc_cfg = load_config("cityscapes_acdc/stage1")
    assert (acdc_cfg.data.source, acdc_cfg.data.target, acdc_cfg.data.target_subset) == ("cityscapes", "acdc", None)
    assert acdc_cfg.stage1.soft_labels == "runs/cityscapes_acdc/warmup/pseudo_soft"
    night_cfg = load_config("cityscapes_dark_zurich/stage3")
    assert (night_cfg.data.target, night_cfg.data.target_subset, night_cfg.data.num_classes) == ("dark_zurich", "night", 19)
    assert night_cfg.distill.teacher == "runs/cityscapes_dark_zurich/stage2/latest.pth"
    stages = PipelineSpec.load(Path(__file__).parents[2] / "proda/configs/cityscapes_dark_zurich/pipeline.yaml").stages
    assert "oracle" not in stages  # Dark Zurich's training images have no labels
