"""The embedded synthetic benchmark (proda.data.synthetic): layouts, determinism, content, domain gap."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proda.data import synthetic as S
from proda.data.synthetic import writer
from proda.data.labels import CITYSCAPES_LABELS, cityscapes_lut

SMALL = (64, 32)  # tiny images for the file-level tests
VALID_IDS = {lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0}
LUT = cityscapes_lut(19)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch) -> None:
    """Durability is io.py's business (and its tests'); here every fsync would only wait on a busy disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _write(out: Path, **kw) -> dict:
    args = dict(seed=0, size=SMALL, n_source=3, n_target=4, n_val=2, progress=False)
    args.update(kw)
    return S.write_benchmark(out, **args)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """A modest in-memory sample of each domain at the default size."""
    return {d: [S.render_scene(0, d, i) for i in range(40)] for d in ("source", "target_train")}


# ---------------------------------------------------------------------------------------------- layout
def test_layout_names_and_counts(tmp_path: Path) -> None:
    meta = _write(tmp_path, n_source=3, n_target=5, n_val=3)
    assert not meta["skipped"]
    assert sorted(p.name for p in (tmp_path / "gta5" / "images").iterdir()) == ["00001.png", "00002.png", "00003.png"]
    assert sorted(p.name for p in (tmp_path / "gta5" / "labels").iterdir()) == ["00001.png", "00002.png", "00003.png"]
    cs = tmp_path / "cityscapes"
    for split, n, cities in (("train", 5, S.TRAIN_CITIES), ("val", 3, S.VAL_CITIES)):
        images = sorted((cs / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        labels = sorted((cs / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        assert len(images) == len(labels) == n
        for img, lbl in zip(images, labels):
            city = img.parent.name
            assert city in cities and img.name.startswith(city + "_")
            stem = img.name[: -len("_leftImg8bit.png")]
            assert lbl == cs / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            _, seq, frame = stem.split("_")
            assert len(seq) == 6 and frame == "000019"
    assert set(S.TRAIN_CITIES).isdisjoint(S.VAL_CITIES)
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert on_disk["seed"] == 0 and on_disk["size"] == list(SMALL) and on_disk["version"] == S.GENERATOR_VERSION
    assert (on_disk["n_source"], on_disk["n_target"], on_disk["n_val"]) == (3, 5, 3)
    assert "target" in on_disk["styles"] and "README" not in on_disk
    assert "seed 0" in (tmp_path / "README.txt").read_text()
    assert not list(tmp_path.rglob(".*.tmp"))  # no leftovers of the atomic writes


def test_label_formats(tmp_path: Path) -> None:
    _write(tmp_path)
    for path in (tmp_path / "gta5" / "labels").iterdir():
        with Image.open(path) as im:
            assert im.mode == "P" and im.size == SMALL
            ids = np.asarray(im)
            pal = np.asarray(im.getpalette(), dtype=np.uint8).reshape(-1, 3)
        for i in np.unique(ids):
            assert int(i) in VALID_IDS
            assert tuple(pal[i]) == next(lab.color for lab in CITYSCAPES_LABELS if lab.id == i)
    for path in (tmp_path / "gta5" / "images").iterdir():
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == SMALL
    for path in (tmp_path / "cityscapes" / "gtFine").rglob("*.png"):
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == SMALL
            assert set(np.unique(np.asarray(im)).tolist()) <= VALID_IDS
    for path in (tmp_path / "cityscapes" / "leftImg8bit").rglob("*.png"):
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == SMALL


def test_real_readers_open_the_benchmark(tmp_path: Path) -> None:
    from proda.data.registry import build_dataset

    _write(tmp_path)
    gta = build_dataset("gta5", tmp_path / "gta5")
    val = build_dataset("cityscapes", tmp_path / "cityscapes", split="val")
    train = build_dataset("cityscapes", tmp_path / "cityscapes", split="train", with_labels=False)
    assert (len(gta), len(train), len(val)) == (3, 4, 2)
    for ds in (gta, val):
        label = ds.read_label(0)
        assert label.shape == (SMALL[1], SMALL[0])
        assert set(np.unique(label).tolist()) <= set(range(19)) | {255}


def test_labels_are_raw_cityscapes_ids_with_ignored_ones(sample) -> None:
    seen: dict[str, set[int]] = {}
    for domain, items in sample.items():
        ids = set()
        for img, lbl in items:
            assert img.shape == (96, 192, 3) and img.dtype == np.uint8
            assert lbl.shape == (96, 192) and lbl.dtype == np.uint8
            ids |= set(np.unique(lbl).tolist())
        assert ids <= VALID_IDS
        seen[domain] = ids
    assert S.STATIC in seen["source"] and S.STATIC in seen["target_train"]
    assert S.EGO in seen["target_train"] and S.EGO not in seen["source"]
    # the ego-vehicle hood lies along the bottom edge
    bottom = np.concatenate([lbl[-1] for _, lbl in sample["target_train"]])
    assert (bottom == S.EGO).mean() > 0.5


def test_all_19_classes_in_both_domains(sample) -> None:
    for domain, items in sample.items():
        present = set()
        for _, lbl in items:
            present |= set(np.unique(LUT[lbl]).tolist())
        assert set(range(19)) <= present, f"{domain}: missing trainIds {sorted(set(range(19)) - present)}"


def test_any_size(tmp_path: Path) -> None:
    for size in ((100, 60), (320, 128)):
        img, lbl = S.render_scene(3, "target_val", 1, size)
        assert img.shape == (size[1], size[0], 3) and lbl.shape == (size[1], size[0])
        assert (LUT[lbl] == 0).mean() > 0.05  # a road is visible at every size
    with pytest.raises(ValueError):
        S.render_scene(0, "source", 0, (8, 8))
    with pytest.raises(ValueError):
        S.render_scene(0, "nowhere", 0)


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write(a)
    _write(b)
    _write(c, seed=1)
    fa, fb, fc = _all_files(a), _all_files(b), _all_files(c)
    assert fa == fb
    pngs = [k for k in fa if k.endswith(".png")]
    assert pngs and all(fa[k] != fc[k] for k in pngs)


def test_images_do_not_depend_on_counts_or_workers(tmp_path: Path, monkeypatch) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    _write(small, n_source=2, n_target=2, n_val=1)
    monkeypatch.setattr(writer, "_CHUNK", 2)  # several tasks, so the process pool really splits the work
    _write(big, n_source=3, n_target=4, n_val=2, workers=2)
    fs, fb = _all_files(small), _all_files(big)
    shared = [k for k in fs if k.endswith(".png")]
    assert len(shared) == 2 * (2 + 2 + 1)
    assert all(fs[k] == fb[k] for k in shared)
    # and the pool gives the same bytes as one process
    one = tmp_path / "one"
    _write(one, n_source=3, n_target=4, n_val=2, workers=1)
    assert _all_files(one) == fb


def test_domains_and_indices_use_distinct_streams() -> None:
    a = S.render_scene(0, "target_train", 0)[0]
    b = S.render_scene(0, "target_val", 0)[0]
    c = S.render_scene(0, "target_train", 1)[0]
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


# ---------------------------------------------------------------------------------------------- skip / rewrite
def test_skip_if_same_parameters(tmp_path: Path) -> None:
    _write(tmp_path)
    label = tmp_path / "gta5" / "labels" / "00001.png"
    before = label.stat().st_mtime_ns
    os.utime(label, ns=(before - 10**9, before - 10**9))
    again = _write(tmp_path)
    assert again["skipped"]
    assert label.stat().st_mtime_ns == before - 10**9  # untouched


def test_rewrite_on_change_and_stale_files_removed(tmp_path: Path) -> None:
    _write(tmp_path, n_source=3, n_target=4, n_val=2)
    first = (tmp_path / "gta5" / "images" / "00001.png").read_bytes()
    meta = _write(tmp_path, seed=5, n_source=2, n_target=1, n_val=1)
    assert not meta["skipped"]
    assert sorted(p.name for p in (tmp_path / "gta5" / "images").iterdir()) == ["00001.png", "00002.png"]
    assert (tmp_path / "gta5" / "images" / "00001.png").read_bytes() != first
    assert len(list((tmp_path / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))) == 1
    assert len(list((tmp_path / "cityscapes" / "gtFine" / "train").rglob("*.png"))) == 1
    assert json.loads((tmp_path / "meta.json").read_text())["seed"] == 5


def test_rewrite_when_meta_missing_or_different_style(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "meta.json").unlink()  # e.g. an interrupted run
    assert not _write(tmp_path)["skipped"]
    assert _write(tmp_path)["skipped"]
    from dataclasses import replace

    assert not _write(tmp_path, target_style=replace(S.TARGET_STYLE, noise=0.0))["skipped"]


def test_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _write(tmp_path, n_source=-1)


# ---------------------------------------------------------------------------------------------- domain gap
def _class_pixels(items, train_id: int) -> np.ndarray:
    return np.concatenate([img[LUT[lbl] == train_id] for img, lbl in items]).astype(np.float64)


def test_source_and_target_look_different(sample) -> None:
    shift = {}
    for train_id in range(19):
        mean_s = _class_pixels(sample["source"], train_id).mean(0)
        mean_t = _class_pixels(sample["target_train"], train_id).mean(0)
        shift[train_id] = float(np.linalg.norm(mean_s - mean_t))
    assert shift[10] > 30 and shift[1] > 25 and shift[8] > 12  # sky, sidewalk, vegetation
    assert np.mean(list(shift.values())) > 15

    def roughness(items, train_id: int) -> float:  # median horizontal gradient inside one class: texture + noise
        vals = []
        for img, lbl in items:
            d = np.abs(np.diff(img.astype(np.float64).mean(2), axis=1))
            inside = (LUT[lbl][:, 1:] == train_id) & (LUT[lbl][:, :-1] == train_id)
            if inside.sum() > 50:
                vals.append(np.median(d[inside]))
        return float(np.mean(vals))

    for train_id in (0, 10):  # road, sky
        assert roughness(sample["target_train"], train_id) > 1.3 * roughness(sample["source"], train_id)


def test_object_mix_differs(sample) -> None:
    def fraction(items, ids) -> float:
        return float(np.mean([np.isin(LUT[lbl], ids).mean() for _, lbl in items]))

    assert fraction(sample["target_train"], [11, 18]) > 1.5 * fraction(sample["source"], [11, 18])  # person, bicycle

    def with_class(items, train_id: int) -> float:
        return float(np.mean([(LUT[lbl] == train_id).any() for _, lbl in items]))

    assert with_class(sample["source"], 14) > 1.3 * with_class(sample["target_train"], 14)  # trucks are rarer


def test_instances_vary_in_colour(sample) -> None:
    """Colour alone is not a perfect cue: the mean car colour varies a lot between images of one domain."""
    means = [img[LUT[lbl] == 13].mean(0) for img, lbl in sample["source"] if (LUT[lbl] == 13).sum() > 50]
    assert len(means) > 5 and np.std(np.asarray(means), axis=0).mean() > 15


def test_style_is_frozen() -> None:
    with pytest.raises(Exception):
        S.TARGET_STYLE.noise = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- the gap knob
def test_gap_blends_only_the_appearance() -> None:
    assert S.target_style_at(1.0) is S.TARGET_STYLE
    half, none = S.target_style_at(0.5), S.target_style_at(0.0)
    for name in ("noise", "saturation", "illumination", "paving", "shadows"):
        src, tgt = getattr(S.SOURCE_STYLE, name), getattr(S.TARGET_STYLE, name)
        assert getattr(none, name) == src
        assert getattr(half, name) == pytest.approx((src + tgt) / 2)
    assert half.gamma == pytest.approx(((1.0 + 0.86) / 2, (1.0 + 1.2) / 2))
    road = {c[0]: c[1:] for c in half.class_shift}[S.styles.ROAD]
    assert road == pytest.approx((1.04, 1.03, 1.015, 0.85))  # the source has no shift: gains 1
    assert all(c[1:] == (1.0, 1.0, 1.0, 1.0) for c in none.class_shift)
    assert none.edge_soften is S.SOURCE_STYLE.edge_soften and half.edge_soften is S.TARGET_STYLE.edge_soften
    for name in ("horizon", "focal", "lanes", "persons", "bicycles", "max_depth"):  # content stays the target's
        assert getattr(none, name) == getattr(S.TARGET_STYLE, name)
    for bad in (-0.1, S.styles.MAX_GAP + 0.1):
        with pytest.raises(ValueError, match="gap"):
            S.target_style_at(bad)


def test_a_gap_beyond_one_extrapolates_every_change_within_valid_values() -> None:
    more = S.target_style_at(1.5)
    for name in ("noise", "saturation", "illumination", "shadows", "texture"):
        src, tgt = getattr(S.SOURCE_STYLE, name), getattr(S.TARGET_STYLE, name)
        assert getattr(more, name) == pytest.approx(max(0.0, tgt + 0.5 * (tgt - src)))
    assert more.contrast == pytest.approx((1 + 1.5 * (0.75 - 1), 1 + 1.5 * (0.93 - 1)))
    sky = {c[0]: c[1:] for c in more.class_shift}[S.styles.SKY]
    assert sky == pytest.approx((1.15, 1.105, 1.0, 0.325))  # the hazy sky's shift, half as much again
    # chances stop at 1: paving 0.1 -> 0.9 would extrapolate to 1.3
    assert more.paving == 1.0 and more.facade_detail == 1.0 and 0 < more.muted_paint < 1
    assert S.target_style_at(S.styles.MAX_GAP).saturation >= 0
    assert more.edge_soften is S.TARGET_STYLE.edge_soften


def test_the_clamp_leaves_gaps_up_to_one_unchanged() -> None:
    from proda.data.synthetic.styles import _blend

    for gap in (0.0, 0.3, 0.9):
        style = S.target_style_at(gap)
        for name in ("paving", "muted_paint", "saturation", "noise", "gamma", "shadow_strength"):
            assert getattr(style, name) == _blend(getattr(S.SOURCE_STYLE, name), getattr(S.TARGET_STYLE, name), gap)


def test_class_shift_strength_varies_per_image_within_the_spread() -> None:
    from dataclasses import replace

    from proda.data.synthetic.appearance import _class_tables

    sky = S.styles.SKY
    fixed = replace(S.TARGET_STYLE, class_shift=((sky, 1.2, 1.1, 0.9, 0.5),), class_shift_spread=0.0)
    rng = np.random.default_rng(0)
    gains, sats = _class_tables(fixed, rng)  # spread 0: the shift itself, and no draw from the image's stream
    assert gains[sky].tolist() == np.float32([1.2, 1.1, 0.9]).tolist() and sats[sky] == np.float32(0.5)
    assert gains[S.styles.ROAD].tolist() == [1, 1, 1] and sats[S.styles.ROAD] == 1
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state

    varying = replace(fixed, class_shift_spread=0.5)
    strengths = []
    for seed in range(200):
        gains, sats = _class_tables(varying, np.random.default_rng(seed))
        k = (gains[sky] - 1) / np.array([0.2, 0.1, -0.1])
        assert k == pytest.approx([k[0]] * 3, abs=1e-5)  # one strength per class: gains and saturation together
        assert (sats[sky] - 1) / -0.5 == pytest.approx(k[0], abs=1e-5)
        strengths.append(k[0])
    assert 0.5 - 1e-6 <= min(strengths) < 0.6 and 1.4 < max(strengths) <= 1.5 + 1e-6
    assert np.mean(strengths) == pytest.approx(1.0, abs=0.05)  # the shift on average, spread between images


def test_smaller_gap_brings_the_target_look_closer(tmp_path: Path) -> None:
    def colour_shift(style) -> float:  # mean colour of each class, source vs target, averaged over classes
        src = [S.render_scene(0, "source", i) for i in range(12)]
        tgt = [S.render_scene(0, "target_train", i, target_style=style) for i in range(12)]
        shifts = []
        for train_id in (0, 1, 2, 8, 10):  # road, sidewalk, building, vegetation, sky
            a, b = _class_pixels(src, train_id), _class_pixels(tgt, train_id)
            shifts.append(np.linalg.norm(a.mean(0) - b.mean(0)))
        return float(np.mean(shifts))

    full, half, none = (colour_shift(S.target_style_at(g)) for g in (1.0, 0.5, 0.0))
    assert none < half < full


def test_gap_is_recorded_and_rewrites(tmp_path: Path) -> None:
    meta = _write(tmp_path, gap=0.5)
    assert meta["gap"] == 0.5 and json.loads((tmp_path / "meta.json").read_text())["gap"] == 0.5
    assert _write(tmp_path, gap=0.5)["skipped"]
    assert not _write(tmp_path, gap=0.6)["skipped"]
    assert _write(tmp_path)["gap"] == S.DEFAULT_GAP
