"""Prediction-folder scorer: official cityscapesScripts semantics, file matching, format detection, errors.

The expected scores come from ``official_reference`` below: a deliberately naive per-pixel loop over the
rules of ``evalPixelLevelSemanticLabeling.py`` (docs/datasets.md section 4), independent of the production code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from proda.engine.score_predictions import score_predictions_command, score_prediction_folder
from proda.errors import DataError
from proda.io import write_png

# Cityscapes label ids of the evaluated classes, in trainId order (docs/datasets.md sections 2-3).
IDS_19 = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
IDS_16 = [7, 8, 11, 12, 13, 17, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33]
IDS_13 = [7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33]
IGNORED_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
FRAMES = [("aachen", "000000", "000019"), ("aachen", "000001", "000042"), ("bremen", "000007", "000123")]
H, W = 8, 16


# --------------------------------------------------------------------------- fixture writers


def gt_name(city: str, seq: str, frame: str) -> str:
    return f"{city}_{seq}_{frame}_gtFine_labelIds.png"


def write_cityscapes_val(root: Path, gts: list[np.ndarray]) -> None:
    for (city, seq, frame), gt in zip(FRAMES, gts):
        write_png(root / "gtFine" / "val" / city / gt_name(city, seq, frame), gt)


def write_predictions(folder: Path, preds: list[np.ndarray], nested: bool = True) -> list[Path]:
    """One PNG per frame, city subfolders for the first two and the top level for the last (both searched)."""
    paths = []
    for i, ((city, seq, frame), pred) in enumerate(zip(FRAMES, preds)):
        sub = folder / "deep" / city if nested and i < 2 else folder
        path = sub / f"{city}_{seq}_{frame}_leftImg8bit.png"
        write_png(path, pred)
        paths.append(path)
    return paths


def to_train_ids(label_ids: np.ndarray, ids: list[int]) -> np.ndarray:
    out = np.full_like(label_ids, 255)
    for train_id, label_id in enumerate(ids):
        out[label_ids == label_id] = train_id
    return out


def official_reference(gts: list[np.ndarray], preds: list[np.ndarray], eval_ids: list[int]) -> list[float]:
    """Per-class IoU in percent (NaN when tp+fp+fn == 0), by looping over pixels the official way."""
    tp = {l: 0 for l in eval_ids}
    fp = {l: 0 for l in eval_ids}
    fn = {l: 0 for l in eval_ids}
    for gt, pred in zip(gts, preds):
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g not in eval_ids:
                continue  # ignored GT row: neither fn nor fp for anyone
            if p == g:
                tp[g] += 1
            else:
                fn[g] += 1  # includes predictions of ignored ids
                if p in eval_ids:
                    fp[p] += 1
    out = []
    for l in eval_ids:
        denom = tp[l] + fp[l] + fn[l]
        out.append(100.0 * tp[l] / denom if denom else math.nan)
    return out


def mean_of(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid)


@pytest.fixture
def scene(tmp_path: Path):
    """GT with every label id 0..33, and label-id predictions over evaluated ids and 0 (right ~50%)."""
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 34, size=(H, W), dtype=np.uint8) for _ in FRAMES]
    gts[0].reshape(-1)[:34] = np.arange(34)
    gts[2][:, :4] = 26  # a big car region
    preds = []
    for gt in gts:
        guess = rng.choice(np.array([0, *IDS_19], dtype=np.uint8), size=gt.shape)
        keep = rng.random(gt.shape) < 0.5
        preds.append(np.where(keep & np.isin(gt, IDS_19), gt, guess).astype(np.uint8))
    root = tmp_path / "cityscapes"
    write_cityscapes_val(root, gts)
    return root, gts, preds


# --------------------------------------------------------------------------- scores


def test_fixture_covers_ignored_ids(scene) -> None:
    _, gts, preds = scene
    seen = set(np.unique(np.stack(gts)).tolist())
    assert set(IGNORED_IDS) <= seen and set(IDS_19) <= seen
    assert 0 in set(np.unique(np.stack(preds)).tolist())


def test_labelid_and_trainid_folders_match_official_reference(scene, tmp_path: Path) -> None:
    root, gts, preds = scene
    write_predictions(tmp_path / "labelid", preds)
    write_predictions(tmp_path / "trainid", [to_train_ids(p, IDS_19) for p in preds])  # 0 -> 255

    by_label = score_prediction_folder(tmp_path / "labelid", root, progress=False)
    by_train = score_prediction_folder(tmp_path / "trainid", root, progress=False)
    assert by_label["pred_format"] == "labelid" and by_train["pred_format"] == "trainid"
    assert not by_label["pred_format_assumed"] and not by_train["pred_format_assumed"]
    assert by_label["num_images"] == by_train["num_images"] == 3

    expected = official_reference(gts, preds, IDS_19)
    for result in (by_label, by_train):
        got = [math.nan if v is None else v for v in result["per_class_iou"].values()]
        assert got == pytest.approx(expected, nan_ok=True)
        assert result["miou"] == pytest.approx(mean_of(expected))
        assert "miou_13" not in result
    assert list(by_label["per_class_iou"])[:3] == ["road", "sidewalk", "building"]
    assert by_label["per_class_iou"] == by_train["per_class_iou"]


def test_16_classes_ignore_terrain_truck_train_and_report_miou_13(scene, tmp_path: Path) -> None:
    root, gts, _ = scene
    rng = np.random.default_rng(1)
    preds = []
    for gt in gts:  # a 16-class model: never predicts terrain, truck or train
        guess = rng.choice(np.array([0, *IDS_16], dtype=np.uint8), size=gt.shape)
        preds.append(np.where((rng.random(gt.shape) < 0.5) & np.isin(gt, IDS_16), gt, guess).astype(np.uint8))
    write_predictions(tmp_path / "labelid", preds)
    write_predictions(tmp_path / "compact", [to_train_ids(p, IDS_16) for p in preds])

    expected = official_reference(gts, preds, IDS_16)
    expected_13 = [expected[IDS_16.index(l)] for l in IDS_13]
    for folder in ("labelid", "compact"):
        result = score_prediction_folder(tmp_path / folder, root, num_classes=16, progress=False)
        assert len(result["per_class_iou"]) == 16 and "terrain" not in result["per_class_iou"]
        got = [math.nan if v is None else v for v in result["per_class_iou"].values()]
        assert got == pytest.approx(expected, nan_ok=True)
        assert result["miou"] == pytest.approx(mean_of(expected))
        assert result["miou_13"] == pytest.approx(mean_of(expected_13))


def test_predicting_an_ignored_id_is_a_false_negative(tmp_path: Path) -> None:
    gt = np.full((H, W), 7, np.uint8)  # all road ...
    gt[:, W // 2 :] = 4  # ... except an ignored 'static' half
    pred = np.full((H, W), 7, np.uint8)  # road everywhere (on the ignored half: not a FP)
    pred[:2, :2] = 0  # 4 road pixels predicted 'unlabeled'
    pred[2:4, :2] = 5  # 4 road pixels predicted 'dynamic'
    root = tmp_path / "cs"
    write_cityscapes_val(root, [gt, gt, gt])
    write_predictions(tmp_path / "pred", [pred, pred, pred])
    result = score_prediction_folder(tmp_path / "pred", root, progress=False, pred_format="labelid")
    # road: tp = 3*(64-8), fn = 3*8, fp = 0 -> 56/64 (ProDA's runningScore would say 100)
    assert result["per_class_iou"]["road"] == pytest.approx(100 * 56 / 64)
    assert result["miou"] == pytest.approx(100 * 56 / 64)
    assert result["per_class_iou"]["sidewalk"] is None
    # Values {0, 5, 7} are valid both ways; read as trainIds road (7) would become traffic sign, so the
    # ground truth agrees far better with label ids and 'auto' picks them.
    auto = score_prediction_folder(tmp_path / "pred", root, progress=False)
    assert auto["pred_format"] == "labelid" and auto["pred_format_assumed"] is True
    assert auto["per_class_iou"] == result["per_class_iou"]


def test_auto_ambiguous_trainids_are_assumed_and_recorded(scene, tmp_path: Path, capsys) -> None:
    root, gts, _ = scene
    preds = [to_train_ids(gt, IDS_19) for gt in gts]
    preds = [np.where(p == 255, 1, p).astype(np.uint8) for p in preds]  # values 0..18 only
    write_predictions(tmp_path / "pred", preds)
    result = score_prediction_folder(tmp_path / "pred", root, progress=False)
    assert result["pred_format"] == "trainid" and result["pred_format_assumed"] is True
    assert "assuming trainid" in capsys.readouterr().err
    assert result["per_class_iou"]["road"] == pytest.approx(100.0)  # ignored GT predicted 1: no FP


# --------------------------------------------------------------------------- file matching


def test_color_and_overlay_files_are_ignored(scene, tmp_path: Path) -> None:
    root, _, preds = scene
    paths = write_predictions(tmp_path / "pred", preds)
    for path in paths:  # RGB visualisations would be an error if they were read
        rgb = np.zeros((H, W, 3), np.uint8)
        write_png(path.with_name(path.stem + "_color.png"), rgb)
        write_png(path.with_name(path.stem + "_overlay.png"), rgb)
    assert score_prediction_folder(tmp_path / "pred", root, progress=False)["num_images"] == 3


def test_missing_prediction_names_the_gt_file(scene, tmp_path: Path) -> None:
    root, _, preds = scene
    paths = write_predictions(tmp_path / "pred", preds)
    paths[1].unlink()
    with pytest.raises(DataError, match=gt_name(*FRAMES[1])):
        score_prediction_folder(tmp_path / "pred", root, progress=False)


def test_duplicate_predictions_are_listed(scene, tmp_path: Path) -> None:
    root, _, preds = scene
    paths = write_predictions(tmp_path / "pred", preds)
    copy = tmp_path / "pred" / "other" / paths[0].name
    write_png(copy, preds[0])
    with pytest.raises(DataError, match="multiple predictions") as info:
        score_prediction_folder(tmp_path / "pred", root, progress=False)
    assert str(paths[0]) in str(info.value) and str(copy) in str(info.value)


def test_size_mismatch_and_multichannel_name_the_file(scene, tmp_path: Path) -> None:
    root, _, preds = scene
    paths = write_predictions(tmp_path / "pred", preds)
    write_png(paths[2], np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DataError, match=paths[2].name):
        score_prediction_folder(tmp_path / "pred", root, progress=False)
    write_png(paths[2], np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError, match=f"{paths[2].name}.*single-channel"):
        score_prediction_folder(tmp_path / "pred", root, progress=False)


def test_invalid_values_and_gt_ids_are_errors(scene, tmp_path: Path) -> None:
    root, gts, preds = scene
    paths = write_predictions(tmp_path / "pred", preds)
    with pytest.raises(DataError, match=f"{paths[0].name}.*not trainIds"):
        score_prediction_folder(tmp_path / "pred", root, progress=False, pred_format="trainid")
    write_png(paths[1], np.full((H, W), 40, np.uint8))
    with pytest.raises(DataError, match="neither"):
        score_prediction_folder(tmp_path / "pred", root, progress=False)
    with pytest.raises(DataError, match=f"{paths[1].name}.*not label ids"):
        score_prediction_folder(tmp_path / "pred", root, progress=False, pred_format="labelid")
    bad_gt = gts[0].copy()
    bad_gt[0, 0] = 34
    write_png(root / "gtFine" / "val" / FRAMES[0][0] / gt_name(*FRAMES[0]), bad_gt)
    with pytest.raises(DataError, match=f"{gt_name(*FRAMES[0])}.*outside 0..33"):
        score_prediction_folder(tmp_path / "pred", root, progress=False, pred_format="labelid")


def test_missing_folders_are_errors(scene, tmp_path: Path) -> None:
    root, _, _ = scene
    with pytest.raises(DataError, match="prediction folder not found"):
        score_prediction_folder(tmp_path / "nope", root, progress=False)
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError, match="gtFine_labelIds"):
        score_prediction_folder(tmp_path / "pred", root, split="test", progress=False)


def test_score_predictions_command_prints_and_writes_json(scene, tmp_path: Path, capsys) -> None:
    root, _, preds = scene
    write_predictions(tmp_path / "pred", preds)
    out = tmp_path / "out" / "scores.json"
    assert score_predictions_command(tmp_path / "pred", root, "val", 19, out) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "bicycle" in printed
    saved = json.loads(out.read_text())
    assert saved == score_prediction_folder(tmp_path / "pred", root, progress=False)
    assert f"{saved['miou']:.2f}" in printed
