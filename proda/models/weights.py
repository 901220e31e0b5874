"""Reading network weights from every checkpoint layout users have, strictly, into a DeepLabV2.

Layouts (``fmt``; ``'auto'`` detects all but ``proda_backbone``):

* ``proda``: a checkpoint written by proda (training or ``proda convert``): the whole network.
* ``proda_backbone``: only the backbone of a proda checkpoint (e.g. self-supervised pre-training), fresh head.
* ``original``: a released ProDA file (``from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl``):
  ``{'ResNet101': {'model_state', 'objective_vectors'}, ['FCDiscriminator'], 'iter', 'best_iou'}``, or a bare
  ``model_state``. DeepLabV2's key names *are* the original's, so the whole network loads without remapping;
  ``objective_vectors`` (the live prototypes of a stage-1 file) are kept as :attr:`Weights.prototypes`.
* ``torchvision``: an ImageNet ResNet state dict; the backbone loads, ``fc.*`` is dropped.
* ``simclr``: SimCLRv2 sk0 weights as ProDA used them (``{'state_dict': torchvision-style keys}``, the
  ``r101_1x_sk0.pth`` it loads), as the Separius/SimCLRv2-Pytorch converter writes them
  (``{'resnet': ..., 'head': ...}``, keys renamed by :data:`SIMCLR_KEY_MAP`), or a bare torchvision-style dict.
  Selective-kernel (sk1) models have no DeepLabV2 counterpart and are refused.

Every load is strict: a key missing, left over or of the wrong shape is a :class:`CheckpointError` that names
it (``num_batches_tracked`` alone is optional: older PyTorch versions did not save it), plus the config
settings that would make the model fit when the checkpoint's architecture differs from the model's.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ModelConfig, _build
from ..checkpoint_io import load_checkpoint
from ..errors import CheckpointError
from .build import build_model
from .deeplab import DeepLabV2, is_backbone_key
from .resnet import RESNET_SPECS, Bottleneck

State = dict[str, torch.Tensor]

#: Layouts :func:`read_weights` understands (``auto`` picks one of them with :func:`detect_format`).
FORMATS: tuple[str, ...] = ("proda", "proda_backbone", "original", "torchvision", "simclr")
#: Layouts that hold the whole network (the others give the backbone only).
WHOLE_FORMATS: tuple[str, ...] = ("proda", "original")
#: Top-level keys of a backbone file that DeepLabV2 has no use for: ImageNet classifier, SimCLR projection head.
DROPPED_BACKBONE_PREFIXES: tuple[str, ...] = ("fc.", "head.", "projection.")

_B = r"net\.([1-4])\.blocks\.(\d+)\."  # one bottleneck block of the converter's ResNet
#: Separius/SimCLRv2-Pytorch ``resnet`` key (regex) -> torchvision/DeepLabV2 key. Its modules: ``net.0`` stem
#: (conv, BatchNormRelu(BN, ReLU), max-pool); ``net.1``..``net.4`` layer1..4 = ``Blocks.blocks[i]``, each a
#: ``BottleneckBlock`` with ``net`` = [conv1x1, BNReLU, conv3x3, BNReLU, conv1x1, BN(relu=False)] and, in
#: the first block, ``projection`` = ``shortcut`` conv1x1 + ``bn`` = Sequential(BN, Identity); ``fc``.
SIMCLR_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"net\.0\.0\.weight", r"conv1.weight"),
    (r"net\.0\.1\.0\.(\w+)", r"bn1.\1"),
    (_B + r"net\.0\.weight", r"layer\1.\2.conv1.weight"),
    (_B + r"net\.1\.0\.(\w+)", r"layer\1.\2.bn1.\3"),
    (_B + r"net\.2\.weight", r"layer\1.\2.conv2.weight"),
    (_B + r"net\.3\.0\.(\w+)", r"layer\1.\2.bn2.\3"),
    (_B + r"net\.4\.weight", r"layer\1.\2.conv3.weight"),
    (_B + r"net\.5\.0\.(\w+)", r"layer\1.\2.bn3.\3"),
    (_B + r"projection\.shortcut\.weight", r"layer\1.\2.downsample.0.weight"),
    (_B + r"projection\.bn\.0\.(\w+)", r"layer\1.\2.downsample.1.\3"),
)
_SIMCLR_RULES = tuple((re.compile(pattern), repl) for pattern, repl in SIMCLR_KEY_MAP)
# Selective-kernel modules (SimCLRv2 sk1): split-attention convs, a 3-conv stem, an avg-pool shortcut.
_SELECTIVE_KERNEL = re.compile(r"(^|\.)(main_conv|mixing_conv)\.|projection\.shortcut\.2\.|^net\.0\.4\.weight$")

# infer_architecture's fields -> the config key that sets them.
_CONFIG_KEYS = {"depth": "model.depth", "width": "model.width", "head": "model.head", "head_mid": "model.head_mid",
                "bn_pretrain": "model.bn_pretrain", "num_classes": "data.num_classes"}


@dataclass(frozen=True)
class Weights:
    """A checkpoint's network weights under DeepLabV2's key names, whatever layout the file had."""

    fmt: str  # the layout it was read as
    state: State  # the whole network (proda, original) or the backbone only
    prototypes: torch.Tensor | None = None  # an original stage-1 file's objective_vectors [C, head_mid]
    iteration: int | None = None
    best_iou: float | None = None  # what an original file says it scored

    @property
    def whole(self) -> bool:
        return self.fmt in WHOLE_FORMATS


# ----------------------------------------------------------------------------------------------- reading
def read_weights(path: str | os.PathLike, fmt: str = "auto") -> Weights:
    """Read any supported checkpoint file into DeepLabV2 key names (the one reader for every layout)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; one of auto, {', '.join(FORMATS)}")
    source = str(path)
    raw = load_checkpoint(path, map_location="cpu")
    fmt = detect_format(raw, source) if fmt == "auto" else fmt
    if fmt in ("proda", "proda_backbone"):
        if not (isinstance(raw, dict) and isinstance(raw.get("model"), dict)):
            raise CheckpointError(f"{source}: not a proda checkpoint (no 'model'); found {_describe(raw)}")
        state = _tensor_dict(raw["model"], source)
        if fmt == "proda_backbone":
            return Weights(fmt, {k: v for k, v in state.items() if is_backbone_key(k)})
        return Weights(fmt, state, iteration=raw.get("iteration"))
    state = _tensor_dict(_flat_state(raw), source)
    if fmt == "original":
        outer = raw if isinstance(raw, dict) else {}
        entry = outer.get("ResNet101") if isinstance(outer.get("ResNet101"), dict) else {}
        return Weights(fmt, state, prototypes=_live_prototypes(entry.get("objective_vectors"), state, source),
                       iteration=outer.get("iter"), best_iou=outer.get("best_iou"))
    if any(_SELECTIVE_KERNEL.search(k) for k in state):
        raise CheckpointError(f"{source}: a selective-kernel (SimCLRv2 sk1) ResNet, which DeepLabV2 cannot hold; "
                              "use an sk0 checkpoint (e.g. r101_1x_sk0)")
    if fmt == "simclr":
        state = simclr_to_torchvision(state)
    return Weights(fmt, {k: v for k, v in state.items() if not k.startswith(DROPPED_BACKBONE_PREFIXES)})


def simclr_to_torchvision(state: State) -> State:
    """Rename a SimCLRv2-converter state dict by :data:`SIMCLR_KEY_MAP`; other keys pass unchanged (so that a
    strict load reports them, and torchvision-style input is left as it is)."""
    out: State = {}
    for key, value in state.items():
        for pattern, repl in _SIMCLR_RULES:
            if pattern.fullmatch(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    return out


def detect_format(state: Any, source: str = "checkpoint") -> str:
    """Which layout a loaded file has: proda, original (ProDA .pkl), simclr or torchvision.

    A flat dict counts as ``original`` when it has the ProDA head (``layer5.*``), else as a backbone;
    a wrapped (``state_dict``/``resnet``) or converter-named backbone counts as ``simclr``.
    """
    if isinstance(state, dict):
        if state.get("format") == "proda":
            return "proda"
        if "ResNet101" in state:
            return "original"
        flat = _flat_state(state)
        if any(k.startswith("layer5.") for k in flat) and "conv1.weight" in flat:
            return "original"
        wrapped = isinstance(state.get("resnet"), dict) or isinstance(state.get("state_dict"), dict)
        if "net.0.0.weight" in flat or (wrapped and "conv1.weight" in flat):
            return "simclr"
        if "conv1.weight" in flat:
            return "torchvision"
    raise CheckpointError(f"{source}: unrecognised checkpoint layout (expected a proda checkpoint, an original "
                          f"ProDA .pkl, a torchvision ResNet or a SimCLRv2 sk0 ResNet); found {_describe(state)}")


def infer_architecture(state: State, source: str = "state dict") -> dict[str, Any]:
    """DeepLabV2 settings that fit a state dict in DeepLabV2 key names (the one place they are read from keys).

    Returns ``depth`` (block type and layer3 block count: 6 -> 50, 23 -> 101, ...), ``width`` (conv1's output
    channels), ``head`` ('proda', 'deeplabv2', or None for a backbone), ``head_mid`` (the ProDA head's feature
    width, else None), ``num_classes`` (None for a backbone) and ``bn_pretrain`` (whether its keys are there).
    """
    if "conv1.weight" not in state:
        raise CheckpointError(f"{source}: no conv1.weight, not a ResNet; found {_describe(state)}")
    bottleneck = "layer1.0.conv3.weight" in state
    blocks3 = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    depths = [d for d, (block, layers) in RESNET_SPECS.items()
              if (block is Bottleneck) == bottleneck and layers[2] == blocks3]
    if not depths:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(f"{source}: a ResNet with {blocks3} layer3 blocks ({kind}) "
                              f"is none of depths {sorted(RESNET_SPECS)}")
    head = head_mid = num_classes = None
    if "layer5.head.1.weight" in state:
        head = "proda"
        num_classes, head_mid = (int(n) for n in state["layer5.head.1.weight"].shape[:2])
    elif "layer5.conv2d_list.0.weight" in state:
        head, num_classes = "deeplabv2", int(state["layer5.conv2d_list.0.weight"].shape[0])
    return {"depth": depths[0], "width": int(state["conv1.weight"].shape[0]), "num_classes": num_classes,
            "head": head, "head_mid": head_mid, "bn_pretrain": "bn_pretrain.weight" in state}


# ----------------------------------------------------------------------------------------------- loading
def initialize_model(model: DeepLabV2, path: str | os.PathLike, fmt: str = "auto") -> str:
    """Initialise ``model`` from a file (``model.init``); returns the format used. Strict: wrong keys are an error.

    proda/original load the whole network (the class count, depth, width and ``bn_pretrain`` must match);
    proda_backbone/torchvision/simclr load every backbone key and leave the head as initialised.
    """
    weights = read_weights(path, fmt)
    if weights.whole:
        load_state_strict(model, weights.state, str(path))
    else:
        load_backbone_strict(model, weights.state, str(path))
    return weights.fmt


def load_state_strict(model: torch.nn.Module, state: State, source: str) -> None:
    """Load the whole network by name: every key must be there with its shape, nothing else may be."""
    _load_checked(model, list(model.state_dict()), state, source, "the model", tuple(_CONFIG_KEYS))


def load_backbone_strict(model: DeepLabV2, state: State, source: str) -> None:
    """Load backbone weights by name; every backbone key must be present, nothing else may be."""
    _load_checked(model, model.backbone_state_keys(), state, source, "the backbone", ("depth", "width"))


def _load_checked(model: torch.nn.Module, keys: list[str], state: State, source: str, what: str,
                  fields: tuple[str, ...]) -> None:
    """Check ``state`` against ``keys`` (naming the config settings to change when the architecture differs
    in ``fields``), then load it. ``strict=False`` only lets the optional keys stay as they are."""
    try:
        _check_keys(model.state_dict(), keys, state, source, what, _optional(keys))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_architecture_hint(model, state, fields)}") from None
    model.load_state_dict(state, strict=False)


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


# ----------------------------------------------------------------------------------------------- helpers
def _check_keys(own: State, wanted: list[str], state: State, source: str, what: str, optional: set[str]) -> None:
    """CheckpointError naming every missing, unexpected and mis-shaped key of ``state`` against ``wanted``."""
    missing = [k for k in wanted if k not in state and k not in optional]
    wanted_set = set(wanted)
    unexpected = [k for k in state if k not in wanted_set]
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


def _optional(keys: list[str]) -> set[str]:
    """Keys a checkpoint may lack: BatchNorm step counters (absent from files of older PyTorch versions)."""
    return {k for k in keys if k.endswith("num_batches_tracked")}


def _architecture_hint(model: torch.nn.Module, state: State, fields: tuple[str, ...]) -> str:
    """'; the checkpoint needs model.bn_pretrain=true, ...' for each setting where the file and model differ."""
    if not isinstance(model, DeepLabV2):
        return ""
    try:
        arch = infer_architecture(state)
    except CheckpointError:
        return ""
    if arch["head"] is None:  # a backbone says nothing about the head or bn_pretrain
        fields = tuple(f for f in fields if f in ("depth", "width"))
    ours = infer_architecture(model.state_dict())
    fixes = [f"{_CONFIG_KEYS[k]}={str(arch[k]).lower() if isinstance(arch[k], bool) else arch[k]}"
             for k in fields if arch[k] is not None and arch[k] != ours[k]]
    return f" (the checkpoint's architecture differs: set {', '.join(fixes)})" if fixes else ""


def _flat_state(raw: Any) -> Any:
    """The key -> tensor dict inside any known wrapper, with a ``module.`` prefix stripped if every key has it."""
    node = raw
    for key in ("ResNet101", "model_state", "state_dict", "resnet", "model"):
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            node = node[key]
    if isinstance(node, dict) and node and all(isinstance(k, str) and k.startswith("module.") for k in node):
        node = {k[len("module."):]: v for k, v in node.items()}
    return node


def _tensor_dict(node: Any, source: str) -> State:
    if not (isinstance(node, dict) and node and all(isinstance(v, torch.Tensor) for v in node.values())):
        raise CheckpointError(f"{source}: expected a state dict of tensors; found {_describe(node)}")
    return node


def _live_prototypes(protos: Any, state: State, source: str) -> torch.Tensor | None:
    """An original file's objective_vectors when they hold prototypes (stage 1); other stages save zeros."""
    if not isinstance(protos, torch.Tensor) or not bool(protos.any()):
        return None
    arch = infer_architecture(state, source)
    if tuple(protos.shape) != (arch["num_classes"], arch["head_mid"]):
        raise CheckpointError(f"{source}: objective_vectors {tuple(protos.shape)} do not fit the model's "
                              f"{arch['num_classes']} classes x {arch['head_mid']} features")
    return protos.detach().float().clone()


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {_few([str(k) for k in obj], 5)}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")
