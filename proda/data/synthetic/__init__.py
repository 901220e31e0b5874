"""An embedded synthetic domain-shift benchmark: procedurally generated street scenes, "GTA5" -> "Cityscapes".

The real GTA5 -> Cityscapes setting needs ~60 GB of data and a GPU. This package draws a small stand-in that
runs the whole ProDA pipeline on a laptop CPU and shows the same kind of gap:

* **source** (``gta5/``): "rendered" scenes: flat, saturated colours, crisp edges, uniform lighting, little
  noise, large sidewalk slabs and clean asphalt; many cars and trucks, wide roads, a wide-angle camera;
* **target** (``cityscapes/``): the *same* scene grammar (geometry, layout, context, object shapes) seen
  through a systematic "real camera" transformation: moderate per-class colour shifts (the same on every
  image unless ``class_shift_spread`` varies their strength per image), a per-image colour cast, gamma and
  contrast change, low-frequency illumination and cast shadows, texture and sensor noise, blur; different
  materials (small paving tiles, patched asphalt, framed windows, leafier trees, muted car and clothing
  colours); a different object mix (more persons and bicycles, fewer cars and trucks), narrower roads, a
  lower horizon, a longer focal length and the ego-vehicle hood along the bottom edge.

The appearance change is a transformation of the source look, never a swap of class appearances, so
self-training on confident pseudo labels, prototype denoising and photometric-augmentation consistency can
recover much of the gap; photometric augmentation alone recovers only part of it (the materials and the
object mix need target data). Every knob lives in :class:`DomainStyle` (:data:`SOURCE_STYLE`,
:data:`TARGET_STYLE`); ``dataclasses.replace(TARGET_STYLE, ...)`` gives a variant, and ``write_benchmark``
records both styles in ``meta.json``. ``gap`` (0..2, :func:`target_style_at`; above 1 the change is
extrapolated) scales the appearance change between the domains; :data:`DEFAULT_GAP` is the calibrated default.

Files use the official layouts (see ``docs/datasets.md``), so the real readers load them unchanged:

* ``out/gta5/images/NNNNN.png`` (RGB) + ``out/gta5/labels/NNNNN.png``: 8-bit palette PNG, index = Cityscapes
  label id, palette = Cityscapes colours (as real GTA5 labels);
* ``out/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png`` +
  ``out/cityscapes/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png`` (8-bit grey,
  raw label ids).

Labels hold RAW Cityscapes label ids (7 road, 8 sidewalk, 11 building, ...), including ignored ones: 1 ego
vehicle (target), 4 static (bins, bollards, sign backs), 9 parking (target), 10 rail track (under trams).

Every image is drawn from its own generator seeded with ``(seed, domain, index)``: the same seed gives
byte-identical files, and changing a count never changes the images that both runs share. Scenes are drawn
in world units (1 = camera height) through a pinhole camera whose focal length is relative to the image
height, so any size works.

The modules, in the order an image is made: :mod:`.styles` (label ids, domain styles, base colours),
:mod:`.painter` (the camera and drawing primitives), :mod:`.scene_state`, :mod:`.objects` and :mod:`.scene`
(the street layout and its objects), :mod:`.appearance` (a domain's look), :mod:`.render` (one image) and
:mod:`.writer` (the benchmark's files).
"""
from .render import DEFAULT_SIZE, GENERATOR_VERSION, image_rng, render_scene
from .styles import (
    DEFAULT_GAP, GAP_FIELDS, LABEL_PALETTE, SOURCE_STYLE, TARGET_STYLE, DomainStyle, style_for, target_style_at,
)
from .styles import EGO, STATIC  # noqa: F401  (the ignored ids the tests look for; every id lives in .styles)
from .writer import (
    DEFAULT_N_SOURCE, DEFAULT_N_TARGET, DEFAULT_N_VAL, TRAIN_CITIES, VAL_CITIES, benchmark_files, benchmark_meta,
    cityscapes_stem, gta5_name, write_benchmark,
)

__all__ = [
    "DEFAULT_GAP", "DEFAULT_N_SOURCE", "DEFAULT_N_TARGET", "DEFAULT_N_VAL", "DEFAULT_SIZE", "DomainStyle", "GAP_FIELDS",
    "GENERATOR_VERSION",
    "LABEL_PALETTE", "SOURCE_STYLE", "TARGET_STYLE", "TRAIN_CITIES", "VAL_CITIES", "benchmark_files", "benchmark_meta",
    "cityscapes_stem", "gta5_name", "image_rng", "render_scene", "style_for", "target_style_at",
    "write_benchmark",
]
