"""``proda convert``: other layouts' weights -> a self-contained proda checkpoint.

A converted file has the layout training writes (``format``, ``model``, ``meta``, ``iteration``, ``config``),
so every command that takes a trained model (evaluate, prototypes, pseudo-label, ``model.init``) takes it.

Input normalisation: the original ProDA feeds [0,1] RGB with no ImageNet mean/std (docs/method.md 4.2) for every
stage and backbone, ImageNet-initialised ones included. A converted checkpoint therefore carries mean (0,0,0) /
std (1,1,1) by default, so a converted ProDA model predicts exactly as the original does; a torchvision backbone
gets the same convention, as ProDA trained it. Pass ``mean``/``std`` (e.g. ImageNet's) to override.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ..config import Config, DataConfig, ModelConfig
from ..data.labels import SUPPORTED_NUM_CLASSES
from ..checkpoint_io import save_checkpoint
from ..errors import CheckpointError, ConfigError
from .build import build_model
from .meta import model_meta
from .weights import infer_architecture, load_backbone_strict, load_state_strict, read_weights

#: Seed of a backbone conversion's fresh head, so converting the same file twice gives the same checkpoint.
HEAD_SEED = 0


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "auto",
                       num_classes: int | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> dict[str, Any]:
    """Write ``src`` (original ProDA .pkl, or a torchvision/SimCLR backbone plus a fresh head of ``num_classes``
    classes) as a proda checkpoint at ``dst`` (atomic). Returns its meta, with ``converted_from`` describing
    the source (format, iteration, whether prototypes were found)."""
    weights = read_weights(src, fmt)
    if weights.fmt in ("proda", "proda_backbone"):
        raise CheckpointError(f"{src}: already a proda checkpoint; use it as it is")
    arch = infer_architecture(weights.state, str(src))
    if weights.whole:
        if num_classes is not None and num_classes != arch["num_classes"]:
            raise CheckpointError(f"{src}: a {arch['num_classes']}-class model; --num-classes {num_classes} "
                                  "cannot change that")
        num_classes = arch["num_classes"]
    elif num_classes is None:
        raise CheckpointError(f"{src}: a {weights.fmt} backbone has no classifier; give the number of classes "
                              f"of the fresh head (one of {', '.join(map(str, SUPPORTED_NUM_CLASSES))})")
    if num_classes not in SUPPORTED_NUM_CLASSES:
        raise ConfigError(f"num_classes must be one of {SUPPORTED_NUM_CLASSES}, got {num_classes}")
    model_cfg = ModelConfig(
        depth=arch["depth"], width=arch["width"], head=arch["head"] or ModelConfig.head,
        head_mid=arch["head_mid"] or ModelConfig.head_mid, bn_pretrain=arch["bn_pretrain"],
        mean=_triple(mean, ModelConfig.mean, "mean"), std=_triple(std, ModelConfig.std, "std"),
    )
    if any(s <= 0 for s in model_cfg.std):
        raise ConfigError(f"std must be positive, got {list(model_cfg.std)}")
    cfg = Config(data=DataConfig(num_classes=num_classes), model=model_cfg)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        model = build_model(model_cfg, num_classes)
    if weights.whole:
        load_state_strict(model, weights.state, str(src))
    else:
        load_backbone_strict(model, weights.state, str(src))

    meta = model_meta(cfg)
    meta["stage"] = "converted"
    meta["converted_from"] = {"path": os.path.abspath(src), "format": weights.fmt, "iteration": weights.iteration,
                              "best_iou": weights.best_iou, "architecture": arch,
                              "prototypes": weights.prototypes is not None, "fresh_head": not weights.whole}
    state: dict[str, Any] = {
        "format": "proda",
        "stage": "converted",
        "iteration": int(weights.iteration or 0),
        "model": model.state_dict(),
        "config": {"stage": "converted", "data": {"num_classes": num_classes}, "model": cfg.to_dict()["model"]},
        "meta": meta,
    }
    if weights.prototypes is not None:
        state["prototypes"] = _prototype_bank_state(weights.prototypes, src)
    save_checkpoint(dst, state)
    return meta


def convert_command(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "auto",
                    num_classes: int | None = None) -> int:
    """``proda convert SRC DST [--format F] [--num-classes N]``: convert and say what was found."""
    meta = convert_checkpoint(src, dst, fmt, num_classes)
    src_info, m = meta["converted_from"], meta["model"]
    head = "fresh head (seeded)" if src_info["fresh_head"] else f"{m['head']} head"
    print(f"{src}: {src_info['format']} layout"
          + (f", iteration {src_info['iteration']}" if src_info["iteration"] is not None else ""))
    print(f"  architecture: ResNet-{m['depth']} width {m['width']}, {head} (mid {m['head_mid']}), "
          f"bn_pretrain={str(m['bn_pretrain']).lower()}, {meta['num_classes']} classes")
    print(f"  prototypes: {'found (objective_vectors), stored as prototypes' if src_info['prototypes'] else 'none'}")
    print(f"  input: [0,1] RGB, mean {meta['input']['mean']}, std {meta['input']['std']}")
    print(f"wrote {dst}")
    return 0


def _triple(values: Sequence[float] | None, default: tuple[float, float, float], name: str) -> tuple[float, ...]:
    if values is None:
        return default
    if len(values) != 3:
        raise ConfigError(f"{name} needs 3 values (R, G, B), got {list(values)}")
    return tuple(float(v) for v in values)


def _prototype_bank_state(protos: torch.Tensor, src: str | os.PathLike) -> dict[str, Any]:
    """The original's live prototypes [C, D] as a prototype-bank entry (``PrototypeBank.load`` reads it; a
    class counts as seen when its row is non-zero, as for the original's bare tensor files)."""
    protos = protos.detach().float().cpu().clone()
    if not bool(torch.isfinite(protos).all()):
        raise CheckpointError(f"{src}: its objective_vectors (prototypes) contain non-finite values")
    return {"prototypes": protos,
            "provenance": {"source": os.path.abspath(src), "format": "original objective_vectors"}}
