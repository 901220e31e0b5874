"""One image of the benchmark: its own generator, the scene, then the domain's appearance."""
from __future__ import annotations

import numpy as np

from .appearance import _apply_style
from .scene import _Scene
from .styles import DOMAIN_CODES, SOURCE_STYLE, TARGET_STYLE, DomainStyle, style_for

GENERATOR_VERSION = 1
DEFAULT_SIZE = (192, 96)


def image_rng(seed: int, domain: str, index: int) -> np.random.Generator:
    """The generator of one image: depends only on (seed, domain, index)."""
    return np.random.default_rng([int(seed), DOMAIN_CODES[domain], int(index), GENERATOR_VERSION])


def render_scene(
    seed: int,
    domain: str,
    index: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    source_style: DomainStyle = SOURCE_STYLE,
    target_style: DomainStyle = TARGET_STYLE,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(HxWx3 uint8 RGB image, HxW uint8 raw Cityscapes label ids)``.

    ``domain`` is ``'source'``, ``'target_train'`` or ``'target_val'``; ``size`` is ``(W, H)``.
    """
    width, height = _check_size(size)
    style = style_for(domain, source_style, target_style)
    rng = image_rng(seed, domain, index)
    scene = _Scene(rng, width, height, style)
    scene.build()
    shadow = scene.shadow_mask() if style.shadows > 0 else None
    image = _apply_style(scene.p.img, scene.p.lbl, style, rng, shadow)
    return image, scene.p.lbl.copy()


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise ValueError(f"size must be at least 16x16, got {width}x{height}")
    return width, height

