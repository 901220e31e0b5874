"""Dataset readers and ``check_dataset`` on tiny datasets written in the official layouts."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import (
    cityscapes_paths,
    expected_image,
    truncate,
    write_cityscapes,
    write_cityscapes_label,
    write_gta5,
    write_gta5_label,
    write_image,
    write_synthia,
    write_synthia_label,
)
from proda.data import labels as L
from proda.data.check import CheckReport, check_dataset, run_check_command
from proda.data.datasets import CityscapesDataset, GTA5Dataset, SynthiaDataset
from proda.data.registry import build_dataset
from proda.errors import ConfigError, DataError


def _assert_sample(item: dict, raw: np.ndarray, lut: np.ndarray, name: str) -> None:
    assert item["name"] == name
    assert item["image"].dtype == np.uint8 and item["label"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"], expected_image(raw))  # RGB order, same sample
    np.testing.assert_array_equal(item["label"], lut[raw])


# -- readers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_gta5_reads_mapped_labels(gta5_data, num_classes: int) -> None:
    root, raws = gta5_data
    ds = GTA5Dataset(root, num_classes)
    assert len(ds) == 3 and ds.num_classes == num_classes
    assert ds.class_names == L.class_names(num_classes)
    np.testing.assert_array_equal(ds.palette, L.palette(num_classes))
    for i, name in enumerate(sorted(raws)):
        assert ds.image_path(i) == root / "images" / f"{name}.png"
        assert ds.label_path(i) == root / "labels" / f"{name}.png"
        _assert_sample(ds[i], raws[name], L.cityscapes_lut(num_classes), name)


def test_gta5_list_file(gta5_data, tmp_path: Path) -> None:
    root, raws = gta5_data
    list_file = tmp_path / "train.txt"
    list_file.write_text("00003.png\n00001\n\n")  # AdaptSegNet style, extension optional, order kept
    ds = GTA5Dataset(root, list_file=list_file)
    assert [ds[i]["name"] for i in range(len(ds))] == ["00003", "00001"]
    _assert_sample(ds[0], raws["00003"], L.cityscapes_lut(19), "00003")

    list_file.write_text("00001.png\n00009.png\n")
    with pytest.raises(DataError, match=r"00009\.png"):
        GTA5Dataset(root, list_file=list_file)


def test_gta5_list_file_ignores_unlisted_unpaired_files(gta5_data, tmp_path: Path) -> None:
    root, _ = gta5_data
    (root / "labels" / "00003.png").unlink()
    (tmp_path / "list.txt").write_text("00001.png\n00002.png\n")
    assert len(GTA5Dataset(root, list_file=tmp_path / "list.txt")) == 2


def test_gta5_accepts_void_index_34(tmp_path: Path) -> None:
    raws = write_gta5(tmp_path, n=1, ids=[7, 34])
    label = GTA5Dataset(tmp_path)[0]["label"]
    np.testing.assert_array_equal(label, np.where(raws["00001"] == 7, 0, 255))


@pytest.mark.parametrize("num_classes", [16, 19, 13])
def test_synthia_reads_mapped_labels(synthia_data, num_classes: int) -> None:
    root, raws = synthia_data
    ds = SynthiaDataset(root, num_classes)
    assert len(ds) == 3 and ds.class_names == L.class_names(num_classes)
    for i, name in enumerate(sorted(raws)):
        assert ds.label_path(i) == root / "GT" / "LABELS" / f"{name}.png"
        _assert_sample(ds[i], raws[name], L.synthia_lut(num_classes), name)


@pytest.mark.parametrize("split", ["train", "val"])
def test_cityscapes_reads_mapped_labels(cityscapes_data, split: str) -> None:
    root, raws = cityscapes_data
    ds = CityscapesDataset(root, split=split)
    names = sorted(raws[split])
    assert [ds[i]["name"] for i in range(len(ds))] == names
    assert names[0] == ("aachen_000000_000019_leftImg8bit" if split == "train" else "frankfurt_000000_000019_leftImg8bit")
    for i, name in enumerate(names):
        image_path, label_path = cityscapes_paths(root, split, name)
        assert ds.image_path(i) == image_path and ds.label_path(i) == label_path
        _assert_sample(ds[i], raws[split][name], L.cityscapes_lut(19), name)


def test_cityscapes_without_labels(tmp_path: Path) -> None:
    write_cityscapes(tmp_path, {"test": ["berlin"]})
    shutil.rmtree(tmp_path / "gtFine")
    ds = CityscapesDataset(tmp_path, split="test", with_labels=False)
    item = ds[0]
    assert set(item) == {"image", "name"} and ds.label_path(0) is None and not ds.has_labels
    with pytest.raises(DataError, match="gtFine"):
        CityscapesDataset(tmp_path, split="test")


def test_cityscapes_unknown_split(cityscapes_data) -> None:
    root, _ = cityscapes_data
    with pytest.raises(DataError, match=r"'test'.*available: train, val"):
        CityscapesDataset(root, split="test")


@pytest.mark.parametrize("name", ["gta5", "synthia", "cityscapes"])
def test_resize_is_bilinear_for_images_and_nearest_for_labels(tmp_path: Path, name: str) -> None:
    writer = {"gta5": write_gta5, "synthia": write_synthia, "cityscapes": write_cityscapes}[name]
    writer(tmp_path, size=(32, 16))
    full = build_dataset(name, tmp_path)[0]
    small = build_dataset(name, tmp_path, size=(20, 10))[0]
    big = build_dataset(name, tmp_path, size=[64, 32])[0]  # configs give lists
    assert small["image"].shape == (10, 20, 3) and small["label"].shape == (10, 20)
    assert big["image"].shape == (32, 64, 3) and big["label"].shape == (32, 64)
    assert set(np.unique(small["label"])) <= set(np.unique(full["label"]))
    assert set(np.unique(big["label"])) == set(np.unique(full["label"]))
    np.testing.assert_array_equal(big["label"][::2, ::2], full["label"])  # exact 2x nearest: no shift
    assert set(np.unique(big["image"][..., 2])) == {200}  # bilinear of a constant channel


def test_build_dataset_defaults_and_errors(gta5_data, synthia_data) -> None:
    assert build_dataset("GTA5", gta5_data[0]).num_classes == 19
    assert build_dataset("synthia", synthia_data[0]).num_classes == 16
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_dataset("mapillary", gta5_data[0])
    with pytest.raises(ConfigError, match="split"):
        build_dataset("gta5", gta5_data[0], split="val")
    with pytest.raises(ConfigError, match="num_classes must be one of 19, 16, 13 for this dataset, got 7"):
        build_dataset("gta5", gta5_data[0], num_classes=7)


# -- layout errors --------------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    for name in ("gta5", "synthia", "cityscapes"):
        with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
            build_dataset(name, tmp_path / "nope")


def test_missing_subfolder(gta5_data, synthia_data) -> None:
    shutil.rmtree(gta5_data[0] / "labels")
    with pytest.raises(DataError, match=r"labels.*not found"):
        GTA5Dataset(gta5_data[0])
    shutil.rmtree(synthia_data[0] / "GT")
    with pytest.raises(DataError, match=r"GT/LABELS"):
        SynthiaDataset(synthia_data[0])


def test_zero_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="no GTA5 samples"):
        GTA5Dataset(tmp_path)


def test_missing_label_names_the_image(gta5_data, cityscapes_data) -> None:
    (gta5_data[0] / "labels" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"images/00002\.png: no label"):
        GTA5Dataset(gta5_data[0])
    root, raws = cityscapes_data
    name = sorted(raws["train"])[-1]
    image_path, label_path = cityscapes_paths(root, "train", name)
    label_path.unlink()
    with pytest.raises(DataError, match=re.escape(str(image_path))):
        CityscapesDataset(root)


def test_extra_label_names_the_label(synthia_data, cityscapes_data) -> None:
    root, _ = synthia_data
    shutil.copy(root / "GT" / "LABELS" / "0000000.png", root / "GT" / "LABELS" / "0000099.png")
    with pytest.raises(DataError, match=r"LABELS/0000099\.png: label without an image"):
        SynthiaDataset(root)
    root, raws = cityscapes_data
    image_path, label_path = cityscapes_paths(root, "val", sorted(raws["val"])[0])
    image_path.unlink()
    with pytest.raises(DataError, match=re.escape(str(label_path))):
        CityscapesDataset(root, split="val")


def test_many_unpaired_files_are_summarised(tmp_path: Path) -> None:
    write_gta5(tmp_path, n=9)
    for k in range(2, 10):
        (tmp_path / "labels" / f"{k:05d}.png").unlink()
    with pytest.raises(DataError, match=r"8 unpaired or missing file\(s\)[\s\S]*and 3 more"):
        GTA5Dataset(tmp_path)


# -- file errors (raised when the sample is read) ---------------------------------------------------------


def test_rgb_converted_gta5_label(gta5_data) -> None:
    root, _ = gta5_data
    path = root / "labels" / "00002.png"
    with Image.open(path) as image:
        image.convert("RGB").save(path)
    ds = GTA5Dataset(root)
    with pytest.raises(DataError, match=re.escape(str(path)) + r".*mode RGB"):
        ds[1]


def test_grey_gta5_label_of_ids_is_read_as_its_palette_twin(gta5_data) -> None:
    root, _ = gta5_data
    path = root / "labels" / "00001.png"
    palette_label = GTA5Dataset(root)[0]["label"]
    with Image.open(path) as image:
        Image.fromarray(np.asarray(image)).save(path)  # the same ids, as an 8-bit grey (mode L) PNG
    with Image.open(path) as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(GTA5Dataset(root)[0]["label"], palette_label)


def test_grey_converted_gta5_label_is_refused_with_its_luminances(gta5_data) -> None:
    root, _ = gta5_data
    path = root / "labels" / "00001.png"
    with Image.open(path) as image:
        grey = image.convert("L")  # palette colours -> luminances: the ids are lost
    grey.save(path)
    bad = sorted(int(v) for v in np.unique(np.asarray(grey)) if v > 34)
    assert bad  # the fixture's colours have luminances beyond the id range
    with pytest.raises(DataError, match=re.escape(f"{path}: unknown label values {bad}") + r".*converted"):
        GTA5Dataset(root)[0]


def test_8bit_synthia_label(synthia_data) -> None:
    root, raws = synthia_data
    path = root / "GT" / "LABELS" / "0000001.png"
    write_image(path, np.stack([raws["0000001"]] * 3, -1))  # an 8-bit RGB copy
    with pytest.raises(DataError, match=re.escape(str(path)) + r".*16-bit"):
        SynthiaDataset(root)[1]


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_png(cityscapes_data, which: str) -> None:
    root, raws = cityscapes_data
    paths = cityscapes_paths(root, "train", sorted(raws["train"])[0])
    path = paths[0] if which == "image" else paths[1]
    truncate(path)
    with pytest.raises(DataError, match=re.escape(str(path))):
        CityscapesDataset(root)[0]


def test_size_mismatch_names_both_files(gta5_data) -> None:
    root, raws = gta5_data
    write_gta5_label(root / "labels" / "00001.png", raws["00001"][:8])
    with pytest.raises(DataError, match=r"size mismatch.*images/00001\.png.*labels/00001\.png"):
        GTA5Dataset(root)[0]


@pytest.mark.parametrize(
    ("name", "bad"), [("gta5", 40), ("cityscapes", 40), ("cityscapes", 34), ("synthia", 23)]
)
def test_unknown_label_value(tmp_path: Path, name: str, bad: int) -> None:
    if name == "gta5":
        raws = write_gta5(tmp_path, n=1)
        path, raw = tmp_path / "labels" / "00001.png", raws["00001"].copy()
        raw[0, :3] = bad
        write_gta5_label(path, raw)
    elif name == "cityscapes":
        raws = write_cityscapes(tmp_path, {"train": ["aachen"]}, per_city=1)
        name0, raw = next(iter(raws["train"].items()))
        path = cityscapes_paths(tmp_path, "train", name0)[1]
        raw = raw.copy()
        raw[0, :3] = bad
        write_cityscapes_label(path, raw)
    else:
        raws = write_synthia(tmp_path, n=1)
        path, raw = tmp_path / "GT" / "LABELS" / "0000000.png", raws["0000000"].copy()
        raw[0, :3] = bad
        write_synthia_label(path, raw)
    with pytest.raises(DataError, match=re.escape(str(path)) + rf".*unknown label values \[{bad}\] \(3 pixels\)"):
        build_dataset(name, tmp_path)[0]


# -- check_dataset ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes"), [("gta5", 19), ("synthia", 16), ("synthia", 13), ("cityscapes", 19), ("cityscapes", 16)]
)
def test_check_histogram_equals_bincount(tmp_path: Path, name: str, num_classes: int) -> None:
    if name == "gta5":
        raws, lut = write_gta5(tmp_path), L.cityscapes_lut(num_classes)
    elif name == "synthia":
        raws, lut = write_synthia(tmp_path), L.synthia_lut(num_classes)
    else:
        raws, lut = write_cityscapes(tmp_path)["val"], L.cityscapes_lut(num_classes)
    expected = np.bincount(np.concatenate([lut[r].ravel() for r in raws.values()]), minlength=256)
    report = check_dataset(name, tmp_path, split="val" if name == "cityscapes" else None,
                           num_classes=num_classes, progress=False)
    assert report.ok and report.problems == []
    assert report.num_samples == report.num_checked == len(raws)
    assert report.class_pixels == {**{c: int(expected[c]) for c in range(num_classes)}, "ignore": int(expected[255])}
    table = report.format_table()
    assert L.class_names(num_classes)[-1] in table and "ignore" in table and "%" in table


def test_check_collects_all_problems(tmp_path: Path) -> None:
    raws = write_gta5(tmp_path, n=6)
    with Image.open(tmp_path / "labels" / "00001.png") as image:
        image.convert("RGB").save(tmp_path / "labels" / "00001.png")
    truncate(tmp_path / "images" / "00002.png")
    write_gta5_label(tmp_path / "labels" / "00003.png", raws["00003"][:, :5])
    bad = raws["00004"].copy()
    bad[0, 0] = 200
    write_gta5_label(tmp_path / "labels" / "00004.png", bad)
    (tmp_path / "labels" / "00005.png").unlink()
    shutil.copy(tmp_path / "labels" / "00006.png", tmp_path / "labels" / "00099.png")

    report = check_dataset("gta5", tmp_path, progress=False, workers=2)
    assert not report.ok and report.num_samples == 5  # 00005 has no label
    text = "\n".join(report.problems)
    assert len(report.problems) == 6, text
    assert re.search(r"labels/00001\.png.*mode RGB", text)
    assert re.search(r"images/00002\.png.*(truncated|readable)", text)
    assert re.search(r"size mismatch.*images/00003\.png.*labels/00003\.png", text)
    assert re.search(r"labels/00004\.png.*unknown label values \[200\]", text)
    assert re.search(r"images/00005\.png: no label", text)
    assert re.search(r"labels/00099\.png: label without an image", text)
    # Only the one sample without problems (00006) is counted.
    expected = np.bincount(L.cityscapes_lut(19)[raws["00006"]].ravel(), minlength=256)
    assert report.class_pixels == {**{c: int(expected[c]) for c in range(19)}, "ignore": int(expected[255])}


def test_check_missing_root_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    report = check_dataset("synthia", tmp_path / "nope", progress=False)
    assert not report.ok and report.num_samples == 0 and str(tmp_path / "nope") in report.problems[0]
    assert report.to_json()["class_pixels"] == {}


def test_check_max_samples_is_evenly_spaced(tmp_path: Path) -> None:
    raws = write_synthia(tmp_path, n=9)
    report = check_dataset("synthia", tmp_path, max_samples=3, progress=False)
    assert report.num_samples == 9 and report.num_checked == 3
    lut = L.synthia_lut(16)
    chosen = ("0000000", "0000004", "0000008")
    expected = np.bincount(np.concatenate([lut[raws[n]].ravel() for n in chosen]), minlength=256)
    assert report.class_pixels["ignore"] == expected[255]
    assert "9 samples, 3 checked" in report.format_table()


def test_check_json_schema_and_exit_codes(cityscapes_data, tmp_path: Path, capsys) -> None:
    root, raws = cityscapes_data
    out = tmp_path / "report" / "check.json"
    assert run_check_command("cityscapes", root, "train", 19, out) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"num_samples", "class_pixels", "problems"}
    assert data["num_samples"] == len(raws["train"]) and data["problems"] == []
    assert list(data["class_pixels"]) == [str(c) for c in range(19)] + ["ignore"]
    assert all(isinstance(v, int) for v in data["class_pixels"].values())
    assert "road" in capsys.readouterr().out

    cityscapes_paths(root, "train", sorted(raws["train"])[0])[1].unlink()
    assert run_check_command("cityscapes", root, "train", None, out) == 1
    data = json.loads(out.read_text())
    assert len(data["problems"]) == 1 and "no label" in data["problems"][0]
    assert "1 problem(s)" in capsys.readouterr().out


def test_report_to_json_round_trip() -> None:
    report = CheckReport("gta5", "/x", 13, num_samples=2, num_checked=2, class_pixels={0: 5, "ignore": 1})
    assert report.ok and report.to_json() == {"num_samples": 2, "class_pixels": {"0": 5, "ignore": 1}, "problems": []}
