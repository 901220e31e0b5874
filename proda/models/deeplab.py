"""DeepLab-v2 segmentation network laid out exactly like ProDA's ``ResNet101``.

The state-dict keys equal the original checkpoints' ``model_state`` keys: the backbone
modules sit at the top level (``conv1``, ``bn1``, ``layer1``..``layer4``, as torchvision
names them), the head is ``layer5`` and the optional extra BatchNorm is ``bn_pretrain``.
Released ProDA checkpoints therefore load strictly, with no key remapping.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from proda.errors import ConfigError
from proda.models.heads import DeepLabV2Head, ProDAHead
from proda.models.resnet import ResNet

__all__ = [
    "BACKBONE_MODULES",
    "HEAD_MODULES",
    "HEAD_NAMES",
    "DeepLabV2",
    "freeze_bn",
    "is_backbone_key",
]

#: Top-level modules trained at the base learning rate (the original ``get_1x_lr_params``).
BACKBONE_MODULES: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
#: Top-level modules trained at 10x (the original ``get_10x_lr_params``).
HEAD_MODULES: tuple[str, ...] = ("layer5", "bn_pretrain")
HEAD_NAMES: tuple[str, ...] = ("proda", "deeplabv2")
OUTPUT_STRIDES: tuple[int, ...] = (8, 4)


def is_backbone_key(key: str) -> bool:
    """Whether a state-dict key belongs to the backbone (torchvision-compatible part)."""
    return key.split(".", 1)[0] in BACKBONE_MODULES


def freeze_bn(module: nn.Module, frozen: bool = True) -> None:
    """Put every BatchNorm in ``module`` in eval mode and stop gradients to its affine params.

    This is a one-shot version of the original ``freeze_bn`` (warm-up ``--freeze_bn``):
    ``module.train()`` undoes the eval part, so the original calls it after every
    ``train()``. :meth:`DeepLabV2.freeze_bn` is sticky instead and needs no such call.
    ``frozen=False`` gives the affine parameters their gradients back (train/eval mode is
    then left to the caller's next ``train()``/``eval()``).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if frozen:
                m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(not frozen)


class DeepLabV2(ResNet):
    """DeepLab-v2 (ResNet backbone, output stride 8) with ProDA's or the classic head.

    Subclassing :class:`ResNet` is what puts ``conv1`` ... ``layer4`` at the top level of the
    state dict, as in the original checkpoints.

    Args:
        num_classes: number of output classes (19 for GTA5->Cityscapes, 16 for SYNTHIA).
        depth: backbone depth, 18/34/50/101.
        width: backbone base channels (64 = standard; e.g. 8-16 for CPU demos).
        head: ``'proda'`` (modified ASPP with SE, 256-d ``feat``) or ``'deeplabv2'`` (sum of
            dilated convs; ``feat`` is then the layer4 map).
        head_mid: ProDA head width (256 = standard); sets the prototype dimension.
        bn_pretrain: add ``bn_pretrain`` = BatchNorm on the layer4 output before the head.
            The original uses it (``--bn_clr``/``--ema_bn``) to rescale SimCLR features in
            stages 2-3; checkpoints of those stages contain its keys.
        dropout: Dropout2d rate in front of the ProDA classifier.
        output_stride: 8 (DeepLab-v2, the original) or 4: ProDA's head then ends in a light decoder
            that fuses the stride-4 ``layer1`` map (:class:`ProDAHead`, ``low_channels``), so the
            outputs have twice the resolution per side for little extra compute.

    ``forward(x)`` returns ``{'feat': [B, feat_channels, h, w], 'out': [B, num_classes, h, w]}``
    at stride 8 (1024x2048 -> 129x257, 512x896 -> 65x113), or 4 with ``output_stride=4``; logits are
    not upsampled.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        width: int = 64,
        head: str = "proda",
        head_mid: int = 256,
        bn_pretrain: bool = False,
        dropout: float = 0.1,
        output_stride: int = 8,
    ) -> None:
        super().__init__(depth=depth, width=width)
        if head not in HEAD_NAMES:
            raise ConfigError(f"model head must be one of {list(HEAD_NAMES)}, got {head!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"model output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride!r}")
        if output_stride == 4 and head != "proda":
            raise ConfigError("model output_stride 4 needs head 'proda' (its decoder sits in ProDA's head)")
        self.output_stride = output_stride
        self.num_classes = num_classes
        self.head_name = head
        self.bn_frozen = False
        self.layer5: ProDAHead | DeepLabV2Head
        if head == "proda":
            low_channels = self.low_channels if output_stride == 4 else None
            self.layer5 = ProDAHead(
                self.out_channels, num_classes, mid=head_mid, dropout=dropout, low_channels=low_channels
            )
        else:
            self.layer5 = DeepLabV2Head(self.out_channels, num_classes)
        # None is a plain attribute, so the key set has no ``bn_pretrain.*`` when disabled.
        self.bn_pretrain: nn.BatchNorm2d | None = (
            nn.BatchNorm2d(self.out_channels) if bn_pretrain else None
        )
        self.feat_channels: int = self.layer5.feat_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        low, f = self.low_and_high_features(x)
        if self.bn_pretrain is not None:
            f = self.bn_pretrain(f)
        if self.output_stride == 4:
            return self.layer5(f, low)
        return self.layer5(f)

    # ----------------------------------------------------------------- optimisation helpers
    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """SGD parameter groups: backbone at ``lr``, head (``layer5`` + ``bn_pretrain``) at 10x.

        Every parameter appears exactly once, frozen ones included (SGD skips parameters
        whose ``grad`` is None), so unfreezing later needs no new optimizer. ``lr_mult`` lets
        a scheduler rescale groups from one base rate.
        """
        backbone = [p for name in BACKBONE_MODULES for p in getattr(self, name).parameters()]
        head_modules = [m for m in (getattr(self, n) for n in HEAD_MODULES) if m is not None]
        head = [p for m in head_modules for p in m.parameters()]
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "head"},
        ]

    def backbone_state_keys(self) -> list[str]:
        """State-dict keys of the backbone: the ones ImageNet/SimCLR weights provide."""
        return [k for k in self.state_dict() if is_backbone_key(k)]

    def head_state_keys(self) -> list[str]:
        """State-dict keys that are not backbone (``layer5.*`` and ``bn_pretrain.*``)."""
        return [k for k in self.state_dict() if not is_backbone_key(k)]

    # ----------------------------------------------------------------- BatchNorm freezing
    def freeze_bn(self, frozen: bool = True) -> DeepLabV2:
        """Freeze (or unfreeze) every BatchNorm, including ``bn_pretrain``; sticky.

        Frozen BNs use and keep their running statistics and get no gradient to their
        affine parameters, as the original warm-up's ``--freeze_bn``. Unlike the original,
        which re-applies this after each ``model.train()``, the setting is remembered and
        :meth:`train` honours it. Apply before wrapping in DDP, which fixes the set of
        parameters needing gradients at construction.
        """
        self.bn_frozen = frozen
        freeze_bn(self, frozen)
        if not frozen:
            self.train(self.training)
        return self

    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        if getattr(self, "bn_frozen", False):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
