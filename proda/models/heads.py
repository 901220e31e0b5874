"""Segmentation heads: ProDA's modified ASPP head and the classic DeepLab-v2 head.

Both return ``{'feat': Tensor, 'out': Tensor}``; ``feat`` is the space in which ProDA keeps
its class prototypes and ``out`` the logits at the input's resolution (stride 8 of the
image). Each head exposes ``feat_channels`` so prototype code can size its buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepLabV2Head", "ProDAHead", "SEBlock", "group_norm_groups"]

DEFAULT_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)


def group_norm_groups(channels: int) -> int:
    """GroupNorm group count: 32 at the standard width (256 -> 32), 8 channels per group below.

    Keeping 8 channels per group when the head is narrowed (CPU demos) avoids degenerating
    into instance norm; ``gcd`` guarantees the count divides ``channels``.
    """
    return math.gcd(channels, min(32, max(1, channels // 8)))


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel scaling, named as the original (``se.0``, ``se.2``).

    Global average pool -> Linear(C, C//r) -> ReLU -> Linear(C//r, C) -> Sigmoid -> x * s.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.se(self.global_pool(x).flatten(1))
        return x * scale[:, :, None, None]


def _conv_gn_relu(in_ch: int, mid: int, kernel: int, dilation: int) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_ch, mid, kernel, padding=padding, dilation=dilation, bias=True),
        nn.GroupNorm(group_norm_groups(mid), mid),
        nn.ReLU(inplace=True),
    )


class ProDAHead(nn.Module):
    """ProDA's head (``Classifier_Module2``, borrowed from Seg-Uncertainty), names kept exactly.

    * ``conv2d_list.0``: 1x1 conv -> GN -> ReLU; ``conv2d_list.1..4``: 3x3 conv with
      dilation = padding = d -> GN -> ReLU; the five ``mid``-channel maps are concatenated.
    * ``bottleneck``: SE block on the concatenation -> 3x3 conv to ``mid`` -> GN (no ReLU).
    * ``head``: Dropout2d -> 1x1 conv to ``num_classes`` without bias.

    ``feat`` is taken *after* the dropout (``head[0]``), as the original does: in train mode
    prototypes and the prototype-consistency loss see dropped-out features.

    ``low_channels`` (not in the original) adds a decoder that brings the output to stride 4: the
    bottleneck's map is upsampled onto the stride-4 ``layer1`` map, concatenated with a 1x1
    projection of it (``decoder_low``: conv -> GN -> ReLU, ``mid // 4`` channels) and fused by a
    3x3 conv -> GN -> ReLU (``decoder``), as DeepLab-v3+ does; ``feat`` and ``out`` then live on
    the stride-4 grid. Without it the keys are the original's exactly.

    Init (what the original's whole-model loop leaves): convs N(0, 0.01), GN 1/0, the
    bottleneck conv bias 0; branch conv biases and the SE ``Linear`` layers keep defaults.
    """

    def __init__(
        self,
        in_ch: int,
        num_classes: int,
        mid: int = 256,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        dropout: float = 0.1,
        low_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.feat_channels = mid
        self.conv2d_list = nn.ModuleList(
            [_conv_gn_relu(in_ch, mid, 1, 1)] + [_conv_gn_relu(in_ch, mid, 3, d) for d in dilations]
        )
        cat_ch = mid * (len(dilations) + 1)
        self.bottleneck = nn.Sequential(
            SEBlock(cat_ch),
            nn.Conv2d(cat_ch, mid, 3, padding=1, bias=True),
            nn.GroupNorm(group_norm_groups(mid), mid),
        )
        # None is a plain attribute, so the original's key set stays exact without the decoder
        self.decoder_low: nn.Sequential | None = None
        self.decoder: nn.Sequential | None = None
        if low_channels is not None:
            low_mid = max(8, mid // 4)
            self.decoder_low = _conv_gn_relu(low_channels, low_mid, 1, 1)
            self.decoder = _conv_gn_relu(mid + low_mid, mid, 3, 1)
        self.head = nn.Sequential(
            nn.Dropout2d(dropout),
            nn.Conv2d(mid, num_classes, 1, bias=False),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(self.bottleneck[1].bias)

    def forward(self, x: Tensor, low: Tensor | None = None) -> dict[str, Tensor]:
        x = self.bottleneck(torch.cat([branch(x) for branch in self.conv2d_list], dim=1))
        if self.decoder is not None:
            if low is None:
                raise ValueError("this head has a stride-4 decoder: forward needs the layer1 map as `low`")
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
            x = self.decoder(torch.cat([x, self.decoder_low(low)], dim=1))
        feat = self.head[0](x)
        return {"feat": feat, "out": self.head[1](feat)}


class DeepLabV2Head(nn.Module):
    """Classic DeepLab-v2 ASPP classifier: the sum of dilated 3x3 convs straight to logits.

    This head has no intermediate embedding, so ``feat`` is its *input* (the backbone's
    layer4 map, ``in_ch`` channels). ``mid`` is accepted only so both heads share one
    constructor shape; it has no effect here.

    Note: the original ``Classifier_Module`` returns inside its loop and so sums only the
    first two branches; it is unused by ProDA. This one sums all of them.
    """

    def __init__(
        self,
        in_ch: int,
        num_classes: int,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        mid: int | None = None,
    ) -> None:
        super().__init__()
        del mid  # no intermediate width in the classic head
        self.feat_channels = in_ch
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_ch, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return {"feat": x, "out": out}

