"""Typed, validated settings: YAML files plus dotted command-line overrides, checked once.

A config is a tree of frozen dataclasses. ``load_config(path, overrides)`` reads the YAML (following
``_base_`` includes), applies ``key.sub=value`` overrides (values parsed as YAML), and builds the
dataclasses, checking every key and type: an unknown key is an error that lists the valid ones, a value
of the wrong type names the key and the expected type, and impossible values (batch 0, a crop larger
than the image, a threshold outside [0, 1]) are refused before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError

Size = tuple[int, int]  # (width, height), as image tools write it


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is read. ``source`` and ``target`` name datasets of the table in
    :mod:`proda.data.registry` (``proda data check --help`` lists them); any labelled dataset can be the
    source, any dataset the target, when the target has every class of the source by name.

    ``num_classes`` is the run's class count, taken from the table: null (the default) means the source's
    usual protocol (GTA5 and Cityscapes 19, SYNTHIA 16, a folder dataset its ``dataset.yaml``'s classes) and is
    filled in when the config is loaded; a number picks another protocol the source offers (13 for SYNTHIA's
    13-class figure; 16 to read GTA5 or Cityscapes in SYNTHIA's classes) and anything else is refused.
    """

    source: str = "gta5"
    source_root: str = ""
    source_list: Optional[str] = None  # GTA5 only: a list file of image names; default: every file in images/
    source_size: Optional[Size] = None  # resize on load (W, H); None keeps the native size
    target: str = "cityscapes"
    target_root: str = ""
    target_split: str = "train"  # its training split needs no labels
    # the part of each target split to read where the dataset offers one: ACDC conditions ("fog,night"),
    # Dark Zurich's time of day; null = the dataset's default (all of ACDC, Dark Zurich's night)
    target_subset: Optional[str] = None
    target_size: Optional[Size] = None
    val_split: str = "val"
    val_size: Optional[Size] = None  # evaluation input size; labels stay at full resolution
    num_classes: Optional[int] = None
    crop_size: Size = (896, 512)
    # Random rescaling of the weak view: the image is resized to width = U(scale_range) * resize_width
    # (aspect kept), as ProDA's RandomSized(2200); resize_width None means the image's own width.
    resize_width: Optional[int] = 2200
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip: bool = True
    batch_size: int = 4  # per process and per micro-batch
    val_batch_size: int = 1
    num_workers: int = 4
    preflight_samples: int = 16  # files read and checked at start-up; 0 skips the check
    # trainId label caches of `proda data prepare`: "auto" = <root>/proda_cache when it exists, a folder
    # (e.g. the prepare --out of a read-only dataset), or null to read the original labels only
    source_label_cache: Optional[str] = "auto"
    target_label_cache: Optional[str] = "auto"
    # How the streams that train on labels (the supervised stage's; the source stream of warmup, stage1,
    # distill) pick images: "images" = each equally often (ProDA); "classes" = class-aware (rare-class)
    # sampling: a class drawn first, then an image showing it (statistics of `proda data prepare`, or
    # counted from the labels at start-up). Never the unlabelled target streams.
    class_sampling: Literal["images", "classes"] = "images"
    # "classes" only: null = each class present equally likely; a number T = DAFormer's rare-class
    # sampling, p_c ~ exp((1 - f_c) / T) with f_c the class's share of labelled pixels (DAFormer: 0.01)
    class_sampling_temperature: Optional[float] = None


@dataclass(frozen=True)
class ModelConfig:
    depth: Literal[18, 34, 50, 101] = 101
    width: int = 64  # base channels of the ResNet (64 = standard); small values make CPU demos possible
    head: Literal["proda", "deeplabv2"] = "proda"
    head_mid: int = 256
    dropout: float = 0.1
    bn_pretrain: bool = False  # the extra BN before the head (used with self-supervised backbones)
    # 8 = DeepLab-v2 (the original); 4 adds a light decoder on layer1 to ProDA's head (twice the output
    # resolution per side; the synthetic benchmark's small images need it, docs/method.md 9.29)
    output_stride: Literal[8, 4] = 8
    # Initial weights before model.init is loaded: 'original' = N(0, 0.01) for every conv, as ProDA (its
    # backbone then comes from ImageNet); 'kaiming' = He-normal convs, far better for training from scratch
    # (the synthetic benchmark, which has no pretrained backbone).
    weight_init: Literal["original", "kaiming"] = "original"
    init: Optional[str] = None  # a checkpoint to start from (see proda.models.weights for formats)
    # proda_backbone: only the backbone of a proda checkpoint (e.g. `proda pretrain-ssl`), with a fresh head
    init_format: Literal["auto", "proda", "proda_backbone", "original", "torchvision", "simclr"] = "auto"
    # Input normalisation. ProDA feeds [0,1] RGB without ImageNet mean/std (docs/method.md 4.2).
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class OptimConfig:
    iterations: int = 62412
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0  # the head (and bn_pretrain) learn 10x faster; 1.0 gives one group
    momentum: float = 0.9
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    # Poly schedule horizon in iterations; None = the run's length. The original used 90000 over 62412.
    lr_horizon: Optional[int] = None
    grad_accum: int = 1


@dataclass(frozen=True)
class SupervisedConfig:
    domain: Literal["source", "target"] = "source"  # target = the oracle (needs target labels)


@dataclass(frozen=True)
class WarmupConfig:
    """Output-space adversarial warm-up (AdaptSegNet-style, docs/method.md 1.1)."""

    adv_weight: float = 0.01
    gan: Literal["ls", "vanilla"] = "ls"  # least-squares GAN (the original's --gan LS) or BCE-with-logits
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.9, 0.99)
    disc_width: int = 64
    freeze_bn: bool = True  # BN in eval mode with frozen affine parameters (--freeze_bn)


@dataclass(frozen=True)
class Stage1Config:
    """Online prototypical denoising + structure learning (docs/method.md 2.1); defaults are the original's."""

    soft_labels: str = ""  # folder written by `proda pseudo-label --soft` (the warm-up model's softmax)
    prototypes: str = ""  # file written by `proda prototypes`
    temperature: float = 1.0  # multiplies the negative distances in the rectification/assignment softmax
    pseudo_threshold: float = 0.0  # the original's train_thred: 0 ignores no pixel
    # false: train on argmax P0, the warm-up's labels as they are, under the same pseudo_threshold (plain
    # self-training, the ablation's baseline row); the prototypes still move and feed the consistency term
    rectify: bool = True
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    regular_weight: float = 0.1  # 0.1 for GTA5, 0 for SYNTHIA
    consistency_weight: float = 10.0
    ema_momentum: float = 0.999
    # The original never puts its EMA in eval mode (BN batch statistics and dropout on the prototype
    # features). Default off: the EMA is a teacher, and eval mode makes it deterministic; true reproduces
    # the released numbers' setting.
    ema_train_mode: bool = False
    prototype_momentum: float = 1e-4  # 1 - lambda, lambda = 0.9999
    prototype_min_pixels: int = 10
    loss_stride: int = 4  # target losses live on the crop/4 grid, as the original
    strong_ops: int = 2  # RandAugment ops per strong view
    cutout: bool = True


@dataclass(frozen=True)
class DistillConfig:
    """Self-distillation (stages 2 and 3, docs/method.md 2.2): CE on thresholded hard pseudo labels carried
    into the strong view, plus KL to a frozen teacher on the same strong image."""

    pseudo_labels: str = ""  # folder written by `proda pseudo-label` (hard)
    teacher: str = ""  # the previous stage's checkpoint
    threshold: float = 0.95  # pixels with confidence <= threshold are ignored
    # > 0: each class also keeps (at least) its most confident share of pixels, class-balanced as in CBST;
    # 0 is the original's single threshold, which can keep nothing of a class the teacher is unsure of
    class_keep: float = 0.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    # 'kl': KL(teacher || student) with log-probabilities for the student (the intent). 'original': the
    # released code's form, the student's probabilities passed as log-probabilities (issues #20, #43); the
    # published 56.9/57.5 were obtained with it.
    kd_form: Literal["kl", "original"] = "kl"
    loss_stride: int = 4
    strong_ops: int = 2
    cutout: bool = True


@dataclass(frozen=True)
class SSLConfig:
    """SimCLR-style contrastive pre-training of the backbone on unlabelled target images (`proda
    pretrain-ssl`), for the stage-2 student where no SimCLRv2 weights exist."""

    temperature: float = 0.1  # NT-Xent temperature (SimCLRv2)
    proj_hidden: int = 512
    proj_dim: int = 128
    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop, fraction of the image area
    color_jitter: float = 0.4  # brightness, contrast and saturation factors in [1 - s, 1 + s]
    color_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/default"
    seed: int = 1337
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 2  # checkpoints kept besides latest.pth and best.pth
    log_every: int = 20
    deterministic: bool = True
    tensorboard: bool = True
    eval_max_images: Optional[int] = None  # cap validation images (quick checks); None = the whole split
    # Image panels (RUN_DIR/panels/iter_*.png and TensorBoard): the first panel_images target images with
    # ground truth, (stage 1) raw and rectified pseudo labels, and the prediction. null = at every
    # evaluation, 0 = never, N = every N iterations.
    panel_every: Optional[int] = None
    panel_images: int = 4
    resume: bool = True  # continue from out_dir/latest.pth when it exists
    max_nonfinite_steps: int = 5  # consecutive skipped steps (non-finite loss) before the run stops
    # distributed (torchrun) runs: BatchNorm statistics over the global batch instead of each process's
    # (CPU/gloo included); no effect with one process
    sync_bn: bool = False
    # model and input images in channels_last memory format (faster convolutions on recent GPUs/CPUs)
    channels_last: bool = False


@dataclass(frozen=True)
class Config:
    stage: Literal["supervised", "warmup", "stage1", "distill", "ssl"] = "supervised"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


# ----------------------------------------------------------------------------------------------------------
# Loading


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself, else the config shipped with the package (``synthetic/stage1`` or
    ``configs/synthetic/stage1.yaml`` work from any folder, without a clone)."""
    path = Path(path)
    if path.exists():
        return path
    relative = path.relative_to("configs") if path.parts[:1] == ("configs",) else path
    for candidate in (PACKAGED_CONFIGS / relative, PACKAGED_CONFIGS / relative.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw: dict[str, Any] = _read_yaml_with_bases(resolve_config_path(path)) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return build_config(raw)


def build_config(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    return _with_class_count(cfg)


def _with_class_count(cfg: Config) -> Config:
    """``cfg`` with ``data.num_classes`` taken from the dataset table, after checking that the source and
    target datasets exist and share the run's classes by name (a mismatch shows both class lists).

    Folder datasets are read for their ``dataset.yaml`` here, so a wrong descriptor stops the run before
    any work, naming the file.
    """
    from .data.registry import dataset_names, run_classes

    d = cfg.data
    for key in ("source", "target"):
        name = getattr(d, key)
        if name.lower() not in dataset_names():
            raise ConfigError(f"data.{key}: unknown dataset {name!r}; expected one of {', '.join(dataset_names())}")
    classes = run_classes(d.source, d.source_root, d.target, d.target_root, d.num_classes)
    if d.num_classes == classes.num_classes:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(d, num_classes=classes.num_classes))


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key, value


def _read_yaml_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ include cycle")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    merged: dict[str, Any] = {}
    for base in bases:
        _deep_merge(merged, _read_yaml_with_bases(path.parent / base, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


# ----------------------------------------------------------------------------------------------------------
# Typed construction


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; valid keys in {where}: {', '.join(sorted(fields))}"
            + _did_you_mean(str(unknown[0]), prefix, list(fields))
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _did_you_mean(key: str, prefix: str, fields: list[str]) -> str:
    """'; did you mean optim.lr?' for a misspelt key, or the section that has a key of that name."""
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    sections = typing.get_type_hints(Config)
    homes = [f"{name}.{key}" for name, sub in sections.items()
             if dataclasses.is_dataclass(sub) and key in {g.name for g in dataclasses.fields(sub)}]
    return f"; did you mean {' or '.join(homes)}?" if homes else ""


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin is tuple:
        if isinstance(value, str) and "x" in value and all(a is int for a in args):
            value = value.lower().split("x")  # "896x512"
        if not isinstance(value, (list, tuple)) or (Ellipsis not in args and len(value) != len(args)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        if Ellipsis in args:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def replace(cfg: Config, **dotted: Any) -> Config:
    """A copy of ``cfg`` with dotted keys changed (``replace(cfg, **{"optim.lr": 0.1})``), validated."""
    raw = cfg.to_dict()
    for key, value in dotted.items():
        _set_dotted(raw, key, value)
    return build_config(raw)


# ----------------------------------------------------------------------------------------------------------
# Values that type checks cannot catch


def validate(cfg: Config) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    d, m, o, r = cfg.data, cfg.model, cfg.optim, cfg.run
    need(d.num_classes is None or 2 <= d.num_classes <= 254, "data.num_classes",
         f"must be 2..254 (or null: the source dataset's own classes), got {d.num_classes}")
    need(d.batch_size >= 1, "data.batch_size", f"must be at least 1, got {d.batch_size}")
    need(d.val_batch_size >= 1, "data.val_batch_size", f"must be at least 1, got {d.val_batch_size}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    need(all(v > 0 for v in d.crop_size), "data.crop_size", f"must be positive, got {list(d.crop_size)}")
    need(0 < d.scale_range[0] <= d.scale_range[1], "data.scale_range", f"must be 0 < low <= high, got {list(d.scale_range)}")
    t = d.class_sampling_temperature
    need(t is None or t > 0, "data.class_sampling_temperature", f"must be positive (or null: classes drawn uniformly), got {t}")
    for key in ("source_size", "target_size", "val_size"):
        size = getattr(d, key)
        need(size is None or all(v > 0 for v in size), f"data.{key}", f"must be positive, got {size}")
    # The smallest rescaled image must still hold the crop (no padding in ProDA's weak view).
    for key in ("source_size", "target_size"):
        size = getattr(d, key)
        if size is not None:
            w, h = size
            rw = d.resize_width if d.resize_width is not None else w
            min_w = int(d.scale_range[0] * rw)
            min_h = int(min_w * h / w)
            need(
                d.crop_size[0] <= min_w and d.crop_size[1] <= min_h,
                "data.crop_size",
                f"{list(d.crop_size)} is larger than the smallest rescaled {key.split('_')[0]} image "
                f"({min_w}x{min_h} at scale {d.scale_range[0]})",
            )
    need(m.width >= 4, "model.width", f"must be at least 4, got {m.width}")
    need(m.head_mid >= 8, "model.head_mid", f"must be at least 8, got {m.head_mid}")
    need(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    need(all(s > 0 for s in m.std), "model.std", f"must be positive, got {list(m.std)}")
    need(o.iterations >= 1, "optim.iterations", f"must be at least 1, got {o.iterations}")
    need(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    need(o.grad_accum >= 1, "optim.grad_accum", f"must be at least 1, got {o.grad_accum}")
    need(o.lr_horizon is None or o.lr_horizon >= o.iterations, "optim.lr_horizon",
         f"must be >= optim.iterations ({o.iterations}) or null, got {o.lr_horizon}")
    need(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    need(r.eval_every >= 1, "run.eval_every", f"must be at least 1, got {r.eval_every}")
    need(r.panel_every is None or r.panel_every >= 0, "run.panel_every", f"must be >= 0 or null, got {r.panel_every}")
    need(r.panel_images >= 1, "run.panel_images", f"must be at least 1, got {r.panel_images}")
    need(r.checkpoint_every >= 1, "run.checkpoint_every", f"must be at least 1, got {r.checkpoint_every}")
    need(r.keep_last >= 0, "run.keep_last", f"must be >= 0, got {r.keep_last}")
    need(r.max_nonfinite_steps >= 1, "run.max_nonfinite_steps", f"must be at least 1, got {r.max_nonfinite_steps}")
    need(r.log_every >= 1, "run.log_every", f"must be at least 1, got {r.log_every}")
    need(bool(r.device), "run.device", "must name a device such as cpu, cuda or cuda:1")
    w = cfg.warmup
    need(w.adv_weight >= 0, "warmup.adv_weight", f"must be >= 0, got {w.adv_weight}")
    need(w.disc_lr > 0, "warmup.disc_lr", f"must be positive, got {w.disc_lr}")
    need(w.disc_width >= 1, "warmup.disc_width", f"must be at least 1, got {w.disc_width}")
    s1 = cfg.stage1
    need(0.0 <= s1.pseudo_threshold <= 1.0, "stage1.pseudo_threshold", f"must be in [0, 1], got {s1.pseudo_threshold}")
    need(0.0 <= s1.ema_momentum < 1.0, "stage1.ema_momentum", f"must be in [0, 1), got {s1.ema_momentum}")
    need(0.0 <= s1.prototype_momentum <= 1.0, "stage1.prototype_momentum", f"must be in [0, 1], got {s1.prototype_momentum}")
    need(s1.loss_stride >= 1, "stage1.loss_stride", f"must be at least 1, got {s1.loss_stride}")
    need(s1.temperature > 0, "stage1.temperature", f"must be positive, got {s1.temperature}")
    for key in ("sce_alpha", "sce_beta", "regular_weight", "consistency_weight"):
        need(getattr(s1, key) >= 0, f"stage1.{key}", f"must be >= 0, got {getattr(s1, key)}")
    if cfg.stage == "stage1":
        need(bool(s1.soft_labels), "stage1.soft_labels", "is required (a folder from `proda pseudo-label --soft`)")
        need(bool(s1.prototypes), "stage1.prototypes", "is required (a file from `proda prototypes`)")
    k = cfg.distill
    need(0.0 <= k.threshold <= 1.0, "distill.threshold", f"must be in [0, 1], got {k.threshold}")
    need(0.0 <= k.class_keep <= 1.0, "distill.class_keep", f"must be in [0, 1], got {k.class_keep}")
    need(k.loss_stride >= 1, "distill.loss_stride", f"must be at least 1, got {k.loss_stride}")
    if cfg.stage == "distill":
        need(bool(k.pseudo_labels), "distill.pseudo_labels", "is required (a folder from `proda pseudo-label`)")
        need(bool(k.teacher), "distill.teacher", "is required (the previous stage's checkpoint)")
    need(cfg.ssl.temperature > 0, "ssl.temperature", f"must be positive, got {cfg.ssl.temperature}")
    need(0 < cfg.ssl.crop_scale[0] <= cfg.ssl.crop_scale[1] <= 1, "ssl.crop_scale",
         f"must be 0 < low <= high <= 1, got {list(cfg.ssl.crop_scale)}")
    needs_source = cfg.stage in ("warmup", "stage1", "distill") or (
        cfg.stage == "supervised" and cfg.supervised.domain == "source")
    if needs_source:
        need(bool(d.source_root), "data.source_root", f"is required by the {cfg.stage} stage")
    # every stage reads the target: to adapt to, to train the oracle on, and to evaluate on
    need(bool(d.target_root), "data.target_root", f"is required by the {cfg.stage} stage")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
