"""Class-aware sampling weights of a run's labelled readers (proda.data.readers.labelled_sampling_weights).

The weights are the same whether the class statistics come from `proda data prepare` or are counted from the
labels at start-up, in every protocol (the statistics hold the dataset's 19 classes, the run may use 16/13);
an image showing a rare class is drawn more often than one without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures import expected_image, write_cityscapes, write_gta5, write_gta5_label, write_image
from proda.config import load_config
from proda.data import prepare as P
from proda.data.readers import labelled_sampling_weights, source_reader, target_reader
from proda.errors import ConfigError

CONFIGS = Path(__file__).parents[2] / "proda" / "configs" / "synthetic"
ROAD, SKY, PERSON = 7, 23, 24  # Cityscapes label ids (in every protocol)


def make_cfg(data: Path, *extra: str, config: str = "source_only"):
    return load_config(CONFIGS / f"{config}.yaml", [f"data.source_root={data / 'gta5'}",
                                                   f"data.target_root={data / 'cityscapes'}", *extra])


@pytest.mark.parametrize("domain,num_classes,temperature", [
    ("source", 19, None), ("source", 16, 0.01), ("source", 13, 0.5), ("target", 19, 0.1),
])
def test_counted_weights_equal_prepared_ones(tmp_path, capsys, domain, num_classes, temperature):
    write_gta5(tmp_path / "gta5", n=5, seed=1)
    write_cityscapes(tmp_path / "cityscapes", seed=2)
    cfg = make_cfg(tmp_path, "data.class_sampling=classes", f"data.num_classes={num_classes}",
                   f"data.class_sampling_temperature={'null' if temperature is None else temperature}",
                   *(["supervised.domain=target"] if domain == "target" else []))
    reader = (lambda: source_reader(cfg)) if domain == "source" else (lambda: target_reader(cfg, with_labels=True))
    counted = labelled_sampling_weights(cfg, reader(), domain)
    assert "counted from the labels" in capsys.readouterr().out

    dataset = "gta5" if domain == "source" else "cityscapes"
    P.prepare_dataset(dataset, tmp_path / dataset, split=None if domain == "source" else "train",
                      progress=False, workers=1)
    prepared = labelled_sampling_weights(cfg, reader(), domain)
    assert f"from {tmp_path / dataset / P.CACHE_DIRNAME}" in capsys.readouterr().out
    assert counted.shape == (len(reader()),) and counted.dtype == np.float64
    np.testing.assert_allclose(counted.sum(), 1.0)
    np.testing.assert_allclose(prepared, counted, rtol=1e-12)


def test_a_rare_class_raises_its_images_weight(tmp_path):
    root = tmp_path / "gta5"
    for k in range(1, 5):
        raw = np.full((16, 32), ROAD, dtype=np.uint8)
        raw[:8] = SKY
        if k == 3:
            raw[10:12, 4:6] = PERSON  # 4 pixels of a class no other image has
        write_gta5_label(root / "labels" / f"{k:05d}.png", raw)
        write_image(root / "images" / f"{k:05d}.png", expected_image(raw))
    write_cityscapes(tmp_path / "cityscapes")
    for temperature in ("null", "0.01"):
        cfg = make_cfg(tmp_path, "data.class_sampling=classes", f"data.class_sampling_temperature={temperature}")
        weights = labelled_sampling_weights(cfg, source_reader(cfg), "source", progress=False)
        assert weights[2] > weights[0] == weights[1] == weights[3]
        if temperature == "null":  # road, sky, person each 1/3, then one of the 4, 4, 1 images showing it
            np.testing.assert_allclose(weights, [1 / 6, 1 / 6, 1 / 2, 1 / 6])
    off = make_cfg(tmp_path, "data.class_sampling=images")
    assert labelled_sampling_weights(off, source_reader(off), "source") is None  # images: off


def test_stale_or_partial_statistics_are_recounted(tmp_path, capsys):
    write_gta5(tmp_path / "gta5", n=3)
    write_cityscapes(tmp_path / "cityscapes")
    P.prepare_dataset("gta5", tmp_path / "gta5", progress=False, workers=1)
    cfg = make_cfg(tmp_path, "data.class_sampling=classes")
    stats_file = P.stats_path(tmp_path / "gta5" / P.CACHE_DIRNAME, "all")
    prepared = labelled_sampling_weights(cfg, source_reader(cfg), "source")
    assert "from " in capsys.readouterr().out
    old = stats_file.stat().st_mtime_ns
    os.utime(stats_file, ns=(old - 10**10, old - 10**10))  # older than the labels: stale
    np.testing.assert_allclose(labelled_sampling_weights(cfg, source_reader(cfg), "source"), prepared)
    assert "counted from the labels" in (out := capsys.readouterr().out) and "a label is newer than" in out

    os.utime(stats_file, ns=(old, old))
    write_gta5(tmp_path / "more", n=4)  # a 4th image the statistics do not know
    for part in ("images", "labels"):
        (tmp_path / "more" / part / "00004.png").rename(tmp_path / "gta5" / part / "00004.png")
    weights = labelled_sampling_weights(cfg, source_reader(cfg), "source")
    assert weights.shape == (4,) and "lacks some of the images" in capsys.readouterr().out


@pytest.mark.parametrize("config", ["source_only", "warmup", "stage1", "stage3"])
def test_class_sampling_config(tmp_path, config):
    cfg = make_cfg(tmp_path, "data.class_sampling=classes", "data.class_sampling_temperature=0.01", config=config)
    assert (cfg.data.class_sampling, cfg.data.class_sampling_temperature) == ("classes", 0.01)
    assert make_cfg(tmp_path, config=config).data.class_sampling == "classes"  # the synthetic configs turn it on
    assert load_config(f"gta5/{config}").data.class_sampling == "images"  # the paper configs read every image once
    for bad in ("0", "-0.5"):
        with pytest.raises(ConfigError, match="data.class_sampling_temperature: must be positive"):
            make_cfg(tmp_path, "data.class_sampling=classes", f"data.class_sampling_temperature={bad}")
    with pytest.raises(ConfigError, match="data.class_sampling: 'rare' is not one of"):
        make_cfg(tmp_path, "data.class_sampling=rare")
