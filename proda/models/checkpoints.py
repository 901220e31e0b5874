"""Loading trained networks from checkpoint files into a ready model plus what it needs to be used."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..config import ModelConfig, _build
from ..errors import CheckpointError
from ..engine.checkpoint import load_checkpoint
from .build import build_model
from .deeplab import DeepLabV2


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error lists the missing and unexpected keys by name."""
    _check_keys(model.state_dict(), list(model.state_dict()), state, source, "the model", set())
    model.load_state_dict(state, strict=True)


def _check_keys(own: dict[str, torch.Tensor], wanted: list[str], state: dict[str, torch.Tensor], source: str,
                what: str, optional: set[str]) -> None:
    """CheckpointError naming every missing, unexpected and mis-shaped key of ``state`` against ``wanted``."""
    missing = [k for k in wanted if k not in state and k not in optional]
    unexpected = [k for k in state if k not in wanted]
    shape = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in wanted
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {_few(shape)}")
        raise CheckpointError(f"{source}: does not fit {what}: " + "; ".join(parts))


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def load_trained_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[DeepLabV2, dict[str, Any]]:
    """A proda checkpoint -> (model in eval mode, meta with num_classes, class_names, palette, input)."""
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path}: not a proda checkpoint (no 'model'/'meta'); convert it with `proda convert`")
    meta = state["meta"]
    model_cfg = _build(ModelConfig, meta["model"], "model.")
    model = build_model(model_cfg, meta["num_classes"])
    load_state_strict(model, state["model"], str(path))
    return model.to(device).eval(), meta


def load_model_for_config(path: str | os.PathLike, cfg, device) -> tuple[DeepLabV2, dict[str, Any]]:
    """A trained model for a command that reads the config's data: the class counts must agree."""
    model, meta = load_trained_model(path, device)
    if meta["num_classes"] != cfg.data.num_classes:
        raise CheckpointError(f"{path}: a {meta['num_classes']}-class model, but the config says "
                              f"data.num_classes={cfg.data.num_classes}")
    return model, meta


def _unwrap(state: Any) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model_state", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return _unwrap(state[key]) if key != "model_state" else state[key]
    return state


def detect_format(state: Any) -> str:
    """Which of the known layouts a loaded file has: proda, original (ProDA .pkl), simclr, torchvision."""
    if isinstance(state, dict):
        if state.get("format") == "proda":
            return "proda"
        if "ResNet101" in state:
            return "original"
        if "resnet" in state and isinstance(state["resnet"], dict):
            return "simclr"
        flat = _unwrap(state)
        if isinstance(flat, dict) and "conv1.weight" in flat:
            return "torchvision" if "fc.weight" in flat or not any(k.startswith("layer5") for k in flat) else "original"
    raise CheckpointError("unrecognised checkpoint layout (expected a proda checkpoint, an original ProDA .pkl, "
                          "a torchvision ResNet or a SimCLRv2 conversion)")


def initialize_model(model: DeepLabV2, path: str | os.PathLike, fmt: str = "auto") -> str:
    """Initialise ``model`` from a file; returns the format used. Strict: wrong keys are an error.

    * proda: a proda checkpoint, whole network;
    * torchvision: an ImageNet ResNet state dict, backbone only (``fc.*`` dropped; every backbone key must be there).
    """
    state = load_checkpoint(path, map_location="cpu")
    fmt = detect_format(state) if fmt == "auto" else fmt
    if fmt == "proda":
        load_state_strict(model, state["model"], str(path))
    elif fmt == "torchvision":
        flat = {k: v for k, v in _unwrap(state).items() if not k.startswith("fc.")}
        load_backbone_strict(model, flat, str(path))
    else:
        raise CheckpointError(f"{path}: the {fmt!r} layout cannot initialise a model yet")
    return fmt


def load_backbone_strict(model: DeepLabV2, state: dict[str, torch.Tensor], source: str) -> None:
    """Load backbone weights by name; every backbone key must be present, nothing else may be."""
    backbone = model.backbone_state_keys()
    optional = {k for k in backbone if k.endswith("num_batches_tracked")}
    _check_keys(model.state_dict(), backbone, state, source, "the backbone", optional)
    model.load_state_dict(state, strict=False)
