"""Compact pseudo-label formats, the store, and carrying stored labels into weak crops."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import proda.io
from proda.adapt.losses import rectify_pseudo_labels
from proda.data.pseudo_labels import (
    PseudoLabelStore, class_balanced_thresholds, decode_hard, decode_soft, encode_hard, encode_soft,
    hard_labels_for_crop, soft_header, soft_labels_for_crop, threshold_labels,
)
from proda.data.pseudo_labels.codec import _decode_planes, _encode_planes
from proda.data.transforms import WeakGeometry, apply_weak_geometry, sample_weak_geometry
from proda.errors import DataError
from pseudo_label_fixtures import synthetic_prototype_weights, synthetic_soft_map

C, SIZE = 19, (257, 129)  # the original's stored soft map: [19, 129, 257] at stride 8 of 2048x1024
FLOAT32_BYTES = C * SIZE[0] * SIZE[1] * 4


@pytest.fixture(scope="module")
def realistic_map() -> np.ndarray:
    """A typical warm-up softmax (mean max-probability ~0.87) at the original's stored size."""
    return synthetic_soft_map(np.random.default_rng(0), C, SIZE, temperature=1.0)


# ---------------------------------------------------------------------------------------------------------
# Codec


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**32 - 1),
    high=st.sampled_from([1, 255, 65535]),
)
def test_plane_codec_is_lossless(shape: tuple[int, int, int], seed: int, high: int) -> None:
    q = np.random.default_rng(seed).integers(0, high + 1, size=shape)
    assert np.array_equal(_decode_planes(_encode_planes(q, 1), shape), q)


def _margin_guarantee(data: bytes) -> float:
    return 1.0 - math.exp(-soft_header(data).step)


@pytest.mark.parametrize("topk", [None, 3])
def test_soft_round_trip(realistic_map: np.ndarray, topk: int | None) -> None:
    p = realistic_map
    data = encode_soft(p, topk=topk)
    dec = decode_soft(data)
    hd = soft_header(data)
    assert dec.shape == p.shape and dec.dtype == np.float32
    np.testing.assert_allclose(dec.sum(axis=0), 1.0, atol=1e-5)
    # Argmax unchanged wherever the top-1/top-2 margin exceeds the quantisation step.
    top2 = np.sort(p, axis=0)[-2:]
    sure = top2[1] - top2[0] > _margin_guarantee(data)
    assert sure.mean() > 0.99
    assert np.array_equal(dec.argmax(0)[sure], p.argmax(0)[sure])
    # Stored probabilities are within the quantisation error, in log space (what ω·P0 compares).
    kept = p > math.exp(-hd.floor + 1)
    if topk is not None:  # the true top-k, where the k-th and (k+1)-th are more than a step apart
        ranked = np.sort(p, axis=0).astype(np.float64)
        kept &= (p >= ranked[-topk]) & (np.log(ranked[-topk]) - np.log(ranked[-topk - 1]) > hd.step)
    err = np.abs(np.log(dec[kept]) - np.log(p[kept].astype(np.float64)))
    assert err.max() <= 1.5 * hd.step
    # Absolute errors: tiny with all classes; a dropped class is off by at most what it held.
    if topk is None:
        assert np.abs(dec - p).max() < 0.01
    else:
        assert (np.abs(dec - p) <= np.sort(p, axis=0)[-topk - 1] + 0.01).all()


def test_soft_edge_cases() -> None:
    p = np.zeros((4, 3, 5), dtype=np.float32)
    p[1] = 1.0  # exact zeros elsewhere (float32 underflow in a real softmax)
    dec = decode_soft(encode_soft(p))
    assert (dec.argmax(0) == 1).all() and np.allclose(dec.sum(0), 1)
    unnormalised = np.full((3, 2, 2), 2.0, dtype=np.float32)
    np.testing.assert_allclose(decode_soft(encode_soft(unnormalised)), 1 / 3, rtol=1e-6)
    t = torch.from_numpy(synthetic_soft_map(np.random.default_rng(1), 5, (9, 7)))
    assert np.array_equal(decode_soft(encode_soft(t)), decode_soft(encode_soft(t.numpy())))
    for bad in (np.full((3, 2, 2), np.nan), -np.ones((3, 2, 2)), np.ones((2, 2))):
        with pytest.raises(ValueError):
            encode_soft(bad)
    with pytest.raises(ValueError):
        encode_soft(unnormalised, topk=3)  # topk must leave classes out
    data = encode_soft(unnormalised)
    for corrupt in (data[:-3], data + b"x", b"PLSF", data[:12] + bytes(len(data) - 12)):
        with pytest.raises(DataError):
            decode_soft(corrupt)
    with pytest.raises(DataError, match="hard labels"):
        decode_soft(encode_hard(np.zeros((2, 2), np.uint8), np.ones((2, 2))))


def _rectified_changed(p: np.ndarray, decoded: np.ndarray, omega: np.ndarray) -> float:
    """Share of stage 1's rectified labels argmax(ω·P0) that decoding changes, over draws ω [n, C, h, w]."""
    omega_t = torch.from_numpy(omega)
    before = rectify_pseudo_labels(torch.from_numpy(p)[None].expand_as(omega_t), omega_t)
    after = rectify_pseudo_labels(torch.from_numpy(decoded)[None].expand_as(omega_t), omega_t)
    return float((before != after).double().mean(dim=(1, 2)).max())


def test_soft_size_and_rectification(realistic_map: np.ndarray) -> None:
    """The measured trade-off (benchmarks/soft_label_formats.py): all classes keep rectified labels,
    top-3 keeps the size under 5 % of float32 and the argmax guarantee."""
    rng = np.random.default_rng(2)
    draws = [(4.0, 1.0), (8.0, 1.0), (16.0, 0.5)]  # ~2, ~4, ~8 nats to the runner-up prototype
    omega = np.stack([synthetic_prototype_weights(rng, realistic_map, d, a) for d, a in draws])
    changed = {}
    for topk, max_size in ((None, 0.30), (3, 0.05)):
        data = encode_soft(realistic_map, topk=topk)
        decoded = decode_soft(data)
        assert len(data) <= max_size * FLOAT32_BYTES
        top2 = np.sort(realistic_map, axis=0)[-2:]
        sure = top2[1] - top2[0] > _margin_guarantee(data)
        assert np.array_equal(decoded.argmax(0)[sure], realistic_map.argmax(0)[sure])
        changed[topk] = _rectified_changed(realistic_map, decoded, omega)
    assert changed[None] <= 1e-3  # >= 99.9 % of rectified labels unchanged in every draw
    assert changed[3] > 10 * changed[None]  # what dropping classes costs


# ---------------------------------------------------------------------------------------------------------
# Hard labels


def test_hard_round_trip() -> None:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 19, size=(37, 53)).astype(np.uint8)
    label[:5] = 255
    conf = rng.uniform(0.05, 1.0, size=label.shape).astype(np.float32)
    conf[0, 0], conf[0, 1] = 0.0, 1.0
    data = encode_hard(label, conf)
    out_label, out_conf = decode_hard(data)
    assert np.array_equal(out_label, label) and out_conf.dtype == np.float32
    # Stored upwards on the grid of 1/1000: never below the true confidence, less than one step above.
    assert (out_conf >= conf - 1e-7).all() and (out_conf - conf < 1e-3).all()
    assert decode_hard(encode_hard(label, torch.from_numpy(conf)))[1].tolist() == out_conf.tolist()
    with pytest.raises(ValueError):
        encode_hard(label.astype(np.int64), conf)
    with pytest.raises(ValueError):
        encode_hard(label, conf[:-1])
    with pytest.raises(DataError):
        decode_hard(data[:-1])


def test_threshold_boundary() -> None:
    """Confidence exactly at the threshold is ignored, the next float above is kept, after a round trip."""
    t = 0.95
    at = np.float32(t)  # the float32 nearest to 0.95 (just below it)
    above = np.nextafter(at, np.float32(1))
    conf = np.array([[at, above, np.float32(0.5), np.float32(1.0)]], dtype=np.float32)
    label = np.array([[1, 2, 3, 4]], dtype=np.uint8)
    expected = [[255, 2, 255, 4]]
    assert threshold_labels(label, conf, t).tolist() == expected
    assert threshold_labels(*decode_hard(encode_hard(label, conf)), t).tolist() == expected
    assert threshold_labels(label, conf, 0.5, ignore_index=250).tolist() == [[1, 2, 250, 4]]


@pytest.mark.parametrize("steps", [100, 1000, 65535])
def test_threshold_exact_on_grid(steps: int) -> None:
    """For every threshold j/N on the stored grid, thresholding decoded confidences equals thresholding
    the originals, including confidences at, just below and just above every grid point."""
    grid = (np.arange(steps + 1) / steps).astype(np.float32)
    conf = np.concatenate([grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(2))])
    conf = np.clip(np.pad(conf, (0, -conf.size % 512), constant_values=1), 0, 1).reshape(-1, 512)
    label = np.ones_like(conf, dtype=np.uint8)
    _, dec = decode_hard(encode_hard(label, conf, conf_steps=steps))
    js = sorted({0, 1, steps // 2, steps - 1, steps, int(0.95 * steps), int(0.9 * steps)})
    decimals = [0.95, 0.9] if steps % 100 == 0 else []  # on the grid of 1/100 and 1/1000, not of 1/65535
    for t in [j / steps for j in js] + decimals:
        assert np.array_equal(threshold_labels(label, dec, t), threshold_labels(label, conf, t)), t


def test_threshold_between_grid_points_rounds_down() -> None:
    """Documented: a threshold off the grid acts as the grid threshold just below it."""
    label, conf = np.ones((1, 1), np.uint8), np.full((1, 1), 0.9503, np.float32)
    assert threshold_labels(label, conf, 0.9505)[0, 0] == 255
    assert threshold_labels(*decode_hard(encode_hard(label, conf)), 0.9505)[0, 0] == 1  # as if t = 0.950


def test_per_class_thresholds() -> None:
    """One threshold per class, looked up by each pixel's label; ids outside the table are ignored."""
    label = np.array([[0, 0, 1, 1, 2, 7]], dtype=np.uint8)
    conf = np.array([[0.5, 0.7, 0.5, 0.7, 0.99, 0.99]], dtype=np.float32)
    per_class = np.array([0.6, 0.4, 0.995])
    assert threshold_labels(label, conf, per_class).tolist() == [[255, 0, 1, 1, 255, 255]]
    # a per-class table of equal values is the scalar rule
    assert threshold_labels(label, conf, np.full(8, 0.6)).tolist() == threshold_labels(label, conf, 0.6).tolist()


def test_class_balanced_thresholds_by_hand() -> None:
    """N = 10 grid. Class 0: codes 10 x4, 9 x4, 5 x2 (10 pixels); class 1: codes 3, 4, 6, 8 (4 pixels);
    class 2: no pixels. With threshold 0.95 and keep 0.5:
      class 0: pixels above j: j=8 -> 8 (80 %), j=9 -> 4 (40 %): largest j keeping >= 50 % is 8 -> 0.8;
      class 1: j=3 -> 3 (75 %), j=4 -> 2 (50 %), j=5 -> 2, j=6 -> 1: largest is 5 -> 0.5;
      class 2: 0.95. With keep 0.2 class 0's own j is 9 -> 0.9 (4 of 10 above), and keep 0.9 needs j=4
      (all 10 above) for class 0; class 1 with keep 1 needs everything kept: j = 2."""
    hist = np.zeros((3, 11), dtype=np.int64)
    hist[0, 10], hist[0, 9], hist[0, 5] = 4, 4, 2
    for q in (3, 4, 6, 8):
        hist[1, q] = 1
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.95, 0.5, conf_steps=10), [0.8, 0.5, 0.95])
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.95, 0.2, conf_steps=10)[0], 0.9)
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.95, 0.9, conf_steps=10)[0], 0.4)
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.95, 1.0, conf_steps=10)[1], 0.2)
    # never stricter than the global threshold; keep 0 is the global threshold alone
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.3, 0.5, conf_steps=10), [0.3, 0.3, 0.3])
    np.testing.assert_allclose(class_balanced_thresholds(hist, 0.95, 0.0, conf_steps=10), [0.95, 0.95, 0.95])
    with pytest.raises(ValueError, match="histogram must be"):
        class_balanced_thresholds(hist, 0.95, 0.5)  # default grid of 1/1000


def test_class_balanced_selection_keeps_the_share(tmp_path: Path) -> None:
    """Through a store: every class keeps at least its share (exactly, as codes are exact), and the
    histogram counts each pixel's code once."""
    rng = np.random.default_rng(0)
    store = PseudoLabelStore.create(tmp_path / "pl", "hard", 4, (16, 8), checkpoint="s1.pth", stage="stage1")
    labels, confs = [], []
    for i in range(3):
        label = rng.integers(0, 4, (8, 16)).astype(np.uint8)
        conf = rng.beta(np.where(label == 3, 1, 5), 1).astype(np.float32)  # class 3 unsure
        store.write(f"im{i}", encode_hard(label, conf))
        labels.append(label), confs.append(conf)
    names = [f"im{i}" for i in range(3)]
    hist = store.confidence_histogram(names)
    assert hist.shape == (4, 1001) and hist.sum() == 3 * 8 * 16
    all_codes = np.ceil(np.concatenate(confs).astype(np.float64).ravel() * 1000).astype(int)
    assert np.array_equal(hist[3], np.bincount(all_codes[np.concatenate(labels).ravel() == 3], minlength=1001))
    per_class = class_balanced_thresholds(hist, 0.95, 0.3)
    kept = [threshold_labels(*store.read_hard(n), per_class) for n in names]
    for c in range(4):
        share = sum(int((k == c).sum()) for k in kept) / int(hist[c].sum())
        above = sum(int(((l == c) & (f > 0.95)).sum()) for l, f in zip(labels, confs)) / int(hist[c].sum())
        assert share >= max(0.3, above)
        assert share < 0.3 + 0.1 or per_class[c] == 0.95  # not much more than asked for
    assert per_class[3] < 0.95  # the unsure class is kept only thanks to its share
    store.write("other_grid", encode_hard(labels[0], confs[0], conf_steps=100))
    with pytest.raises(DataError, match="other_grid.hard: confidences on a grid of 1/100"):
        store.confidence_histogram(["other_grid"])


# ---------------------------------------------------------------------------------------------------------
# Store


def _soft_store(root: Path, **kw) -> PseudoLabelStore:
    return PseudoLabelStore.create(root, "soft", 5, (9, 7), checkpoint="warmup.pth", stage="warmup", **kw)


def _small_soft(seed: int = 0) -> bytes:
    return encode_soft(synthetic_soft_map(np.random.default_rng(seed), 5, (9, 7)))


def test_store_round_trip_and_resume(tmp_path: Path) -> None:
    root = tmp_path / "pl"
    store = _soft_store(root)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["kind"] == "soft" and meta["num_classes"] == 5 and meta["map_size"] == [9, 7]
    assert meta["format_version"] == 1 and meta["provenance"]["checkpoint"] == "warmup.pth" and meta["provenance"]["date"]
    names = [f"aachen_{i:06d}_000019_leftImg8bit" for i in range(4)]
    assert store.missing(names) == names and not store.has(names[0])
    assert store.estimate_bytes(10) > 0
    data = _small_soft()
    store.write(names[1], data)
    store.write(names[3], data)
    assert (root / f"{names[1]}.soft").is_file()
    assert store.has(names[1]) and store.missing(names) == [names[0], names[2]]
    np.testing.assert_array_equal(store.read_soft(names[1]), decode_soft(data))
    assert store.estimate_bytes(100) == pytest.approx(100 * 1.1 * len(data), rel=0.01, abs=4096)
    # Resuming: same provenance reopens, a different checkpoint or kind refuses to mix labels.
    again = _soft_store(root)
    assert again.missing(names) == [names[0], names[2]]
    with pytest.raises(DataError, match="checkpoint"):
        PseudoLabelStore.create(root, "soft", 5, (9, 7), checkpoint="other.pth", stage="warmup")
    with pytest.raises(DataError, match="num_classes"):
        PseudoLabelStore.create(root, "soft", 6, (9, 7), checkpoint="warmup.pth", stage="warmup")


def test_store_compares_checkpoints_by_content_when_it_can(tmp_path: Path) -> None:
    """A run folder moved or copied elsewhere resumes its labels (same checkpoint content, other path);
    another checkpoint at the same path is refused, naming both."""
    root = tmp_path / "pl"
    PseudoLabelStore.create(root, "hard", 5, (9, 7), checkpoint="/a/s1.pth", stage="stage1", checkpoint_digest="d1")
    PseudoLabelStore.create(root, "hard", 5, (9, 7), checkpoint="/b/s1.pth", stage="stage1", checkpoint_digest="d1")
    with pytest.raises(DataError, match=r"another checkpoint \(made from '/a/s1.pth', whose content differs"):
        PseudoLabelStore.create(root, "hard", 5, (9, 7), checkpoint="/a/s1.pth", stage="stage1", checkpoint_digest="d2")
    with pytest.raises(DataError, match="stage"):
        PseudoLabelStore.create(root, "hard", 5, (9, 7), checkpoint="/a/s1.pth", stage="stage2", checkpoint_digest="d1")
    # a store written without a digest (older proda) is compared by path
    PseudoLabelStore.create(tmp_path / "old", "hard", 5, (9, 7), checkpoint="/a/s1.pth", stage="stage1")
    with pytest.raises(DataError, match="checkpoint '/a/s1.pth', not '/b/s1.pth'"):
        PseudoLabelStore.create(tmp_path / "old", "hard", 5, (9, 7), checkpoint="/b/s1.pth", stage="stage1",
                                checkpoint_digest="d1")


def test_store_hard(tmp_path: Path) -> None:
    store = PseudoLabelStore.create(tmp_path / "h", "hard", 19, (6, 4), checkpoint="s1.pth", stage="stage1")
    label = np.arange(24, dtype=np.uint8).reshape(4, 6) % 19
    conf = np.linspace(0.5, 1.0, 24, dtype=np.float32).reshape(4, 6)
    store.write("img", encode_hard(label, conf))
    out_label, out_conf = store.read_hard("img")
    assert np.array_equal(out_label, label) and np.abs(out_conf - conf).max() < 1e-3
    with pytest.raises(DataError, match="hard"):
        store.read_soft("img")
    with pytest.raises(ValueError):
        store.write("img2", encode_hard(label[:, :5], conf[:, :5]))  # wrong size for this store
    with pytest.raises(DataError):
        store.write("img3", _small_soft())  # wrong kind


def test_store_open_validation(tmp_path: Path) -> None:
    root = tmp_path / "pl"
    with pytest.raises(DataError, match=str(root)):
        PseudoLabelStore.open(root)  # no folder
    root.mkdir()
    with pytest.raises(DataError, match=f"{root}.*meta.json"):
        PseudoLabelStore.open(root)  # no meta
    (root / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json"):
        PseudoLabelStore.open(root)
    (root / "meta.json").write_text(json.dumps({"kind": "fuzzy"}))
    with pytest.raises(DataError, match="malformed"):
        PseudoLabelStore.open(root)
    (root / "meta.json").unlink()
    _soft_store(root)
    assert PseudoLabelStore.open(root, kind="soft", num_classes=5).num_classes == 5
    with pytest.raises(DataError, match=f"{root}.*soft.*hard"):
        PseudoLabelStore.open(root, kind="hard")
    with pytest.raises(DataError, match=f"{root}.*5 classes.*19"):
        PseudoLabelStore.open(root, kind="soft", num_classes=19)


def test_store_errors_name_the_file(tmp_path: Path) -> None:
    store = _soft_store(tmp_path / "pl")
    with pytest.raises(DataError, match="img.soft"):
        store.read_soft("img")  # not generated
    (tmp_path / "pl" / "img.soft").write_bytes(_small_soft()[:-10])
    with pytest.raises(DataError, match="img.soft"):
        store.read_soft("img")  # truncated
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            store.path(bad)


def test_store_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed mid-write (here: fsync raising) leaves neither the file nor a temporary."""
    store = _soft_store(tmp_path / "pl")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(proda.io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write("img", _small_soft())
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "pl")) == ["meta.json"]
    assert store.missing(["img"]) == ["img"]


# ---------------------------------------------------------------------------------------------------------
# Crops


def _original_soft_crop(soft: np.ndarray, geom: WeakGeometry, out_size: tuple[int, int]) -> torch.Tensor:
    """The original loader: whole map -> full resolution -> random scale -> crop -> flip -> crop/4."""
    w, h = geom.full_size
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box
    t = F.interpolate(torch.from_numpy(soft)[None], size=(h, w), mode="bilinear", align_corners=True)
    t = F.interpolate(t, size=(sh, sw), mode="bilinear", align_corners=True)[..., y0:y1, x0:x1]
    if geom.flip:
        t = t.flip(-1)
    return F.interpolate(t, size=(out_size[1], out_size[0]), mode="bilinear", align_corners=True)[0]


def test_soft_labels_for_crop_matches_original() -> None:
    rng = np.random.default_rng(4)
    full, crop, out = (256, 128), (112, 64), (28, 16)
    flips = set()
    for _ in range(8):
        soft = synthetic_soft_map(rng, 7, (33, 17))  # stride 8 of 256x128
        geom = sample_weak_geometry(rng, full, crop, None, (0.5, 1.5), True)
        flips.add(geom.flip)
        ours = soft_labels_for_crop(soft, geom, out)
        ref = _original_soft_crop(soft, geom, out)
        assert ours.shape == (7, 16, 28) and ours.dtype == torch.float32
        diff = (ours - ref).abs()
        assert diff.max() < 0.05 and diff.mean() < 1e-3  # interpolation order and half-pixel conventions only
        wrong = _original_soft_crop(soft, WeakGeometry(geom.full_size, geom.scaled_size, geom.crop_box, not geom.flip), out)
        assert (ours - wrong).abs().mean() > 10 * diff.mean()  # the comparison can tell a wrong geometry
    assert flips == {True, False}


def test_crops_identity_geometry() -> None:
    """With no rescale, the whole image as the crop and the map's own grid, both loaders return the map."""
    rng = np.random.default_rng(5)
    soft = synthetic_soft_map(rng, 4, (17, 9))
    label = rng.integers(0, 19, size=(40, 72)).astype(np.uint8)
    for flip in (False, True):
        geom = WeakGeometry((72, 40), (72, 40), (0, 0, 72, 40), flip)
        expect = soft[:, :, ::-1] if flip else soft
        np.testing.assert_allclose(soft_labels_for_crop(soft, geom, (17, 9)).numpy(), expect, atol=1e-5, rtol=0)
        hard = hard_labels_for_crop(label, geom, (72, 40))
        assert hard.dtype == torch.long and np.array_equal(hard.numpy(), label[:, ::-1] if flip else label)


def test_hard_labels_for_crop_follows_the_soft_grid() -> None:
    """Nearest samples land where the soft loader samples: on a blocky label, a one-hot carried bilinearly
    agrees with the nearest label away from block edges; ids (incl. ignore) are never blended."""
    rng = np.random.default_rng(6)
    full = (256, 128)
    blocks = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(8, 16))
    label = np.kron(blocks, np.ones((16, 16), dtype=np.uint8))
    one_hot = (label[None] == np.array([0, 3, 7, 255], dtype=np.uint8)[:, None, None]).astype(np.float32)
    for _ in range(6):
        geom = sample_weak_geometry(rng, full, (112, 64), None, (0.5, 1.5), True)
        hard = hard_labels_for_crop(label, geom, (28, 16))
        assert hard.shape == (16, 28) and set(hard.unique().tolist()) <= {0, 3, 7, 255}
        soft = soft_labels_for_crop(one_hot, geom, (28, 16))
        clear = soft.max(0).values > 0.99  # away from block edges
        ids = torch.tensor([0, 3, 7, 255])[soft.argmax(0)]
        assert clear.float().mean() > 0.5 and torch.equal(hard[clear], ids[clear])
    with pytest.raises(ValueError):
        hard_labels_for_crop(label[:, :-1], geom, (28, 16))


def test_hard_labels_land_on_the_image_pixel_they_label() -> None:
    """At x1.5 every third crop pixel is centred on a half-pixel tie between two source pixels. Painted with
    their own coordinates, the carried hard label of crop pixel (x, y) names the source pixel the weak
    view's labels take there, within half a pixel of where the image pixel was sampled."""
    w, h = 64, 32
    grid_x = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    grid_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    image = np.dstack([grid_x, grid_y, np.zeros_like(grid_x)])  # float32: bilinear keeps the exact position
    label_x, label_y = grid_x.astype(np.uint8), grid_y.astype(np.uint8)
    crop = (80, 40)
    for flip in (False, True):
        geom = WeakGeometry((w, h), (96, 48), (5, 3, 5 + crop[0], 3 + crop[1]), flip)
        view, weak_x = apply_weak_geometry(geom, image, label_x)
        _, weak_y = apply_weak_geometry(geom, image, label_y)
        hard_x = hard_labels_for_crop(label_x, geom, crop).numpy()
        hard_y = hard_labels_for_crop(label_y, geom, crop).numpy()
        assert np.array_equal(hard_x, weak_x) and np.array_equal(hard_y, weak_y)
        assert np.abs(hard_x - view[..., 0]).max() <= 0.5 + 1e-4 and np.abs(hard_y - view[..., 1]).max() <= 0.5 + 1e-4
        ties = np.abs(view[..., 0] % 1 - 0.5) < 1e-4
        assert ties[0].sum() >= crop[0] // 3 - 1  # the geometry does hit the ties
        # a coarser grid takes the weak view's label nearest to each of its positions
        rows = np.floor(np.arange(10) * (crop[1] - 1) / 9 + 0.5).astype(int)
        cols = np.floor(np.arange(20) * (crop[0] - 1) / 19 + 0.5).astype(int)
        assert np.array_equal(hard_labels_for_crop(label_x, geom, (20, 10)).numpy(), weak_x[np.ix_(rows, cols)])
