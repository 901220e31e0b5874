"""The strong view: RandAugmentMC's magnitudes, and exact alignment of carried maps with the strong image.

Alignment is checked two independent ways: (1) a weak crop made of constant-colour blocks, one per class,
whose strong image is decoded back into classes and compared with the carried one-hot map (nearest), at crop
and crop/4 resolution; (2) coordinate ramps pushed through the ORIGINAL's sequence of PIL ops (one resample per
op, float images, NaN fill) and compared with ramps carried bilinearly by :func:`warp_to_strong`, which checks
the single composed matrix (order, duplicates, PIL's half-pixel conventions) to within float error.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from proda.data.strong import (
    FIXMATCH_POOL,
    GEOMETRIC_OPS,
    PACKED_LEN,
    StrongTransform,
    labels_to_strong,
    pack_transforms,
    strong_view,
    unpack_transforms,
    warp_to_strong,
)

FAST = settings(max_examples=25, deadline=None)
GRAY = 127

# ------------------------------------------------------------------------------------------ helpers

_LEVELS = (10, 128, 245)
_COMBOS = [np.array((r, g, b)) for r in _LEVELS for g in _LEVELS for b in _LEVELS if (r, g, b) != (128, 128, 128)]
_COMBOS.sort(key=lambda c: -float(np.abs(c - GRAY).sum()))
PALETTE = np.stack(_COMBOS[:24]).astype(np.uint8)  # 24 colours, pairwise >= 117 apart, far from gray
GRAY_CLASS = len(PALETTE)


def block_crop(w: int, h: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A weak crop of constant-colour blocks (class = block index) and its label map."""
    cls = (np.arange(h)[:, None] // block) * (w // block) + np.arange(w)[None, :] // block
    return PALETTE[cls], cls


def decode(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette class (GRAY_CLASS for gray) and whether the colour is pure (not a blend)."""
    colours = np.concatenate([PALETTE, np.full((1, 3), GRAY, np.uint8)]).astype(np.int32)
    dist = np.abs(image[:, :, None, :].astype(np.int32) - colours[None, None]).sum(-1)
    return dist.argmin(-1), dist.min(-1) <= 3


def same_around(a: np.ndarray, r: int) -> np.ndarray:
    """True where every pixel within Chebyshev distance r has the same value (away from any boundary)."""
    h, w = a.shape
    p = np.pad(a, r, mode="edge")
    out = np.ones_like(a, dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= p[r + dy: r + dy + h, r + dx: r + dx + w] == a
    return out


def onehot(labels: np.ndarray, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), c).permute(2, 0, 1)[None].double()


def sample_positions(n: int, big: int) -> np.ndarray:
    """Pixel coordinates of the n samples of a map over big pixels (align_corners=True convention)."""
    return np.arange(n) * (big - 1) / max(n - 1, 1)


def no_photometric(image: np.ndarray, case: dict) -> tuple[np.ndarray, StrongTransform]:
    """A strong view from a test case: forced geometric ops, or a seeded random draw from the geometric pool."""
    rng = np.random.default_rng(case["seed"])
    if case["ops"] is None:
        return strong_view(image, rng, pool=GEOMETRIC_OPS, n_ops=case["n_ops"], cutout=case["cutout"])
    return strong_view(image, rng, ops=case["ops"], flip_p=float(case["flip"]), cutout=case["cutout"])


geo_op = st.tuples(st.sampled_from(GEOMETRIC_OPS), st.integers(1, 9), st.sampled_from([-1, 1]))
op_lists = st.one_of(
    st.lists(geo_op, min_size=0, max_size=2),  # RandAugmentMC(n=2)
    geo_op.map(lambda op: [op, op]),  # the same op drawn twice: both must count
    st.none(),  # a seeded random draw instead
)
cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "ops": op_lists,
    "n_ops": st.integers(1, 2),
    "flip": st.booleans(),
    "cutout": st.booleans(),
})


# ------------------------------------------------------------------------------------------ alignment


@FAST
@given(case=cases)
def test_carried_labels_land_on_the_strong_image_at_crop_resolution(case: dict) -> None:
    weak, labels = block_crop(96, 64, 16)
    strong, t = no_photometric(weak, case)
    carried, valid = warp_to_strong(onehot(labels, 24), [t])
    carried_cls, valid = carried[0].argmax(0).numpy(), valid[0].numpy()
    seen, pure = decode(strong)

    interior = same_around(seen, 2) & pure
    check = valid & interior
    assert check.mean() > 0.1  # the comparison is not vacuous
    assert np.array_equal(carried_cls[check], seen[check])
    assert not np.any(seen[check] == GRAY_CLASS)

    in_box = np.zeros_like(valid)
    if t.cutout is not None:
        x0, y0, x1, y1 = t.cutout
        in_box[y0:y1, x0:x1] = True
    assert not valid[in_box].any() and np.all(strong[in_box] == GRAY)
    _, uncut = warp_to_strong(torch.zeros(1, 1, 64, 96), [replace(t, cutout=None)])
    assert np.array_equal(valid, uncut[0].numpy() & ~in_box)  # the cutout masks its box, nothing more
    out_of_frame = ~valid & ~in_box
    deep = out_of_frame & same_around(out_of_frame, 2)  # well away from the frame edge
    assert np.all(strong[deep] == GRAY)
    # gray interiors of the image are exactly the invalid pixels, away from edges
    assert not np.any(valid & (seen == GRAY_CLASS) & same_around(seen, 2))


@FAST
@given(case=cases)
def test_carried_labels_land_on_the_strong_image_on_the_crop4_grid(case: dict) -> None:
    w, h = 192, 128
    weak, labels = block_crop(w, h, 32)
    strong, t = no_photometric(weak, case)
    xs, ys = sample_positions(w // 4, w), sample_positions(h // 4, h)
    low = labels[np.rint(ys).astype(int)][:, np.rint(xs).astype(int)]  # the class at each low-res sample
    carried = labels_to_strong(torch.from_numpy(low)[None].long(), [t], ignore_index=255)[0].numpy()
    _, valid = warp_to_strong(torch.zeros(1, 1, h // 4, w // 4), [t])
    valid = valid[0].numpy()

    seen, pure = decode(strong)
    rows, cols = np.rint(ys).astype(int), np.rint(xs).astype(int)
    # a nearest low-res sample can be ~3 weak pixels from the point; 6 strong pixels covers it after warping
    interior = (same_around(seen, 6) & pure)[rows][:, cols]
    seen_low = seen[rows][:, cols]
    check = valid & interior
    assert check.mean() > 0.05
    assert np.array_equal(carried[check], seen_low[check])
    assert np.all(carried[~valid] == 255) and np.all(carried[valid] < 24)
    if t.cutout is not None:
        x0, y0, x1, y1 = t.cutout
        in_box = ((xs[None, :] >= x0 - 0.5) & (xs[None, :] < x1 - 0.5)
                  & (ys[:, None] >= y0 - 0.5) & (ys[:, None] < y1 - 0.5))
        _, uncut = warp_to_strong(torch.zeros(1, 1, h // 4, w // 4), [replace(t, cutout=None)])
        assert np.array_equal(valid, uncut[0].numpy() & ~in_box)
        assert np.all(strong[rows][:, cols][in_box] == GRAY)


def _original_pil_sequence(field: np.ndarray, t: StrongTransform) -> np.ndarray:
    """The original's image path on a float image: flip, then each applied geometric op, one PIL resample each.

    The fill and the outer ring of every intermediate image are NaN, so every value that PIL's fill or its
    edge clamping touched, at any step, comes out NaN: what is left is exact interpolation of the ramp.
    """
    nan = float("nan")

    def ring_nan(img: Image.Image) -> Image.Image:
        a = np.array(img, dtype=np.float32)
        a[[0, -1]] = nan
        a[:, [0, -1]] = nan
        return Image.fromarray(a)

    img = ring_nan(Image.fromarray(field.astype(np.float32)))
    if t.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for op in t.ops:
        if not op.applied or op.name not in GEOMETRIC_OPS:
            continue
        v = op.value
        if op.name == "Rotate":
            img = img.rotate(v, resample=Image.BILINEAR, fillcolor=nan)
        else:
            data = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
                    "TranslateX": (1, 0, v, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v)}[op.name]
            img = img.transform(img.size, Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=nan)
        img = ring_nan(img)
    return np.asarray(img, dtype=np.float64)


def _bilinear(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a sampled at (x, y) pixel coordinates (NaN wherever a NaN pixel takes part)."""
    x0 = np.clip(np.floor(x).astype(int), 0, a.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, a.shape[0] - 2)
    fx, fy = x - x0, y - y0
    return ((a[y0, x0] * (1 - fx) + a[y0, x0 + 1] * fx) * (1 - fy)
            + (a[y0 + 1, x0] * (1 - fx) + a[y0 + 1, x0 + 1] * fx) * fy)


@FAST
@given(case=cases)
def test_single_warp_matches_the_originals_sequence_of_pil_ops(case: dict) -> None:
    w, h = 96, 64
    strong, t = no_photometric(np.zeros((h, w, 3), np.uint8), case)
    ramp_x, ramp_y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    ref_x, ref_y = _original_pil_sequence(ramp_x, t), _original_pil_sequence(ramp_y, t)
    # where the original's image has content, ours does too (it may keep more: it never crops in between)
    finite = np.isfinite(ref_x) & np.isfinite(ref_y)

    for mw, mh in ((w, h), (w // 4, h // 4)):
        xs, ys = sample_positions(mw, w), sample_positions(mh, h)
        ramps = torch.from_numpy(np.stack(np.meshgrid(xs, ys)))[None]  # each sample holds its weak-crop position
        carried, valid = warp_to_strong(ramps, [t], mode="bilinear")
        qx, qy = np.meshgrid(xs, ys)
        rx, ry = _bilinear(ref_x, qx, qy), _bilinear(ref_y, qx, qy)
        ok = np.isfinite(rx) & np.isfinite(ry)
        if mw == w:
            ok &= finite
        valid = valid[0].numpy()
        if t.cutout is None:
            assert np.all(valid[ok])
        check = ok & valid
        assert check.mean() > 0.1
        assert np.abs(carried[0, 0].numpy()[check] - rx[check]).max() < 2e-3
        assert np.abs(carried[0, 1].numpy()[check] - ry[check]).max() < 2e-3


def test_translate_x_moves_maps_by_exactly_the_image_shift() -> None:
    """Regression for the original's affine_sample, which scaled TranslateX by W/H (1.5x here, 1.75x at 896x512)."""
    w, h = 96, 64
    weak, _ = block_crop(w, h, 16)
    cols = np.broadcast_to(np.arange(w), (h, w))
    for sign in (1, -1):
        strong, tf = strong_view(weak, np.random.default_rng(0), ops=[("TranslateX", 5, sign)], flip_p=0.0,
                                 cutout=False)
        t = tf.ops[0].value
        assert t == sign * int(0.03 * 5 * w) == sign * 14
        moved = labels_to_strong(torch.from_numpy(cols.copy())[None].long(), [tf])[0].numpy()
        src = np.arange(w) + t  # PIL's (1, 0, t): strong column x shows weak column x + t
        inside = (src >= 0) & (src < w)
        assert np.all(moved[:, inside] == src[inside]) and np.all(moved[:, ~inside] == 255)
        assert np.array_equal(strong[:, inside], weak[:, src[inside]])  # the image moved by the same t
        buggy = np.rint(np.arange(w) + t * w / h)
        assert not np.array_equal(moved[0, inside], buggy[inside])
        # on the crop/4 grid too: every carried position is the strong position + t
        xs = sample_positions(w // 4, w)
        ramps = torch.from_numpy(np.broadcast_to(xs, (h // 4, w // 4)).copy())[None, None]
        carried, valid = warp_to_strong(ramps, [tf], mode="bilinear")
        xq = np.broadcast_to(xs, (h // 4, w // 4))
        v = valid[0].numpy()
        assert np.allclose(carried[0, 0].numpy()[v], np.clip(xq + t, 0, w - 1)[v])
        assert np.array_equal(v, np.broadcast_to((xq + t >= -0.5) & (xq + t < w - 0.5), v.shape))


def test_no_geometry_is_the_identity_at_any_resolution() -> None:
    weak, _ = block_crop(96, 64, 16)
    strong, t = strong_view(weak, np.random.default_rng(3), ops=[], flip_p=0.0, cutout=False)
    assert np.array_equal(strong, weak) and np.array_equal(t.matrix, np.eye(3)[:2]) and t.cutout is None
    for size in ((64, 96), (16, 24), (5, 7)):
        maps = torch.randn(2, 3, *size)
        out, valid = warp_to_strong(maps, [t, t], mode="bilinear")
        assert torch.allclose(out, maps, atol=1e-4) and bool(valid.all())  # float32 grid
        out, _ = warp_to_strong(maps, [t, t], mode="nearest")
        assert torch.equal(out, maps)


@pytest.mark.parametrize("size", [(64, 96), (16, 24)])
def test_valid_samples_never_blend_with_padding(size: tuple[int, int]) -> None:
    """Up to half a pixel outside the outer samples is still in frame: it takes the edge value, like the image."""
    weak, _ = block_crop(96, 64, 16)
    _, t = strong_view(weak, np.random.default_rng(0), ops=[("Rotate", 7), ("ShearY", 9)], cutout=False)
    out, valid = warp_to_strong(torch.full((1, 2, *size), 3.0), [t], mode="bilinear", fill=-1.0)
    assert bool((~valid).any()) and bool(valid.any())
    values = out.permute(0, 2, 3, 1)
    assert torch.allclose(values[valid], torch.tensor(3.0), atol=1e-5) and torch.all(values[~valid] == -1.0)


def test_flip_is_recorded_and_mirrors_image_and_maps() -> None:
    weak, labels = block_crop(96, 64, 16)
    strong, t = strong_view(weak, np.random.default_rng(0), ops=[], flip_p=1.0, cutout=False)
    assert t.flip and np.array_equal(strong, weak[:, ::-1])
    carried = labels_to_strong(torch.from_numpy(labels)[None].long(), [t])[0].numpy()
    assert np.array_equal(carried, labels[:, ::-1])
    _, t = strong_view(weak, np.random.default_rng(0), ops=[], flip_p=0.0, cutout=False)
    assert not t.flip


# ------------------------------------------------------------------------------------------ magnitudes


@pytest.mark.parametrize("v", range(1, 10))
def test_forced_magnitudes_follow_method_md(v: int) -> None:
    w, h = 96, 64
    image = (np.random.default_rng(v).random((h, w, 3)) * 255).astype(np.uint8)

    def value(name: str, sign: int = 1):
        _, t = strong_view(image, np.random.default_rng(0), ops=[(name, v, sign)], cutout=False)
        (op,) = t.ops
        assert op.name == name and op.v == v and op.applied
        return op.value

    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        assert value(name) == pytest.approx(0.09 * v + 0.05)
    assert value("Posterize") == [4, 4, 5, 5, 6, 6, 6, 7, 7][v - 1]  # int(0.4 v) + 4
    assert value("Solarize") == 256 - int(25.6 * v)
    for sign in (1, -1):
        assert value("Rotate", sign) == sign * 3 * v
        assert value("ShearX", sign) == pytest.approx(sign * 0.03 * v)
        assert value("ShearY", sign) == pytest.approx(sign * 0.03 * v)
        assert value("TranslateX", sign) == sign * int(round(0.03 * v * w, 9))
        assert value("TranslateY", sign) == sign * int(round(0.03 * v * h, 9))
    for name in ("AutoContrast", "Equalize", "Identity"):
        assert value(name) is None

    strong, t = strong_view(image, np.random.default_rng(0), ops=[("Posterize", v)], flip_p=0.0, cutout=False)
    bits = t.ops[0].value
    assert np.array_equal(strong, image & np.uint8((0xFF << (8 - bits)) & 0xFF))
    assert np.array_equal(t.matrix, np.eye(3)[:2])  # photometric ops leave the geometry alone


def test_photometric_ops_do_not_recolour_the_fill() -> None:
    """Photometric ops run before the single warp, so 'gray' always means 'no content' (cf. module docstring)."""
    image = np.full((64, 96, 3), 200, np.uint8)
    strong, t = strong_view(image, np.random.default_rng(0), ops=[("Rotate", 9), ("Brightness", 1), ("Solarize", 9)],
                            flip_p=0.0, cutout=False)
    _, valid = warp_to_strong(torch.zeros(1, 1, 64, 96), [t])
    out = ~valid[0].numpy()
    assert out[0, 0] and np.all(strong[0, 0] == GRAY)
    assert np.all(strong[out & same_around(out, 2)] == GRAY)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), w=st.integers(9, 120), h=st.integers(9, 120))
def test_cutout_is_always_a_clipped_square_of_side_min_over_3(seed: int, w: int, h: int) -> None:
    image = np.full((h, w, 3), 30, np.uint8)
    strong, t = strong_view(image, np.random.default_rng(seed), ops=[])
    side = min(w, h) // 3
    assert t.cutout is not None
    x0, y0, x1, y1 = t.cutout
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert x1 - x0 == side or x0 == 0 or x1 == w
    assert y1 - y0 == side or y0 == 0 or y1 == h
    assert x1 - x0 <= side and y1 - y0 <= side
    gray = np.all(strong == GRAY, axis=-1)
    assert gray[y0:y1, x0:x1].all() and gray.sum() == (x1 - x0) * (y1 - y0)


def test_random_draws_follow_randaugment_mc() -> None:
    rng = np.random.default_rng(0)
    image = (np.random.default_rng(1).random((12, 16, 3)) * 255).astype(np.uint8)
    ops, flips = [], []
    for _ in range(300):
        _, t = strong_view(image, rng)
        assert len(t.ops) == 2 and t.cutout is not None
        ops.extend(t.ops)
        flips.append(t.flip)
    assert {op.name for op in ops} == set(FIXMATCH_POOL)  # drawn with replacement from the whole pool
    assert {op.v for op in ops} == set(range(1, 10))
    assert 0.42 < np.mean([op.applied for op in ops]) < 0.58
    assert 0.4 < np.mean(flips) < 0.6
    assert any(t_ops[0].name == t_ops[1].name for t_ops in zip(ops[::2], ops[1::2]))
    geometric = [op for op in ops if op.name in GEOMETRIC_OPS]
    assert {np.sign(op.value) for op in geometric if op.value != 0} == {-1.0, 1.0}


# ------------------------------------------------------------------------------------------ packing, batching


@FAST
@given(case=cases)
def test_tensor_round_trip_and_determinism(case: dict) -> None:
    image = (np.random.default_rng(5).random((32, 48, 3)) * 255).astype(np.uint8)
    a_img, a = strong_view(image, np.random.default_rng(case["seed"]), ops=case["ops"], cutout=case["cutout"])
    b_img, b = strong_view(image, np.random.default_rng(case["seed"]), ops=case["ops"], cutout=case["cutout"])
    assert np.array_equal(a_img, b_img) and a == b

    packed = a.to_tensor()
    assert packed.shape == (PACKED_LEN,) and packed.dtype == torch.float64
    back = StrongTransform.from_tensor(packed)
    assert back.size == a.size and back.cutout == a.cutout and back.flip == a.flip and back.ops == ()
    assert np.array_equal(back.matrix, a.matrix)
    assert unpack_transforms(pack_transforms([a, a])) == [back, back]


def test_batched_warp_equals_per_sample_warp() -> None:
    weak, _ = block_crop(96, 64, 16)
    transforms = [strong_view(weak, np.random.default_rng(s), pool=GEOMETRIC_OPS)[1] for s in range(4)]
    batch = torch.utils.data.default_collate([t.to_tensor() for t in transforms])  # what a DataLoader gives
    assert batch.shape == (4, PACKED_LEN)
    for size in ((64, 96), (16, 24)):
        maps = torch.randn(4, 5, *size)
        for mode in ("nearest", "bilinear"):
            out, valid = warp_to_strong(maps, batch, mode=mode, fill=-1.0)
            out_list, valid_list = warp_to_strong(maps, transforms, mode=mode, fill=-1.0)
            assert torch.equal(out, out_list) and torch.equal(valid, valid_list)
            for i, t in enumerate(transforms):
                one, one_valid = warp_to_strong(maps[i: i + 1], [t], mode=mode, fill=-1.0)
                assert torch.equal(out[i: i + 1], one) and torch.equal(valid[i: i + 1], one_valid)
            assert torch.all(out.permute(0, 2, 3, 1)[~valid] == -1.0)
    labels = torch.randint(0, 19, (4, 16, 24))
    assert torch.equal(
        labels_to_strong(labels, batch), torch.cat([labels_to_strong(labels[i: i + 1], [t])
                                                    for i, t in enumerate(transforms)])
    )
    with pytest.raises(ValueError):
        warp_to_strong(torch.zeros(3, 1, 8, 8), batch)
