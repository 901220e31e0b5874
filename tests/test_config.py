"""Config loading: every shipped config builds, overrides are typed, bad keys and values are named."""
from __future__ import annotations

from pathlib import Path

import pytest

from proda.config import load_config, replace
from proda.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "proda" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_builds(path):
    if path.name == "base.yaml":
        pytest.skip("base files are completed by the stage files that include them")
    if path.name.startswith("pipeline"):  # a pipeline: every stage config it names builds with its links
        from proda.pipeline import Pipeline, PipelineSpec

        pipe = Pipeline(PipelineSpec.load(path))
        for stage in pipe.spec.stages:
            assert pipe.config(stage).run.out_dir.endswith(stage)
        return
    cfg = load_config(path)
    assert cfg.data.num_classes in (19, 16, 13)


def test_base_includes_and_overrides(tmp_path):
    cfg = load_config(CONFIGS[0].parent.parent / "synthetic" / "oracle.yaml",
                      ["optim.lr=0.5", "data.crop_size=96x48", "model.init=null", "run.out_dir=x"])
    assert cfg.optim.lr == 0.5 and cfg.data.crop_size == (96, 48) and cfg.run.out_dir == "x"
    assert cfg.supervised.domain == "target" and cfg.model.depth == 18  # from base.yaml
    assert replace(cfg, **{"optim.iterations": 7}).optim.iterations == 7


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr; valid keys in optim: .*\blr\b.*momentum"):
        load_config(None, ["optim.lrr=1", "data.source_root=x", "data.target_root=y"])
    with pytest.raises(ConfigError, match=r"unknown key tarin"):
        load_config(None, ["tarin.x=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", r"data\.batch_size: must be at least 1, got 0"),
        ("data.batch_size=two", r"data\.batch_size: expected an integer, got 'two'"),
        ("optim.lr=fast", r"optim\.lr: expected a number"),
        ("run.tensorboard=maybe", r"run\.tensorboard: expected true or false"),
        ("model.depth=77", r"model\.depth: 77 is not one of 18, 34, 50, 101"),
        ("data.num_classes=20", r"num_classes must be one of 19, 16, 13 for this dataset, got 20"),
        ("data.crop_size=[1,2,3]", r"data\.crop_size: expected \[int, int\]"),
        ("optim.lr_horizon=10", r"optim\.lr_horizon: must be >= optim\.iterations"),
        ("data.scale_range=[1.5,0.5]", r"data\.scale_range: must be 0 < low <= high"),
    ],
)
def test_impossible_or_mistyped_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.source_root=x", "data.target_root=y", override])


def test_crop_larger_than_the_image_is_refused():
    with pytest.raises(ConfigError, match=r"data\.crop_size: \[896, 512\] is larger than the smallest rescaled source image"):
        load_config(None, ["data.source_root=x", "data.target_root=y", "data.source_size=[800,400]", "data.resize_width=null"])


def test_missing_root_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="data.source_root: is required"):
        load_config(None, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["optim.lr"])


def test_shipped_configs_are_found_without_a_clone(tmp_path, monkeypatch):
    from proda.config import PACKAGED_CONFIGS, resolve_config_path

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    for name in ("synthetic/stage1", "synthetic/stage1.yaml", "configs/synthetic/stage1.yaml"):
        assert resolve_config_path(name) == PACKAGED_CONFIGS / "synthetic" / "stage1.yaml"
    assert load_config("synthetic/oracle").supervised.domain == "target"
    (tmp_path / "mine.yaml").write_text("stage: supervised\n")
    assert resolve_config_path("mine.yaml") == Path("mine.yaml")  # a file of the user's wins
