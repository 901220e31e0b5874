"""What a stage is: named modules, optimizers, data streams and a ``step(batch) -> named losses``.

The trainer (proda.engine.trainer) drives any stage the same way and knows nothing of ProDA. A stage is
made in two steps: its ``build(cfg, device, progress)`` class method does everything that touches files,
processes or the terminal (reading a prototype file, opening a pseudo-label store, loading a teacher,
all-reducing label statistics, printing what it found) and hands plain objects (modules, tensors, datasets)
to the constructor, which does none of that. A test can therefore build a stage from in-memory tensors and
modules and call ``step`` on a batch it made itself.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.readers import labelled_sampling_weights, source_reader, target_reader
from ..data.transforms import WeakCropper, image_to_tensor, label_to_tensor
from ..engine import dist
from ..engine.data import AugmentedDataset
from ..models.build import build_model
from ..models.weights import initialize_model


def segmentation_model(cfg) -> nn.Module:
    """The network a stage trains, initialised from ``model.init`` when set (a file: builders call this)."""
    net = build_model(cfg.model, cfg.data.num_classes)
    if cfg.model.init:
        initialize_model(net, cfg.model.init, cfg.model.init_format)
    return net


class Stage:
    """Base class. Subclasses fill ``modules``, ``optimizers``, ``streams`` and implement ``step``."""

    name = "stage"
    evaluates = True  # whether target-val mIoU of modules["model"] means anything for this stage
    progress = True  # progress bars of the stage's own loops (the trainer sets it from its own setting)
    # modules trained by back-propagation: wrapped in DistributedDataParallel when world_size > 1
    ddp_modules: tuple[str, ...] = ("model",)

    #: batch entries that are images [B,3,H,W] (put in channels_last memory format when run.channels_last)
    image_keys: frozenset[str] = frozenset({"image"})

    def __init__(self, cfg, device: torch.device, model: nn.Module,
                 streams: dict[str, AugmentedDataset] | None = None):
        """``model``: the network trained as ``modules['model']``, with an SGD optimizer (backbone at
        ``optim.lr``, head at ``optim.head_lr_mult`` times that). ``streams``: name -> training dataset,
        batched by the trainer (none for a stage driven by hand, as in tests)."""
        self.cfg, self.device = cfg, device
        self.modules: dict[str, nn.Module] = {"model": model.to(device)}  # all checkpointed; "model" is evaluated
        self.optimizers: dict[str, torch.optim.Optimizer] = {"model": torch.optim.SGD(
            model.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult),
            lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        )}
        self.streams: dict[str, AugmentedDataset] = dict(streams or {})
        # DistributedDataParallel wrappers of ``modules`` (set by :meth:`wrap_distributed`); ``modules`` keeps
        # the bare modules, which checkpoints, the EMA and evaluation use
        self.ddp: dict[str, nn.Module] = {}

    @classmethod
    def build(cls, cfg, device: torch.device, progress: bool = True) -> "Stage":
        """The stage for ``cfg``, its inputs read from the files the config names."""
        raise NotImplementedError

    @property
    def model(self) -> nn.Module:
        """The network to call in :meth:`step`: its DDP wrapper when distributed (so gradients are
        averaged), else ``modules['model']``. State and evaluation use ``modules['model']``."""
        return self.trained("model")

    def trained(self, name: str) -> nn.Module:
        """``modules[name]`` as ``step`` must call it: through its DDP wrapper when there is one."""
        return self.ddp.get(name, self.modules[name])

    def wrap_distributed(self, device: torch.device) -> None:
        """Wrap the modules named by ``ddp_modules`` in DistributedDataParallel (the trainer calls this when
        world_size > 1, after SyncBatchNorm/memory-format conversion). Every trainable parameter must get a
        gradient each step (find_unused_parameters stays off), however many times ``step`` calls the
        module: DDP averages the gradients of the one backward of the summed loss."""
        from ..engine.dist import wrap_ddp

        for name in self.ddp_modules:
            module = self.modules[name]
            if any(p.requires_grad for p in module.parameters()):
                self.ddp[name] = wrap_ddp(module, device)

    def train_mode(self) -> None:
        """Called before every iteration: modules that learn go to train mode."""
        for module in self.modules.values():
            module.train()

    def step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, torch.Tensor]:
        """Forward one micro-batch; return the weighted loss terms whose sum is back-propagated."""
        raise NotImplementedError

    def after_step(self, batch: dict[str, dict[str, Any]], iteration: int) -> dict[str, float]:
        """After the optimizer step (EMA, moving prototypes); may return metrics to log."""
        return {}

    def eval_metrics(self) -> dict[str, float]:
        """Stage-specific figures logged with each evaluation (e.g. pseudo-label quality)."""
        return {}

    def final_metrics(self) -> dict[str, Any]:
        """Stage-specific figures measured once when the stage completes; stored in result.json."""
        return {}

    def panel_reader(self):
        """The dataset whose first images the trainer's panels draw; None: the target validation split."""
        return None

    def panel_maps(self, sample: dict[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Extra label maps [H,W] at ``size`` (H, W) to draw beside ground truth and prediction for one sample
        of :meth:`panel_reader`, titled by their keys (e.g. a stage's pseudo labels). Called in eval mode."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Extra state beyond modules and optimizers (prototypes, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def labelled_stream(cfg, domain: str = "source", progress: bool = True) -> AugmentedDataset:
    """The weak-view stream of the labelled ``domain`` ("source", or "target" for the oracle), its images drawn
    by ``data.class_sampling`` (class-aware weights computed here, printed on the main process only)."""
    reader = source_reader(cfg) if domain == "source" else target_reader(cfg, with_labels=True)
    weights = labelled_sampling_weights(cfg, reader, domain, progress=progress and dist.is_main())
    return AugmentedDataset(reader, weak_view_fn(cfg), weights)


def weak_view_fn(cfg, with_label: bool = True):
    """The weak training view of ProDA as a picklable callable for :class:`AugmentedDataset`."""
    return _WeakView(WeakCropper.from_config(cfg.data), with_label)


class _WeakView:
    def __init__(self, cropper: WeakCropper, with_label: bool):
        self.cropper, self.with_label = cropper, with_label

    def __call__(self, sample: dict[str, Any], rng) -> dict[str, Any]:
        label = sample.get("label") if self.with_label else None
        geom, crop, label_crop = self.cropper(rng, sample["image"], label)
        out = {"image": image_to_tensor(crop), "geometry": geom.to_tensor(), "name": sample["name"]}
        if label_crop is not None:
            out["label"] = label_to_tensor(label_crop)
        return out
