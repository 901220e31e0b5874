"""The ``folder`` dataset: a ``dataset.yaml`` descriptor, its reader, ``proda data check`` on it, and a whole
pipeline from a folder source to a folder target of their own 6 classes, then ``proda predict``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures import FOLDER_CLASSES, FOLDER_VALUES, put, write_folder
from proda.cli import main
from proda.data.folder import FolderDataset
from proda.data.registry import build_dataset
from proda.errors import ConfigError, DataError
from proda.io import encode_png

TO_TRAIN_ID = np.full(256, 254, dtype=np.uint8)
for _raw, _train_id in FOLDER_VALUES.items():
    TO_TRAIN_ID[_raw] = _train_id


def _descriptor(root: Path, **changes) -> None:
    path = root / "dataset.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v != "DROP"}))


def test_reader_pairs_by_relative_path_and_maps_label_values(tmp_path):
    written = write_folder(tmp_path, n=3)
    ds = build_dataset("folder", tmp_path, split="val")
    assert ds.classes.names == tuple(FOLDER_CLASSES) and ds.num_classes == 6
    assert [s.name for s in ds.samples] == ["seq_a__0000", "seq_a__0001", "seq_a__0002"]
    assert ds.samples[1].label == tmp_path / "labels" / "val" / "seq_a" / "0001_mask.png"
    item = ds[1]
    assert item["image"].shape == (16, 32, 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["label"], TO_TRAIN_ID[written["val/seq_a/0001"]])
    assert set(np.unique(item["label"])) <= {0, 1, 2, 3, 4, 5, 255}
    # the first split is the default, and a split the descriptor does not list is refused
    assert build_dataset("folder", tmp_path).split == "train"
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'dataset.yaml'}: no split 'test' (splits: train, val)")):
        build_dataset("folder", tmp_path, split="test")


def test_palette_default_and_given(tmp_path):
    write_folder(tmp_path)
    palette = build_dataset("folder", tmp_path).classes.palette
    # Cityscapes names take Cityscapes colours (road, vegetation); others distinct VOC colours
    assert palette[1] == (128, 64, 128) and palette[5] == (107, 142, 35)
    assert len(set(palette)) == 6
    given = [[i, 2 * i, 3 * i] for i in range(6)]
    _descriptor(tmp_path, palette=given)
    assert build_dataset("folder", tmp_path).classes.palette == tuple(map(tuple, given))


def test_values_are_train_ids_without_label_values_and_one_split_without_splits(tmp_path):
    write_folder(tmp_path, splits=None, n=2)
    for path in (tmp_path / "labels").rglob("*.png"):  # rewrite the labels as train ids
        from proda.io import read_label_ids

        path.write_bytes(encode_png(TO_TRAIN_ID[read_label_ids(path)]))
    _descriptor(tmp_path, label_values="DROP")
    ds = build_dataset("folder", tmp_path)
    assert ds.split == "all" and len(ds) == 2
    assert set(np.unique(ds[0]["label"])) <= set(range(6)) | {255}


def test_unlabelled_folder_reads_images_only(tmp_path):
    write_folder(tmp_path, labelled=False, n=2)
    ds = build_dataset("folder", tmp_path, split="train")
    assert not ds.has_labels and set(ds[0]) == {"image", "name"}


@pytest.mark.parametrize("count,ok", [(1, False), (2, True), (254, True), (255, False)])
def test_any_class_count_from_2_to_254(tmp_path, count, ok):
    write_folder(tmp_path)
    _descriptor(tmp_path, classes=[f"c{i}" for i in range(count)], label_values="DROP")
    if ok:
        assert FolderDataset.label_space(tmp_path).num_classes == count
    else:
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'dataset.yaml'}: a class list needs 2 to 254 "
                                                      f"classes, got {count}")):
            FolderDataset.label_space(tmp_path)


def _check(root: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["data", "check", "--dataset", "folder", str(root), *extra])
    return code, capsys.readouterr().out


def test_data_check_names_every_broken_file(tmp_path, capsys):
    write_folder(tmp_path, n=4)
    train_images, train_labels = tmp_path / "images" / "train" / "seq_a", tmp_path / "labels" / "train" / "seq_a"
    (train_labels / "0000_mask.png").unlink()  # an image without its label
    put(train_labels / "0009_mask.png", encode_png(np.full((16, 32), 10, np.uint8)))  # a label without image
    put(train_labels / "0001_mask.png", encode_png(np.full((16, 32), 70, np.uint8)))  # 70: not in label_values
    put(train_labels / "0002_mask.png", encode_png(np.full((8, 32), 10, np.uint8)))  # another size
    code, out = _check(tmp_path, capsys, "--split", "train")
    assert code == 1
    assert f"{train_images / '0000.jpg'}: no label {train_labels / '0000_mask.png'}" in out
    assert f"{train_labels / '0009_mask.png'}: label without an image {train_images / '0009.jpg'}" in out
    assert f"{train_labels / '0001_mask.png'}: unknown label values [70] (512 pixels)" in out
    assert (f"size mismatch: image {train_images / '0002.jpg'} is 32x16, label {train_labels / '0002_mask.png'} "
            "is 32x8") in out
    assert "4 problem(s):" in out
    # the healthy split has none
    assert _check(tmp_path, capsys, "--split", "val")[0] == 0


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, "unknown key(s) colour; valid keys: classes, palette, images, labels"),
    ({"classes": "DROP"}, "`classes` is required"),
    ({"label_values": {10: 7}}, "`label_values`: 10 -> 7 is not a train id 0..5 or 255"),
    ({"palette": [[0, 0, 0]]}, "1 palette colours for 6 classes"),
    ({"classes": ["a", "b", "a"]}, "class names must be unique; repeated: a"),
])
def test_data_check_reports_a_broken_descriptor_naming_it(tmp_path, capsys, change, message):
    write_folder(tmp_path)
    _descriptor(tmp_path, **change)
    code, out = _check(tmp_path, capsys)
    assert code == 1 and f"{tmp_path / 'dataset.yaml'}: {message}" in out


def test_a_missing_descriptor_is_named(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code, out = _check(tmp_path, capsys)
    assert code == 1 and f"{tmp_path / 'dataset.yaml'}: not found" in out


# -- end to end: folder source -> folder target, then predict ---------------------------------------------

PIPELINE = Path(__file__).parents[2] / "proda" / "configs" / "synthetic" / "pipeline.yaml"
TINY = ["data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16", "optim.iterations=2",
        "run.eval_every=2", "warmup.disc_width=4", "run.tensorboard=false", "run.panel_every=0"]


def test_pipeline_from_a_folder_source_to_a_folder_target_then_predict(tmp_path, capsys):
    from proda.pipeline import run_pipeline

    write_folder(tmp_path / "source", splits=None, n=4, size=(48, 24), seed=1)
    write_folder(tmp_path / "target", n=2, size=(48, 24), shift=40, seed=2)
    overrides = [f"out_dir={tmp_path / 'runs'}", "data.source=folder", f"data.source_root={tmp_path / 'source'}",
                 "data.target=folder", f"data.target_root={tmp_path / 'target'}", "data.num_classes=null", *TINY]
    report = run_pipeline(PIPELINE, overrides, progress=False)
    assert list(report["stages"]) == ["source_only", "oracle", "warmup", "stage1", "stage2", "stage3"]
    for stage in report["stages"].values():
        assert list(stage["per_class_iou"]) == FOLDER_CLASSES and 0.0 <= stage["target_miou"] <= 100.0
    assert "| lane_marking |" in (tmp_path / "runs" / "report.md").read_text()

    checkpoint = tmp_path / "runs" / "stage3" / "latest.pth"
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "target" / "images" / "val"),
                 "--out", str(out), "--format", "color,trainid", "--no-progress"]) == 0
    trainid = sorted(out.rglob("*.png"))
    assert trainid, "predict wrote nothing"
    from proda.io import read_label_ids

    maps = [read_label_ids(p) for p in trainid if "trainid" in str(p).lower() and read_label_ids(p).ndim == 2]
    assert maps and all(m.shape == (24, 48) and m.max() < 6 for m in maps)
