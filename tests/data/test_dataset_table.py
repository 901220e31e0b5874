"""The dataset table: what is derived from it (CLI choices, the run's class count and classes), any source
with any target sharing its classes by name, and the LabelSpace every consumer takes."""
from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import yaml

from fixtures import FOLDER_CLASSES, write_cityscapes, write_folder
from proda.cli import _parser
from proda.config import load_config
from proda.data import labels as L
from proda.data.labels import LabelSpace
from proda.data.readers import run_classes, source_reader, target_reader
from proda.data.registry import DATASETS, label_space
from proda.errors import ConfigError


def _choices(parser: argparse.ArgumentParser, *path: str) -> list[str]:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return next(a.choices for a in parser._actions if a.dest == "dataset")


def test_every_dataset_option_of_the_cli_is_the_table():
    parser = _parser()
    for command in (("evaluate",), ("data", "check"), ("data", "prepare")):
        assert _choices(parser, *command) == list(DATASETS), command
    assert {"gta5", "synthia", "cityscapes", "folder"} <= set(DATASETS)


@pytest.mark.parametrize("name", ["gta5", "synthia", "cityscapes"])
def test_every_built_in_dataset_describes_its_classes_and_splits(name):
    classes = label_space(name)
    assert classes.num_classes == (16 if name == "synthia" else 19)
    assert classes.ignore_index == 255 and classes.palette_array().shape == (classes.num_classes, 3)
    assert DATASETS[name].splits() == (("train", "val", "test") if name == "cityscapes" else ("all",))


def _cfg(*overrides: str):
    return load_config(None, ["data.source_root=x", "data.target_root=y", *overrides])


def test_num_classes_comes_from_the_table():
    assert _cfg().data.num_classes == 19  # gta5 -> cityscapes
    assert _cfg("data.source=synthia").data.num_classes == 16
    assert _cfg("data.source=synthia", "data.num_classes=13").data.num_classes == 13  # the 13-class protocol
    assert run_classes(_cfg("data.source=synthia", "data.num_classes=13")).names == L.class_names(13)
    with pytest.raises(ConfigError, match="num_classes must be one of 19, 16, 13 for this dataset, got 7"):
        _cfg("data.num_classes=7")
    with pytest.raises(ConfigError, match=r"data\.source: unknown dataset 'mapillary'; expected one of gta5, synthia"):
        _cfg("data.source=mapillary")


def test_a_folder_source_sets_the_class_count_and_refuses_another(tmp_path):
    write_folder(tmp_path / "src")
    write_folder(tmp_path / "tgt", labelled=False)
    roots = [f"data.source_root={tmp_path / 'src'}", f"data.target_root={tmp_path / 'tgt'}"]
    cfg = load_config(None, ["data.source=folder", "data.target=folder", *roots])
    assert cfg.data.num_classes == 6 and run_classes(cfg).names == tuple(FOLDER_CLASSES)
    with pytest.raises(ConfigError, match=re.escape(f"num_classes=19, but {tmp_path / 'src' / 'dataset.yaml'} lists 6")):
        load_config(None, ["data.source=folder", "data.target=folder", "data.num_classes=19", *roots])


def test_a_class_list_mismatch_is_refused_at_config_time_with_both_lists(tmp_path):
    write_folder(tmp_path / "src")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.source=folder", f"data.source_root={tmp_path / 'src'}", "data.target_root=y"])
    message = str(info.value)
    assert "target cityscapes lacks background, lane_marking, vehicle" in message
    assert "source folder (6): background, road, lane_marking, vehicle, person, vegetation" in message
    assert "target cityscapes (19): road, sidewalk, building," in message


def test_cityscapes_as_source_and_an_unlabelled_folder_of_its_classes_as_target(tmp_path):
    write_cityscapes(tmp_path / "cs")
    write_folder(tmp_path / "tgt", labelled=False, n=2)
    descriptor = tmp_path / "tgt" / "dataset.yaml"
    data = yaml.safe_load(descriptor.read_text())
    data.update(classes="cityscapes")
    del data["label_values"]
    descriptor.write_text(yaml.safe_dump(data))
    cfg = load_config(None, ["data.source=cityscapes", f"data.source_root={tmp_path / 'cs'}", "data.target=folder",
                             f"data.target_root={tmp_path / 'tgt'}"])
    source, target = source_reader(cfg), target_reader(cfg)
    assert source.split == "train" and source.has_labels and source.classes.num_classes == 19
    assert not target.has_labels and len(target) == 2 and target.classes == source.classes


def test_a_target_with_more_classes_reads_the_extra_ones_as_ignore(tmp_path):
    """SYNTHIA's 16 classes on Cityscapes: terrain (trainId 9) of the target ground truth becomes ignore."""
    raw = write_cityscapes(tmp_path / "cs", ids=[7, 22])  # road, terrain
    cfg = load_config(None, ["data.source=synthia", "data.source_root=x", f"data.target_root={tmp_path / 'cs'}"])
    reader = target_reader(cfg, split="val")
    label = reader.read_label(0)
    first = raw["val"][reader.samples[0].name]
    assert set(np.unique(first)) == {7, 22}
    np.testing.assert_array_equal(label, np.where(first == 7, 0, 255))


def test_label_space_maps_by_name_and_refuses_bad_lists():
    c19, c16 = LabelSpace.cityscapes(19), LabelSpace.cityscapes(16)
    assert c16.lut_to(c19)[:16].tolist() == list(L.TO19[16]) and c19.lut_to(c16)[9] == 255  # terrain
    assert c19.missing_from(c16) == ["terrain", "truck", "train"]
    assert c19.to_meta()["palette"][10] == [70, 130, 180]  # sky
    np.testing.assert_array_equal(c19.colorize(np.array([[10, 255]])), [[[70, 130, 180], [0, 0, 0]]])
    with pytest.raises(ConfigError, match="a class list needs 2 to 254 classes, got 1"):
        LabelSpace(("only",), ((0, 0, 0),))
    with pytest.raises(ConfigError, match="class names must be unique; repeated: a"):
        LabelSpace(("a", "a"), ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(ConfigError, match="palette colours must be"):
        LabelSpace(("a", "b"), ((0, 0, 0), (1, 1, 300)))
