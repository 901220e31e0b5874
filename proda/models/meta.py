"""What a checkpoint records about its model so that it can be used on its own (predict, evaluate, init)."""
from __future__ import annotations

from typing import Any

from ..config import Config
from ..data.readers import run_classes


def model_meta(cfg: Config) -> dict[str, Any]:
    """What a checkpoint needs to be used on its own: classes, palette, architecture, input normalisation."""
    return {
        "stage": cfg.stage,
        **run_classes(cfg).to_meta(),  # num_classes, class_names, palette
        "model": cfg.to_dict()["model"],
        "input": {"range": "[0,1] RGB", "mean": list(cfg.model.mean), "std": list(cfg.model.std),
                  "size": list(cfg.data.val_size) if cfg.data.val_size else None},
    }
