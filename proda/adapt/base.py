"""What a stage is: named modules, optimizers, data streams and a ``step(batch) -> named losses``.

The trainer (proda.engine.trainer) drives any stage the same way; a stage knows nothing of files,
devices placement, processes or checkpoints beyond returning its state.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.transforms import WeakCropper, image_to_tensor, label_to_tensor
from ..engine.data import AugmentedDataset


class Stage:
    """Base class. Subclasses fill ``modules``, ``optimizers``, ``streams`` and implement ``step``."""

    name = "stage"
    evaluates = True  # whether target-val mIoU of modules["model"] means anything for this stage
    progress = True  # progress bars of the stage's own loops (the trainer sets it from its own setting)
    # modules trained by back-propagation: wrapped in DistributedDataParallel when world_size > 1
    ddp_modules: tuple[str, ...] = ("model",)

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.modules: dict[str, nn.Module] = {}  # everything checkpointed; "model" is the one evaluated
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.streams: dict[str, AugmentedDataset] = {}  # name -> training dataset, batched by the trainer
        # DistributedDataParallel wrappers of ``modules`` (set by :meth:`wrap_distributed`); ``modules`` keeps
        # the bare modules, which checkpoints, the EMA and evaluation use
        self.ddp: dict[str, nn.Module] = {}

    def add_segmentation_model(self) -> nn.Module:
        """The network being trained as ``modules['model']`` (initialised from ``model.init`` if set),
        with its SGD optimizer: backbone at ``optim.lr``, head at ``optim.head_lr_mult`` times that."""
        from ..models.build import build_model
        from ..models.checkpoints import initialize_model

        cfg = self.cfg
        net = build_model(cfg.model, cfg.data.num_classes)
        if cfg.model.init:
            initialize_model(net, cfg.model.init, cfg.model.init_format)
        self.modules["model"] = net.to(self.device)
        self.optimizers["model"] = torch.optim.SGD(
            net.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult),
            lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        )
        return net

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

    def state_dict(self) -> dict[str, Any]:
        """Extra state beyond modules and optimizers (prototypes, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


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
