"""Property tests (hypothesis) of the geometry, label tables, metrics and losses, where the example-based
tests of test_transforms / test_strong_view / test_labels / test_metrics / test_losses / test_pseudo_labels
leave gaps: arbitrary sizes and transforms, every raw value, sample order, degenerate inputs (everything
ignored, one class, huge logits) and confidences exactly at a threshold.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fixtures import write_cityscapes, write_gta5, write_synthia
from proda.adapt.losses import (
    distillation_kl,
    mean_log_prob_regularizer,
    prototype_consistency_kl,
    prototype_distances,
    rectify_pseudo_labels,
    symmetric_cross_entropy,
)
from proda.adapt.supervised import segmentation_loss
from proda.data import labels as L
from proda.data.registry import build_dataset
from proda.data.pseudo_labels import decode_hard, encode_hard, hard_labels_for_crop, threshold_labels
from proda.data.strong import GEOMETRIC_OPS, strong_view, warp_to_strong
from proda.data.transforms import WeakCropper, WeakGeometry, sample_weak_geometry
from proda.engine.metrics import ConfusionMatrix, summarize
from proda.errors import DataError

FAST = settings(max_examples=30, deadline=None)
IGNORE = L.IGNORE_INDEX

# 24 colours pairwise far apart: a label map drawn with them can be decoded back from the image.
_LEVELS = (10, 128, 245)
PALETTE = np.array([(r, g, b) for r in _LEVELS for g in _LEVELS for b in _LEVELS][:24], dtype=np.uint8)


def constant_around(a: np.ndarray, r: int = 1) -> np.ndarray:
    """True where every pixel within Chebyshev distance ``r`` has the same value (False near the border)."""
    h, w = a.shape
    p = np.pad(a.astype(np.int64), r, mode="constant", constant_values=-1)
    out = np.ones(a.shape, dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= p[r + dy: r + dy + h, r + dx: r + dx + w] == a
    return out


def block_label(w: int, h: int, block: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), size=(-(-h // block), -(-w // block)))
    return np.kron(blocks, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)


# ---------------------------------------------------------------------------------------------- weak view
@FAST
@given(
    w=st.integers(8, 4096), aspect=st.floats(0.001, 4.0), crop=st.tuples(st.integers(1, 600), st.integers(1, 600)),
    low=st.floats(0.1, 2.0), extra=st.floats(0.0, 1.5), resize=st.one_of(st.none(), st.integers(1, 4096)),
    hflip=st.booleans(), seed=st.integers(0, 2**32 - 1),
)
@example(w=1000, aspect=0.01, crop=(8, 8), low=0.5, extra=0.5, resize=50, hflip=True, seed=0)  # was 1000x10 -> 25x0
def test_weak_geometry_fits_and_round_trips_for_any_size(w, aspect, crop, low, extra, resize, hflip, seed):
    h = max(1, round(w * aspect))
    geom = sample_weak_geometry(np.random.default_rng(seed), (w, h), crop, resize, (low, low + extra), hflip)
    sw, sh = geom.scaled_size
    x0, y0, x1, y1 = geom.crop_box
    assert (x1 - x0, y1 - y0) == crop
    assert 0 <= x0 and x1 <= sw and 0 <= y0 and y1 <= sh
    assert geom.flip is False or hflip
    assert WeakGeometry.from_tensor(geom.to_tensor()) == geom


@FAST
@given(w=st.integers(40, 160), h=st.integers(24, 96), block=st.integers(6, 16), seed=st.integers(0, 2**32 - 1),
       low=st.floats(0.5, 1.5), resize=st.one_of(st.none(), st.integers(48, 240)))
def test_weak_view_keeps_image_label_and_carried_labels_aligned(w, h, block, seed, low, resize):
    """Image (bilinear), label (nearest) and a label map carried by the sampling grid of pseudo labels
    (hard_labels_for_crop) agree wherever the label is locally constant."""
    label = block_label(w, h, block, seed)
    image = PALETTE[label]
    crop = (max(1, int(low * (resize or w) * 0.8)), max(1, int(low * (resize or w) * h / w * 0.8)))
    cropper = WeakCropper(crop, resize, (low, low * 1.2), True)
    geom, image_crop, label_crop = cropper(np.random.default_rng(seed), image, label)
    assert image_crop.shape[:2] == label_crop.shape == (crop[1], crop[0])
    # bilinear taps lie within one source pixel: enough crop pixels around to cover it when upscaling
    r = max(1, math.ceil(max(geom.scaled_size[0] / w, geom.scaled_size[1] / h)))
    inner = constant_around(label_crop, r)
    assert np.array_equal(image_crop[inner], PALETTE[label_crop[inner]])
    carried = hard_labels_for_crop(label, geom, crop).numpy()
    assert np.array_equal(carried[inner], label_crop[inner])


# --------------------------------------------------------------------------------------------- strong view
def smooth_image(w: int, h: int, seed: int) -> np.ndarray:
    """HxWx3 uint8 with gradients below 3 levels per pixel, so bilinear resampling is nearly exact."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [127 + 100 * np.sin(x / (11 + 3 * c) + y / (17 - 2 * c) + phase[c]) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).round().astype(np.uint8)


@FAST
@given(seed=st.integers(0, 2**32 - 1), w=st.integers(32, 96), h=st.integers(32, 96), n_ops=st.integers(1, 3),
       cutout=st.booleans())
def test_strong_warp_of_a_map_equals_the_warp_of_the_image(seed, w, h, n_ops, cutout):
    """The weak crop itself, carried as a float map by warp_to_strong, is the strong image (geometric ops,
    flip and cutout drawn at random): valid samples match to rounding, invalid ones are cutout or out of frame."""
    weak = smooth_image(w, h, seed)
    strong, t = strong_view(weak, np.random.default_rng(seed), n_ops=n_ops, pool=GEOMETRIC_OPS, cutout=cutout)
    maps = torch.from_numpy(weak.transpose(2, 0, 1).astype(np.float64))[None]
    carried, valid = warp_to_strong(maps, [t], mode="bilinear")
    carried, valid = carried[0].numpy().transpose(1, 2, 0), valid[0].numpy()
    inner = valid & constant_around(valid, 2)  # away from the frame edge and the cutout box
    diff = np.abs(carried[inner] - strong[inner].astype(np.float64))
    assert diff.size == 0 or diff.max() <= 2.0  # opencv's 1/32-pixel fixed point and uint8 rounding
    if t.cutout is not None:
        x0, y0, x1, y1 = t.cutout
        assert not valid[y0:y1, x0:x1].any() and np.all(strong[y0:y1, x0:x1] == 127)
    if np.array_equal(t.matrix, np.eye(3)[:2]) and t.cutout is None:
        assert valid.all() and np.array_equal(strong, weak)
        assert np.abs(carried - weak).max() < 1e-6  # identity: the map is sampled on its own pixels


# ------------------------------------------------------------------------------------------- label tables
@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_every_raw_value_maps_to_a_class_or_ignore_and_back(num_classes):
    """id -> compact -> id for every evaluated Cityscapes id; every other byte (incl. 34..255) -> 255;
    compact ids of 16/13 mean the same trainId as in 19; SYNTHIA ids land on the same class names."""
    lut, to_id = L.cityscapes_lut(num_classes), L.compact_to_cityscapes_id(num_classes)
    to_train = L.compact_to_train_id(num_classes)
    lut19 = L.cityscapes_lut(19)
    for v in range(256):
        c = int(lut[v])
        if c == IGNORE:
            assert v > L.CITYSCAPES_MAX_ID or lut19[v] == IGNORE or lut19[v] not in L.TO19[num_classes]
            continue
        assert 0 <= c < num_classes
        assert to_id[c] == v  # round trip
        assert to_train[c] == lut19[v]  # same class in every protocol
    assert sorted(set(lut.tolist()) - {IGNORE}) == list(range(num_classes))  # every class reachable
    synthia = L.synthia_lut(num_classes)
    names = L.class_names(num_classes)
    alias = {"person": "pedestrian"}
    for v in range(256):
        c = int(synthia[v])
        if c == IGNORE:
            continue
        assert v <= L.SYNTHIA_MAX_ID and L.SYNTHIA_NAMES[v] == alias.get(names[c], names[c])


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    write_gta5(root / "gta5", n=1)
    write_synthia(root / "synthia", n=1)
    write_cityscapes(root / "cityscapes", {"val": ["frankfurt"]}, per_city=1)
    return {
        "gta5": (build_dataset("gta5", root / "gta5"), L.cityscapes_lut, 34),
        "synthia": (build_dataset("synthia", root / "synthia"), L.synthia_lut, L.SYNTHIA_MAX_ID),
        "cityscapes": (build_dataset("cityscapes", root / "cityscapes", split="val"),
                       L.cityscapes_lut, L.CITYSCAPES_MAX_ID),
    }


@FAST
@given(name=st.sampled_from(["gta5", "synthia", "cityscapes"]),
       raw=arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6)),
                  elements=st.one_of(st.integers(0, 40), st.integers(0, 255))))
def test_reader_maps_valid_raw_ids_and_names_every_invalid_one(readers, name, raw):
    dataset, lut, max_id = readers[name]
    dataset._read_raw_label = lambda path: raw  # the decoded file, whatever it holds
    bad = sorted(set(raw[raw > max_id].tolist()))
    if bad:
        message = re.escape(f"unknown label values {bad} ({int((raw > max_id).sum())} pixels); valid raw values are 0..{max_id}")
        with pytest.raises(DataError, match=message):
            dataset.read_label(0)
    else:
        assert np.array_equal(dataset.read_label(0), lut(dataset.num_classes)[raw])


# ------------------------------------------------------------------------------------------------ metrics
labelled = st.integers(1, 6).flatmap(lambda c: st.tuples(
    st.just(c),
    st.lists(st.tuples(st.sampled_from([*range(c), IGNORE]), st.integers(0, c - 1)), min_size=1, max_size=60),
    st.integers(0, 2**32 - 1),
))


def matrix(c: int, pairs, chunks: int = 1) -> ConfusionMatrix:
    cm = ConfusionMatrix(c)
    target = torch.tensor([t for t, _ in pairs])
    pred = torch.tensor([p for _, p in pairs])
    for part_t, part_p in zip(target.chunk(chunks), pred.chunk(chunks)):
        cm.update(part_p, part_t)
    return cm


@FAST
@given(labelled)
def test_miou_ignores_sample_order_and_batching(case):
    c, pairs, seed = case
    ref = matrix(c, pairs)
    shuffled = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]
    for other in (matrix(c, shuffled), matrix(c, shuffled, chunks=1 + seed % 5)):
        assert torch.equal(other.mat, ref.mat)
        assert other.miou() == ref.miou() or (math.isnan(other.miou()) and math.isnan(ref.miou()))


@FAST
@given(labelled)
def test_miou_is_equivariant_to_renaming_classes(case):
    c, pairs, seed = case
    perm = np.random.default_rng(seed).permutation(c)
    renamed = [(t if t == IGNORE else int(perm[t]), int(perm[p])) for t, p in pairs]
    a, b = matrix(c, pairs).iou(), matrix(c, renamed).iou()
    assert torch.equal(torch.nan_to_num(b[torch.from_numpy(perm)], nan=-1.0), torch.nan_to_num(a, nan=-1.0))


@FAST
@given(st.integers(1, 19), st.integers(1, 50))
def test_all_pixels_ignored_gives_no_score_not_an_error(c, n):
    cm = ConfusionMatrix(c)
    cm.update(torch.zeros(n, dtype=torch.long), torch.full((n,), IGNORE))
    assert int(cm.mat.sum()) == 0 and math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    assert torch.isnan(cm.iou()).all()
    if c in (19, 16, 13):
        result = summarize(cm, c)
        assert result["miou"] is None and all(v is None for v in result["per_class_iou"].values())
        assert result.get("miou_13", None) is None
        json.dumps(result, allow_nan=False)  # valid JSON: no NaN
        assert "-" in cm.format_table(L.class_names(c))


@FAST
@given(st.integers(2, 19), st.data())
def test_one_class_only(c, data):
    k = data.draw(st.integers(0, c - 1))
    j = data.draw(st.integers(0, c - 1).filter(lambda v: v != k))
    n = data.draw(st.integers(1, 40))
    perfect = ConfusionMatrix(c)
    perfect.update(torch.full((n,), k), torch.full((n,), k))
    iou = perfect.iou()
    assert iou[k] == 1.0 and torch.isnan(torch.cat([iou[:k], iou[k + 1:]])).all() and perfect.miou() == 100.0
    wrong = ConfusionMatrix(c)
    wrong.update(torch.full((n,), j), torch.full((n,), k))
    assert wrong.iou()[k] == 0.0 and wrong.iou()[j] == 0.0 and wrong.miou() == 0.0


# ------------------------------------------------------------------------------------------------- losses
def _logits(shape, scale=1.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).requires_grad_()


LOSSES = {
    # name: f(logits [B,C,H,W], labels [B,H,W] with 255, valid [B,H,W]) -> scalar
    "segmentation_ce": lambda x, y, v: segmentation_loss(x, y),
    "sce": lambda x, y, v: symmetric_cross_entropy(x, y),
    "regularizer": lambda x, y, v: mean_log_prob_regularizer(x, v),
    "distill_kl": lambda x, y, v: distillation_kl(x, x.detach().flip(1), valid=v),
    "distill_original": lambda x, y, v: distillation_kl(x, x.detach().flip(1), form="original", valid=v),
    "consistency": lambda x, y, v: prototype_consistency_kl(
        prototype_distances(x.detach(), torch.eye(x.shape[1])), v, x, torch.eye(x.shape[1])),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@FAST
@given(b=st.integers(1, 2), c=st.integers(1, 5), hw=st.integers(1, 4), seed=st.integers(0, 1000))
def test_everything_ignored_gives_zero_loss_and_zero_grads(name, b, c, hw, seed):
    x = _logits((b, c, hw, hw), seed=seed)
    y = torch.full((b, hw, hw), IGNORE)
    loss = LOSSES[name](x, y, torch.zeros(b, hw, hw, dtype=torch.bool))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert x.grad is None or torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", sorted(LOSSES))
@FAST
@given(hw=st.integers(1, 4), seed=st.integers(0, 1000), scale=st.sampled_from([1.0, 1e4]))
def test_one_class_only_gives_zero_loss(name, hw, seed, scale):
    """With one class every probability is 1: CE, RCE, KL and the regulariser are all 0, gradients 0. (The
    released distillation form is Σ t·(log t − p_s) = −1 per pixel there, a constant: still zero gradients.)"""
    x = _logits((2, 1, hw, hw), scale=scale, seed=seed)
    loss = LOSSES[name](x, torch.zeros(2, hw, hw, dtype=torch.long), torch.ones(2, hw, hw, dtype=torch.bool))
    assert abs(loss.item() - (-1.0 if name == "distill_original" else 0.0)) < 1e-6
    loss.backward()
    assert x.grad is None or x.grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", sorted(LOSSES))
@FAST
@given(c=st.integers(2, 6), hw=st.integers(1, 4), seed=st.integers(0, 1000), ignore_some=st.booleans())
def test_huge_logits_give_finite_losses_and_gradients(name, c, hw, seed, ignore_some):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 2, (2, c, hw, hw), generator=g).float() * 2e4 - 1e4).requires_grad_()  # exactly ±1e4
    y = torch.randint(0, c, (2, hw, hw), generator=g)
    valid = torch.ones(2, hw, hw, dtype=torch.bool)
    if ignore_some:
        valid[0] = False
        y[0] = IGNORE
    loss = LOSSES[name](x, y, valid)
    assert math.isfinite(loss.item())
    loss.backward()
    assert x.grad is None or torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------- pseudo-label rules
@FAST
@given(conf=arrays(np.float32, st.integers(1, 40), elements=st.floats(0, 1, width=32)),
       pick=st.integers(0, 39), offset=st.sampled_from([None, -1, 0, 1]))
def test_hard_labels_ignore_exactly_the_confidences_at_or_below_the_threshold(conf, pick, offset):
    """`label = 255 where conf <= threshold` (stages 2/3), with the threshold often exactly one of the
    confidences or its float neighbours, before and after the compact store's round trip."""
    threshold = 0.95 if offset is None else float(conf[pick % conf.size])
    if offset is not None and offset != 0:
        threshold = float(np.nextafter(np.float32(threshold), np.float32(offset * 2.0)))
    label = (np.arange(conf.size) % 19).astype(np.uint8)
    out = threshold_labels(label[None], conf[None], threshold)[0]
    expected = np.where(conf.astype(np.float64) <= threshold, IGNORE, label)
    assert np.array_equal(out, expected)
    if offset is None:  # 0.95 is on the store's confidence grid: thresholding survives the round trip
        assert np.array_equal(threshold_labels(*decode_hard(encode_hard(label[None], conf[None])), 0.95)[0],
                              threshold_labels(label[None], conf[None], 0.95)[0])


@FAST
@given(num=st.lists(st.integers(1, 64), min_size=2, max_size=5), k=st.integers(0, 4), which=st.integers(-1, 1))
def test_rectified_labels_keep_the_confidence_at_the_threshold(num, k, which):
    """Stage 1 (docs/method.md 2.1.6): pixels with max r < train_thred are ignored, so r exactly at the
    threshold is kept. Dyadic probabilities make r exact in float32."""
    total = sum(num)
    assume(total <= 256)
    soft = torch.tensor([n / 256.0 for n in num]).reshape(1, -1, 1, 1)
    weights = torch.ones_like(soft)
    r_max = max(num) / total
    top = int(np.argmax(num))
    threshold = [float(np.nextafter(np.float32(r_max), np.float32(0))), float(np.float32(r_max)),
                 float(np.nextafter(np.float32(r_max), np.float32(2)))][which + 1]
    label = rectify_pseudo_labels(soft, weights, threshold=threshold).item()
    r32 = float(np.float32(max(num) / 256.0) / np.float32(total / 256.0))
    assert label == (IGNORE if r32 < threshold else top)
    assert rectify_pseudo_labels(soft, weights, valid=torch.zeros(1, 1, 1, dtype=torch.bool)).item() == IGNORE
