"""Pin every label table against the official ids (cityscapesScripts labels.py, ProDA's valid-class lists).

The expected values are written out here by hand from the sources, not derived from proda.data.labels,
so a change to a table cannot silently change the test as well.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import write_gta5_label, write_synthia_label
from proda.data import labels as L
from proda.io import read_label_ids, read_synthia_label

# cityscapesScripts: label id -> trainId (255 = ignored), ids 0..33.
CITYSCAPES_TRAIN_ID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4,
    14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}
# ProDA's valid-class lists, in compact order.
CITYSCAPES_VALID = {
    19: [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33],
    16: [7, 8, 11, 12, 13, 17, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33],
    13: [7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33],
}
SYNTHIA_VALID = {
    19: [3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11],
    16: [3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11],
    13: [3, 4, 2, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11],
}
TO19 = {
    16: [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18],
    13: [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18],
}
NAMES_19 = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
PALETTE_19 = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def test_cityscapes_lut_19_matches_official_train_ids() -> None:
    lut = L.cityscapes_lut(19)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for label_id, train_id in CITYSCAPES_TRAIN_ID.items():
        assert lut[label_id] == train_id, label_id
    assert (lut[34:] == L.IGNORE_INDEX).all()


def test_license_plate_is_never_a_class() -> None:
    plate = [lab for lab in L.CITYSCAPES_LABELS if lab.name == "license plate"]
    assert len(plate) == 1 and plate[0].id == -1 and plate[0].ignore_in_eval
    assert "license plate" not in L.CLASSES_19
    assert L.cityscapes_lut(19)[np.uint8(-1 % 256)] == L.IGNORE_INDEX  # -1 cannot occur; its byte is ignored
    assert [lab.id for lab in L.CITYSCAPES_LABELS if lab.id >= 0] == list(range(34))


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_cityscapes_lut_protocols(num_classes: int) -> None:
    lut = L.cityscapes_lut(num_classes)
    expected = np.full(256, 255, dtype=np.uint8)
    for compact, label_id in enumerate(CITYSCAPES_VALID[num_classes]):
        expected[label_id] = compact
    np.testing.assert_array_equal(lut, expected)


def test_cityscapes_16_ignores_terrain_truck_train_and_13_also_wall_fence_pole() -> None:
    for label_id in (22, 27, 31):  # terrain, truck, train
        assert L.cityscapes_lut(16)[label_id] == 255
    for label_id in (12, 13, 17, 22, 27, 31):  # + wall, fence, pole
        assert L.cityscapes_lut(13)[label_id] == 255


def test_gta5_palette_index_is_the_cityscapes_id(tmp_path: Path) -> None:
    """GTA5 labels are palette PNGs whose index is the Cityscapes id; read as indices, mapped by the same LUT."""
    raw = np.arange(34, dtype=np.uint8).reshape(2, 17)
    write_gta5_label(tmp_path / "00001.png", raw)
    with Image.open(tmp_path / "00001.png") as image:
        assert image.mode == "P"
        assert tuple(image.getpalette()[23 * 3 : 24 * 3]) == (70, 130, 180)  # sky's colour at index 23
    ids = read_label_ids(tmp_path / "00001.png")
    np.testing.assert_array_equal(ids, raw)
    mapped = L.cityscapes_lut(19)[ids]
    assert [int(mapped.flat[i]) for i in range(34)] == [CITYSCAPES_TRAIN_ID[i] for i in range(34)]


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_synthia_lut_protocols(num_classes: int) -> None:
    lut = L.synthia_lut(num_classes)
    expected = np.full(256, 255, dtype=np.uint8)
    for compact, raw_id in enumerate(SYNTHIA_VALID[num_classes]):
        expected[raw_id] = compact
    np.testing.assert_array_equal(lut, expected)
    for raw_id in (0, 13, 14, 22):  # void, parking-slot, road-work, lanemarking
        assert lut[raw_id] == 255


def test_synthia_16_has_no_terrain_truck_train() -> None:
    lut = L.synthia_lut(16)
    for raw_id in (16, 18, 20):
        assert lut[raw_id] == 255
    assert sorted(set(lut[:23].tolist()) - {255}) == list(range(16))


def test_synthia_and_cityscapes_agree_on_classes() -> None:
    """The same compact id means the same class whichever dataset it came from."""
    names = {
        "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall", "fence": "fence",
        "pole": "pole", "traffic light": "traffic light", "traffic sign": "traffic sign",
        "vegetation": "vegetation", "terrain": "terrain", "sky": "sky", "person": "pedestrian",
        "rider": "rider", "car": "car", "truck": "truck", "bus": "bus", "train": "train",
        "motorcycle": "motorcycle", "bicycle": "bicycle",
    }
    for n in (19, 16, 13):
        for compact, raw_id in enumerate(SYNTHIA_VALID[n]):
            assert L.SYNTHIA_NAMES[raw_id] == names[L.class_names(n)[compact]]


def test_to19_and_13_in_16() -> None:
    assert list(L.TO19[16]) == TO19[16]
    assert list(L.TO19[13]) == TO19[13]
    assert L.INDICES_13_IN_16 == (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    assert [L.class_names(16)[i] for i in L.INDICES_13_IN_16] == list(L.class_names(13))


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_compact_to_cityscapes_id_round_trip(num_classes: int) -> None:
    to_id = L.compact_to_cityscapes_id(num_classes)
    assert to_id[:num_classes].tolist() == CITYSCAPES_VALID[num_classes]
    compact = np.arange(num_classes, dtype=np.uint8)
    np.testing.assert_array_equal(L.cityscapes_lut(num_classes)[to_id[compact]], compact)
    assert to_id[255] == 0  # ignore -> 'unlabeled'


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_compact_to_train_id(num_classes: int) -> None:
    lut = L.compact_to_train_id(num_classes)
    assert lut[:num_classes].tolist() == (list(range(19)) if num_classes == 19 else TO19[num_classes])
    assert lut[255] == 255


def test_class_names_and_palette() -> None:
    assert list(L.CLASSES_19) == NAMES_19
    assert [tuple(c) for c in L.PALETTE_19] == PALETTE_19
    assert tuple(L.palette(19)[NAMES_19.index("sky")]) == (70, 130, 180)  # not ProDA's (0, 130, 180)
    for n in (16, 13):
        to19 = TO19[n]
        assert list(L.class_names(n)) == [NAMES_19[t] for t in to19]
        assert L.palette(n).tolist() == [list(PALETTE_19[t]) for t in to19]
    assert L.palette(19).dtype == np.uint8 and L.palette(19).shape == (19, 3)


def test_colorize() -> None:
    label = np.array([[0, 10, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(L.colorize(label), [[(128, 64, 128), (70, 130, 180), (0, 0, 0)]])


def test_unsupported_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        L.cityscapes_lut(20)


def _raw_png_rgb16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG written byte by byte (filter 0, big-endian samples), independent of cv2 and PIL."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("writer", ["cv2", "raw"])
def test_synthia_16bit_label_pillow_pitfall(tmp_path: Path, writer: str) -> None:
    """Pillow reads 16-bit RGB PNGs as 8-bit high bytes, so every class id reads as 0; the proda reader does not."""
    classes = np.arange(1, 23, dtype=np.uint8).reshape(2, 11)
    instances = np.full(classes.shape, 513, dtype=np.uint16)
    path = tmp_path / "0000000.png"
    if writer == "cv2":
        write_synthia_label(path, classes, instances)
    else:  # pins the channel order: the class is the first (R) sample of each pixel in the file
        _raw_png_rgb16(path, np.stack([classes.astype(np.uint16), instances, np.zeros_like(instances)], -1))
    with Image.open(path) as image:
        pil_ids = np.asarray(image.convert("RGB"))[..., 0]
    assert not np.array_equal(pil_ids, classes)
    assert (pil_ids == 0).all()
    np.testing.assert_array_equal(read_synthia_label(path), classes)
