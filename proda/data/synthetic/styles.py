"""Domain styles of the synthetic benchmark: the label ids the scenes draw, every knob that differs between the
"rendered" source and the "real camera" target (:class:`DomainStyle`), and the base colours both domains share.

The scene grammar is the same in both domains; a style only changes how often things occur, their materials and
how the finished image looks. ``dataclasses.replace(TARGET_STYLE, ...)`` gives a variant.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..labels import CITYSCAPES_LABELS

# Domain codes that seed each image's generator together with the benchmark seed and the index.
DOMAIN_CODES = {"source": 0, "target_train": 1, "target_val": 2}

_ID = {lab.name: lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0}
ROAD, SIDEWALK, BUILDING, WALL, FENCE = _ID["road"], _ID["sidewalk"], _ID["building"], _ID["wall"], _ID["fence"]
POLE, LIGHT, SIGN, VEGETATION, TERRAIN = _ID["pole"], _ID["traffic light"], _ID["traffic sign"], _ID["vegetation"], _ID["terrain"]
SKY, PERSON, RIDER, CAR, TRUCK, BUS = _ID["sky"], _ID["person"], _ID["rider"], _ID["car"], _ID["truck"], _ID["bus"]
TRAIN, MOTORCYCLE, BICYCLE = _ID["train"], _ID["motorcycle"], _ID["bicycle"]
UNLABELED, EGO, STATIC, PARKING, RAIL = _ID["unlabeled"], _ID["ego vehicle"], _ID["static"], _ID["parking"], _ID["rail track"]

# Palette of the GTA5-style label PNGs: index = Cityscapes label id, colour = its Cityscapes colour.
LABEL_PALETTE = np.zeros((max(_ID.values()) + 1, 3), dtype=np.uint8)
for _lab in CITYSCAPES_LABELS:
    if _lab.id >= 0:
        LABEL_PALETTE[_lab.id] = _lab.color

_Colour = tuple[float, float, float]
_ClassShift = tuple[int, float, float, float, float]  # (label id, R gain, G gain, B gain, saturation factor)


@dataclass(frozen=True)
class DomainStyle:
    """Everything that differs between the two domains. Ranges are ``(low, high)``, sampled uniformly per image.

    World units: 1 = camera height (about 1.5 m): a lane is ~2.3, a car 1.2 wide and 1 high, a person 1.15.
    """

    name: str
    # ------------------------------------------------------------------ camera and layout
    horizon: tuple[float, float]  # horizon height, as a fraction of the image height from the top
    focal: tuple[float, float]  # focal length in image heights (1.0 = 90 degree horizontal FOV at 2:1)
    lanes: tuple[int, int]  # number of road lanes (inclusive range)
    lane_width: tuple[float, float]  # world units
    sidewalk_width: tuple[float, float]  # world units, each side
    verge_prob: float  # chance of a terrain (grass) strip between sidewalk and facades, per side
    building_prob: float  # chance that a facade segment is a building (else wall / fence / hedge / open field)
    max_depth: float  # objects stand up to this depth (world units; pedestrians and two-wheelers up to 0.7x)
    # ------------------------------------------------------------------ object mix: expected count per image (Poisson)
    cars: float  # moving cars in the lanes
    parked_cars: float  # cars parked along the curbs
    trucks: float
    buses: float
    trains: float  # trams (probability of one per image)
    persons: float  # pedestrians, mostly on sidewalks, some crossing
    cyclists: float  # riders on bicycles
    motorcyclists: float  # riders on motorcycles
    bicycles: float  # parked bicycles (no rider)
    motorcycles: float  # parked motorcycles (no rider)
    poles: float  # poles along the curbs; each may carry lights and signs
    light_prob: float  # chance that a pole carries a traffic light
    sign_prob: float  # chance that a pole carries a traffic sign
    trees: float
    statics: float  # bins, bollards, benches (label 4 "static", ignored in evaluation)
    ego_vehicle: float  # chance of the ego-vehicle hood (label 1) at the bottom edge
    parking_prob: float  # chance of a parking bay (label 9, ignored) along a curb
    # ------------------------------------------------------------------ materials (drawn into the scene, label unchanged)
    paving: float  # chance that the sidewalks are paved with small tiles (fine grid) instead of large slabs
    road_patches: float  # expected repaired-asphalt patches and cracks per image
    facade_detail: float  # chance that a building has framed windows and balconies
    foliage_detail: float  # leaf blobs per tree crown / hedge, relative to the source's few large blobs
    muted_paint: float  # chance that a car, truck, bus or clothing colour comes from a muted grey/black/white palette
    # ------------------------------------------------------------------ appearance
    saturation: float  # global saturation factor (> 1: the saturated "rendered" look)
    class_shift: tuple[_ClassShift, ...]  # systematic per-class colour transform (RGB gains, then saturation)
    # How much the class shift's strength varies between images: per image and class it is scaled by a factor
    # drawn uniformly from [1 - spread, 1 + spread] (0: the same shift on every image, as a single transform).
    class_shift_spread: float
    instance_jitter: float  # std of per-instance colour gain: colour alone is never a perfect cue
    cast: _Colour  # mean per-image RGB gain (global colour cast)
    cast_jitter: float  # std of the per-image, per-channel gain around ``cast``
    gamma: tuple[float, float]  # per-image gamma (out = in ** gamma, in [0, 1])
    contrast: tuple[float, float]  # per-image contrast factor around the image mean (1 = unchanged)
    brightness: tuple[float, float]  # per-image brightness gain
    illumination: float  # amplitude (log gain) of a smooth random illumination field
    shadows: float  # expected number of cast shadows (dark ground polygons) per image
    shadow_strength: tuple[float, float]  # brightness factor inside a shadow
    texture: float  # amplitude of the multiplicative texture noise (scaled per class)
    texture_scale: float  # correlation length of the texture noise, as a fraction of the image height
    blur: tuple[float, float]  # Gaussian blur sigma, as a fraction of the image height
    noise: float  # std of the additive sensor noise, in 0..255 levels
    edge_soften: bool  # anti-aliased edges (False: crisp "rendered" edges)


SOURCE_STYLE = DomainStyle(
    name="source",
    horizon=(0.36, 0.48),
    focal=(0.95, 1.15),
    lanes=(2, 4),
    lane_width=(2.1, 2.6),
    sidewalk_width=(1.0, 2.2),
    verge_prob=0.25,
    building_prob=0.6,
    max_depth=28.0,
    cars=4.0,
    parked_cars=1.0,
    trucks=1.0,
    buses=0.4,
    trains=0.25,
    persons=2.0,
    cyclists=0.35,
    motorcyclists=0.6,
    bicycles=0.3,
    motorcycles=0.4,
    poles=4.0,
    light_prob=0.35,
    sign_prob=0.45,
    trees=3.0,
    statics=1.0,
    ego_vehicle=0.0,
    parking_prob=0.0,
    paving=0.1,
    road_patches=0.3,
    facade_detail=0.15,
    foliage_detail=1.0,
    muted_paint=0.25,
    saturation=1.2,
    class_shift=(),
    class_shift_spread=0.0,
    instance_jitter=0.08,
    cast=(1.0, 1.0, 1.0),
    cast_jitter=0.02,
    gamma=(1.0, 1.0),
    contrast=(1.0, 1.0),
    brightness=(0.97, 1.03),
    illumination=0.0,
    shadows=0.0,
    shadow_strength=(1.0, 1.0),
    texture=0.05,
    texture_scale=0.02,
    blur=(0.0, 0.0),
    noise=1.5,
    edge_soften=False,
)

TARGET_STYLE = DomainStyle(
    name="target",
    horizon=(0.40, 0.52),
    focal=(1.1, 1.35),
    lanes=(1, 3),
    lane_width=(1.9, 2.3),
    sidewalk_width=(1.4, 2.8),
    verge_prob=0.35,
    building_prob=0.55,
    max_depth=24.0,
    cars=2.0,
    parked_cars=2.0,
    trucks=0.5,
    buses=0.3,
    trains=0.25,
    persons=5.0,
    cyclists=1.2,
    motorcyclists=0.4,
    bicycles=1.2,
    motorcycles=0.4,
    poles=4.5,
    light_prob=0.4,
    sign_prob=0.5,
    trees=3.5,
    statics=1.5,
    ego_vehicle=0.9,
    parking_prob=0.3,
    paving=0.9,
    road_patches=3.0,
    facade_detail=0.8,
    foliage_detail=3.0,
    muted_paint=0.7,
    saturation=0.9,
    class_shift=(
        (ROAD, 1.08, 1.06, 1.03, 0.7),  # lighter, slightly warm asphalt
        (SIDEWALK, 0.94, 0.96, 1.0, 0.7),
        (BUILDING, 0.96, 0.98, 1.04, 0.7),  # greyer, bluish facades
        (WALL, 1.0, 0.99, 0.96, 0.7),
        (FENCE, 0.96, 0.96, 0.96, 0.7),
        (POLE, 0.93, 0.93, 0.96, 0.8),
        (SIGN, 1.0, 0.96, 0.9, 0.85),
        (VEGETATION, 1.07, 0.96, 0.8, 0.9),  # olive foliage
        (TERRAIN, 1.07, 0.96, 0.86, 0.85),  # browner grass
        (SKY, 1.1, 1.07, 1.0, 0.55),  # hazy, whitish sky
        (PERSON, 0.9, 0.9, 0.93, 0.8),
        (RIDER, 0.9, 0.9, 0.93, 0.8),
        (CAR, 0.96, 0.96, 1.0, 0.8),
        (TRUCK, 0.96, 0.96, 1.0, 0.8),
        (BUS, 0.96, 0.96, 1.0, 0.8),
        (TRAIN, 0.96, 0.96, 1.0, 0.8),
        (MOTORCYCLE, 0.93, 0.93, 0.96, 0.8),
        (BICYCLE, 0.93, 0.93, 0.96, 0.8),
    ),
    # 0: one shift per class on every image. A strength varying from 0 to 2x per image (spread 1) left the
    # paper's ablation where it was (README "A class shift that varies per image does not remove the sink").
    class_shift_spread=0.0,
    instance_jitter=0.1,
    cast=(0.985, 1.015, 0.965),
    cast_jitter=0.05,
    gamma=(0.86, 1.2),
    contrast=(0.75, 0.93),
    brightness=(0.85, 1.11),
    illumination=0.18,
    shadows=0.85,
    shadow_strength=(0.65, 0.86),
    texture=0.1,
    texture_scale=0.02,
    blur=(0.003, 0.007),
    noise=3.25,
    edge_soften=True,
)


#: The knobs that make up the benchmark's domain gap in appearance: materials and the camera's look. The camera
#: geometry, the layout and the object mix are not among them: the target keeps its own content at every gap,
#: as Cityscapes differs from GTA5 in content as well as in look.
GAP_FIELDS = (
    "paving", "road_patches", "facade_detail", "foliage_detail", "muted_paint", "saturation", "class_shift",
    "instance_jitter", "cast", "cast_jitter", "gamma", "contrast", "brightness", "illumination", "shadows",
    "shadow_strength", "texture", "texture_scale", "blur", "noise", "edge_soften",
)

#: The gap of the default benchmark (``proda synth``, ``proda demo``): the share of the target's appearance
#: change that is applied. Calibrated so that source-only / oracle is about 0.55, the ratio of DeepLab-v2 on
#: GTA5 -> Cityscapes (README, "Calibrating the benchmark").
DEFAULT_GAP = 0.9


def _blend(source, target, gap: float):
    """gap * target + (1 - gap) * source, for a number or a tuple of numbers (exact at gap 0 and 1)."""
    if isinstance(target, tuple):
        return tuple(_blend(s, t, gap) for s, t in zip(source, target))
    return gap * target + (1.0 - gap) * source


#: Knobs that are chances (kept in [0, 1] when a gap beyond 1 extrapolates them).
_CHANCE_FIELDS = frozenset({"paving", "facade_detail", "muted_paint"})
#: The largest gap: beyond 1 the appearance change is extrapolated (e.g. 1.2: 20 % more of every change).
MAX_GAP = 2.0


def _clamped(name: str, value):
    """A blended knob kept valid: chances in [0, 1], every other number at least 0 (no-ops for gaps 0..1,
    whose values lie between two valid styles')."""
    if isinstance(value, tuple):
        return tuple(_clamped(name, v) for v in value)
    return min(max(value, 0.0), 1.0) if name in _CHANCE_FIELDS else max(value, 0.0)


def blend_knob(name: str, source, target, share: float):
    """One numeric knob (or tuple of numbers) of :data:`GAP_FIELDS` at ``share`` of the source -> target change,
    extrapolated above 1 and kept valid (chances in [0, 1], nothing below 0)."""
    return _clamped(name, _blend(source, target, share))


def target_style_at(gap: float, source: DomainStyle = SOURCE_STYLE, target: DomainStyle = TARGET_STYLE) -> DomainStyle:
    """``target`` with its appearance (every knob of :data:`GAP_FIELDS`) moved towards ``source``'s:
    ``gap * target + (1 - gap) * source`` per knob. ``gap`` 1 is ``target`` itself, 0 the source's look on the
    target's content (camera, layout, object mix); a gap above 1 (up to :data:`MAX_GAP`) extrapolates every
    change, with chances kept at most 1 and nothing below 0. A per-class colour shift that one style lacks
    counts as no shift (gains 1); the anti-aliased edges are the target's from gap 0.5 on."""
    gap = float(gap)
    if not 0.0 <= gap <= MAX_GAP:
        raise ValueError(f"gap must be in [0, {MAX_GAP:g}], got {gap}")
    if gap == 1.0:
        return target
    values = {}
    for name in GAP_FIELDS:
        s, t = getattr(source, name), getattr(target, name)
        if name == "class_shift":
            s_by_id, t_by_id = {c[0]: c[1:] for c in s}, {c[0]: c[1:] for c in t}
            ids = sorted(set(s_by_id) | set(t_by_id))
            no_shift = (1.0,) * 4
            values[name] = tuple((i, *blend_knob(name, s_by_id.get(i, no_shift), t_by_id.get(i, no_shift), gap))
                                 for i in ids)
        elif isinstance(t, bool):
            values[name] = t if gap >= 0.5 else s
        else:
            values[name] = blend_knob(name, s, t, gap)
    return replace(target, **values)


def style_for(domain: str, source_style: DomainStyle = SOURCE_STYLE, target_style: DomainStyle = TARGET_STYLE) -> DomainStyle:
    if domain not in DOMAIN_CODES:
        raise ValueError(f"domain must be one of {list(DOMAIN_CODES)}, got {domain!r}")
    return source_style if domain == "source" else target_style


# ---------------------------------------------------------------------------------------------- materials
# Shared by both domains (before the style transformation): lists of base colours, one picked per instance.
_CAR_PAINTS: tuple[_Colour, ...] = (
    (190, 30, 30), (30, 60, 160), (225, 225, 225), (35, 35, 38), (150, 152, 158), (30, 90, 50),
    (220, 180, 40), (110, 20, 30), (90, 110, 150), (200, 200, 190), (80, 80, 85),
)
_TRUCK_BOXES: tuple[_Colour, ...] = ((230, 230, 230), (200, 200, 205), (60, 90, 160), (180, 40, 40), (230, 200, 60), (90, 120, 80))
_BUS_PAINTS: tuple[_Colour, ...] = ((200, 40, 40), (230, 190, 40), (40, 80, 170), (235, 235, 235), (60, 140, 90))
_TRAIN_PAINTS: tuple[_Colour, ...] = ((235, 235, 230), (230, 200, 50), (190, 40, 45), (60, 90, 140))
_BUILDING_PAINTS: tuple[_Colour, ...] = (
    (180, 160, 130), (150, 80, 60), (130, 130, 135), (200, 190, 170), (110, 100, 90), (170, 120, 90), (150, 150, 160),
)
_WALL_PAINTS: tuple[_Colour, ...] = ((150, 150, 145), (130, 120, 110), (175, 165, 150), (120, 125, 130))
_FENCE_PAINTS: tuple[_Colour, ...] = ((120, 120, 125), (140, 100, 60), (90, 110, 90), (170, 170, 165))
_POLE_PAINTS: tuple[_Colour, ...] = ((130, 130, 135), (70, 75, 70), (160, 160, 160), (45, 60, 50))
_GREENS: tuple[_Colour, ...] = ((60, 110, 40), (45, 95, 35), (80, 125, 50), (55, 100, 60))
_TERRAINS: tuple[_Colour, ...] = ((110, 150, 60), (125, 145, 70), (140, 120, 80), (95, 135, 55))
_SHIRTS: tuple[_Colour, ...] = (
    (200, 40, 40), (40, 60, 150), (230, 230, 230), (30, 30, 30), (60, 130, 70), (220, 180, 50), (120, 60, 140),
    (150, 150, 150), (200, 110, 40), (90, 60, 40),
)
_TROUSERS: tuple[_Colour, ...] = ((40, 45, 70), (30, 30, 30), (90, 80, 70), (60, 60, 65), (150, 130, 100), (40, 60, 110))
_SKINS: tuple[_Colour, ...] = ((230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50))
_MUTED: tuple[_Colour, ...] = ((40, 40, 42), (90, 90, 92), (150, 150, 152), (200, 200, 198), (235, 235, 232), (70, 60, 55))
_GLASS: _Colour = (45, 55, 70)
_TYRE: _Colour = (25, 25, 28)
