"""Label tables of every dataset proda reads, in one place.

Everything that turns a raw label value into a training id (or back) goes through the lookup tables
built here, so the conventions are pinned once:

* Cityscapes label ids 0..33 (GTA5 uses the same ids as palette indices) -> 19 trainIds, as in
  ``cityscapesscripts/helpers/labels.py``;
* SYNTHIA-RAND-CITYSCAPES raw class ids 0..22 (first channel of the 16-bit label PNG) -> the same classes;
* the 16-class protocol (SYNTHIA, Cityscapes GT of terrain/truck/train ignored) and the 13-class subset
  (wall, fence and pole dropped as well).

Compact ids are 0..C-1 in every protocol; everything else maps to :data:`IGNORE_INDEX` (255).

A run, a model and a report do not need to know where their classes come from: they take a
:class:`LabelSpace` (names, palette, ignore index), which every dataset of :mod:`proda.data.registry`
describes itself with. ``class_names(n)`` / ``palette(n)`` remain for the 19/16/13 Cityscapes protocols.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

IGNORE_INDEX = 255
SUPPORTED_NUM_CLASSES = (19, 16, 13)
# Compact ids must stay below 254 (the readers' marker of an invalid raw value) and 255 (ignore).
MAX_CLASSES = 254


@dataclass(frozen=True)
class CityscapesLabel:
    id: int
    name: str
    train_id: int  # 255 = not evaluated, -1 = license plate (never drawn)
    ignore_in_eval: bool
    color: tuple[int, int, int]


# Official table (cityscapesscripts/helpers/labels.py); sky is (70, 130, 180).
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel(0, "unlabeled", 255, True, (0, 0, 0)),
    CityscapesLabel(1, "ego vehicle", 255, True, (0, 0, 0)),
    CityscapesLabel(2, "rectification border", 255, True, (0, 0, 0)),
    CityscapesLabel(3, "out of roi", 255, True, (0, 0, 0)),
    CityscapesLabel(4, "static", 255, True, (0, 0, 0)),
    CityscapesLabel(5, "dynamic", 255, True, (111, 74, 0)),
    CityscapesLabel(6, "ground", 255, True, (81, 0, 81)),
    CityscapesLabel(7, "road", 0, False, (128, 64, 128)),
    CityscapesLabel(8, "sidewalk", 1, False, (244, 35, 232)),
    CityscapesLabel(9, "parking", 255, True, (250, 170, 160)),
    CityscapesLabel(10, "rail track", 255, True, (230, 150, 140)),
    CityscapesLabel(11, "building", 2, False, (70, 70, 70)),
    CityscapesLabel(12, "wall", 3, False, (102, 102, 156)),
    CityscapesLabel(13, "fence", 4, False, (190, 153, 153)),
    CityscapesLabel(14, "guard rail", 255, True, (180, 165, 180)),
    CityscapesLabel(15, "bridge", 255, True, (150, 100, 100)),
    CityscapesLabel(16, "tunnel", 255, True, (150, 120, 90)),
    CityscapesLabel(17, "pole", 5, False, (153, 153, 153)),
    CityscapesLabel(18, "polegroup", 255, True, (153, 153, 153)),
    CityscapesLabel(19, "traffic light", 6, False, (250, 170, 30)),
    CityscapesLabel(20, "traffic sign", 7, False, (220, 220, 0)),
    CityscapesLabel(21, "vegetation", 8, False, (107, 142, 35)),
    CityscapesLabel(22, "terrain", 9, False, (152, 251, 152)),
    CityscapesLabel(23, "sky", 10, False, (70, 130, 180)),
    CityscapesLabel(24, "person", 11, False, (220, 20, 60)),
    CityscapesLabel(25, "rider", 12, False, (255, 0, 0)),
    CityscapesLabel(26, "car", 13, False, (0, 0, 142)),
    CityscapesLabel(27, "truck", 14, False, (0, 0, 70)),
    CityscapesLabel(28, "bus", 15, False, (0, 60, 100)),
    CityscapesLabel(29, "caravan", 255, True, (0, 0, 90)),
    CityscapesLabel(30, "trailer", 255, True, (0, 0, 110)),
    CityscapesLabel(31, "train", 16, False, (0, 80, 100)),
    CityscapesLabel(32, "motorcycle", 17, False, (0, 0, 230)),
    CityscapesLabel(33, "bicycle", 18, False, (119, 11, 32)),
    CityscapesLabel(-1, "license plate", -1, True, (0, 0, 142)),
)

# The 19 evaluated classes in trainId order.
CLASSES_19: tuple[str, ...] = tuple(
    lab.name for lab in sorted((l for l in CITYSCAPES_LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id)
)
PALETTE_19: tuple[tuple[int, int, int], ...] = tuple(
    lab.color for lab in sorted((l for l in CITYSCAPES_LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id)
)
# Cityscapes label id of each of the 19 trainIds.
CITYSCAPES_IDS_19: tuple[int, ...] = tuple(
    lab.id for lab in sorted((l for l in CITYSCAPES_LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id)
)

# Which of the 19 trainIds each protocol keeps, in compact order ("to19" in the original code).
TO19: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),  # drops terrain, truck, train
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),  # also drops wall, fence, pole
}

# SYNTHIA-RAND-CITYSCAPES raw class id of each of the 19 trainIds (terrain/truck/train have no pixels there).
SYNTHIA_IDS_19: tuple[int, ...] = (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11)
SYNTHIA_NAMES: dict[int, str] = {
    0: "void", 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
    8: "car", 9: "traffic sign", 10: "pedestrian", 11: "bicycle", 12: "motorcycle", 13: "parking-slot",
    14: "road-work", 15: "traffic light", 16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train",
    21: "wall", 22: "lanemarking",
}
SYNTHIA_MAX_ID = 22
CITYSCAPES_MAX_ID = 33


def check_num_classes(num_classes: int) -> int:
    if num_classes not in SUPPORTED_NUM_CLASSES:
        raise ValueError(f"num_classes must be one of {SUPPORTED_NUM_CLASSES}, got {num_classes}")
    return num_classes


def class_names(num_classes: int) -> tuple[str, ...]:
    """Class names of a protocol, in compact-id order."""
    return tuple(CLASSES_19[t] for t in TO19[check_num_classes(num_classes)])


def palette(num_classes: int) -> np.ndarray:
    """[C, 3] uint8 colours of a protocol, in compact-id order (official Cityscapes colours)."""
    return np.array([PALETTE_19[t] for t in TO19[check_num_classes(num_classes)]], dtype=np.uint8)


def _lut_from_raw_ids(raw_ids_19: tuple[int, ...], num_classes: int) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for compact, train_id in enumerate(TO19[check_num_classes(num_classes)]):
        lut[raw_ids_19[train_id]] = compact
    return lut


def cityscapes_lut(num_classes: int = 19) -> np.ndarray:
    """uint8[256]: Cityscapes label id (also the GTA5 palette index) -> compact id or 255."""
    return _lut_from_raw_ids(CITYSCAPES_IDS_19, num_classes)


def synthia_lut(num_classes: int = 16) -> np.ndarray:
    """uint8[256]: SYNTHIA raw class id -> compact id or 255 (ids 0, 13, 14, 22 are always ignored)."""
    return _lut_from_raw_ids(SYNTHIA_IDS_19, num_classes)


def compact_to_cityscapes_id(num_classes: int = 19) -> np.ndarray:
    """uint8[256]: compact id -> Cityscapes label id, for submissions; 255 (ignore) -> 0 'unlabeled'."""
    lut = np.zeros(256, dtype=np.uint8)
    for compact, train_id in enumerate(TO19[check_num_classes(num_classes)]):
        lut[compact] = CITYSCAPES_IDS_19[train_id]
    return lut


def compact_to_train_id(num_classes: int) -> np.ndarray:
    """uint8[256]: compact id of a protocol -> 19-class trainId (255 stays 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for compact, train_id in enumerate(TO19[check_num_classes(num_classes)]):
        lut[compact] = train_id
    return lut


def colorize(label: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """HxW compact ids -> HxWx3 uint8 colours; ignored pixels are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    return table[np.asarray(label, dtype=np.uint8)]


# The 13-class figure of a 16-class model: the mean over these compact-16 indices.
INDICES_13_IN_16: tuple[int, ...] = tuple(TO19[16].index(t) for t in TO19[13])


@dataclass(frozen=True)
class LabelSpace:
    """The classes a label map, a model or a report speaks of: names in compact-id order, one RGB colour
    each, and the ignore value (never a class). Two spaces describe the same classes when their names match,
    whatever the datasets they come from; :meth:`lut_to` maps one onto another by name.
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))
        if not 2 <= len(self.names) <= MAX_CLASSES:
            raise ConfigError(f"a class list needs 2 to {MAX_CLASSES} classes, got {len(self.names)}")
        doubles = sorted({n for n in self.names if self.names.count(n) > 1})
        if doubles:
            raise ConfigError(f"class names must be unique; repeated: {', '.join(doubles)}")
        if len(self.palette) != len(self.names):
            raise ConfigError(f"{len(self.palette)} palette colours for {len(self.names)} classes")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise ConfigError("palette colours must be [R, G, B] with values 0..255")

    @classmethod
    def cityscapes(cls, num_classes: int = 19) -> "LabelSpace":
        """The 19-class Cityscapes protocol, or its 16/13-class subsets."""
        return cls(class_names(num_classes), tuple(map(tuple, palette(num_classes).tolist())))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self) -> np.ndarray:
        """[C, 3] uint8 colours in compact-id order."""
        return np.array(self.palette, dtype=np.uint8).reshape(-1, 3)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """HxW compact ids -> HxWx3 uint8 colours; ignored pixels are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.palette_array()
        return table[np.asarray(label, dtype=np.uint8)]

    def subset(self, names: tuple[str, ...] | list[str]) -> "LabelSpace":
        """The classes ``names`` (each must be one of ours), in the order given."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ConfigError(f"classes {missing} are not in {list(self.names)}")
        return LabelSpace(tuple(names), tuple(self.palette[self.names.index(n)] for n in names), self.ignore_index)

    def missing_from(self, other: "LabelSpace") -> list[str]:
        """Our class names that ``other`` lacks (what a reader of ``other`` could never label)."""
        return [n for n in self.names if n not in other.names]

    def lut_to(self, other: "LabelSpace") -> np.ndarray:
        """uint8[256]: our compact id -> the id of the same name in ``other`` (absent there, or ignore -> 255)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, name in enumerate(self.names):
            if name in other.names:
                lut[i] = other.names.index(name)
        return lut

    def to_meta(self) -> dict:
        """What a checkpoint's meta stores of the classes (``proda predict`` reads it back)."""
        return {"num_classes": self.num_classes, "class_names": list(self.names),
                "palette": [list(c) for c in self.palette]}
