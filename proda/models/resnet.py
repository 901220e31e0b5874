"""DeepLab-v2 ResNet backbone (output stride 8) with torchvision's module names.

Why a custom ResNet rather than torchvision's: the original ProDA backbone is the Caffe-style
DeepLab-v2 variant. It differs from torchvision in three ways that change the numbers:

* the stride of a downsampling ``Bottleneck`` sits on its *first 1x1* conv, not on the 3x3;
* the stem's max-pool uses ``ceil_mode=True`` (so 1024x2048 becomes 129x257, not 128x256);
* layer3/layer4 keep stride 1 and dilate every 3x3 conv by 2/4, *including* the first block
  of the layer (torchvision's ``replace_stride_with_dilation`` keeps the old dilation there).

The parameter names and shapes are exactly torchvision's (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so ImageNet or SimCLR weights saved in
torchvision layout load by name; only ``fc.*`` has no counterpart here.
"""

from __future__ import annotations

from torch import Tensor, nn

from proda.errors import ConfigError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "RESNET_SPECS",
    "ResNet",
    "init_like_original",
    "output_size",
]


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Stride on ``conv1``; both convs dilated.

    The original ProDA code has no dilated BasicBlock; dilating both 3x3 convs (as DRN does)
    keeps the receptive-field growth that the stride would have given.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 block (ResNet-50/101), Caffe style: the stride is on ``conv1``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: depth -> (block type, blocks per layer); the same table as torchvision.
RESNET_SPECS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def init_like_original(module: nn.Module) -> None:
    """Initialise as the original ``ResNet101.__init__`` leaves a fresh net.

    Every ``Conv2d`` weight ~ N(0, 0.01); every BatchNorm/GroupNorm weight 1, bias 0. Conv
    biases and ``Linear`` layers keep PyTorch's defaults (the original's own head init is
    overwritten by this loop or never reaches them). Pretrained backbone weights are meant
    to be loaded on top.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """DeepLab-v2 ResNet-{18,34,50,101} with output stride 8.

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101 (Bottleneck).
        width: base channel count; 64 is the standard network, smaller values (e.g. 8 or 16)
            scale every channel count proportionally for fast CPU demos and tests.

    ``forward`` returns the layer4 feature map ``[B, out_channels, h, w]`` with
    ``h, w = output_size(H), output_size(W)`` (1024x2048 -> 129x257, 512x896 -> 65x113).
    ``out_channels`` is ``8 * width * block.expansion`` (2048 for ResNet-101 at width 64).
    """

    def __init__(self, depth: int = 101, width: int = 64) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ConfigError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if width < 1:
            raise ConfigError(f"ResNet width must be a positive integer, got {width}")
        block, layers = RESNET_SPECS[depth]
        self.depth = depth
        self.width = width
        self._inplanes = width

        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], dilation=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], dilation=4)
        self.out_channels: int = width * 8 * block.expansion
        self.low_channels: int = width * block.expansion  # of layer1, the stride-4 map
        init_like_original(self)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilation: int = 1,
    ) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [block(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = out
        layers += [block(out, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """Image ``[B,3,H,W]`` -> layer4 features at stride 8."""
        return self.low_and_high_features(x)[1]

    def low_and_high_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image ``[B,3,H,W]`` -> (layer1 map at stride 4, layer4 map at stride 8)."""
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def output_size(size: int) -> int:
    """Spatial size of the stride-8 output for an input side of ``size`` pixels.

    conv1 (s2, p3, k7) -> max-pool (s2, p1, k3, ceil) -> layer2 (s2 on a 1x1 / 3x3 p1 conv).
    """
    size = (size + 2 * 3 - 7) // 2 + 1  # conv1
    size = -(-(size + 2 * 1 - 3) // 2) + 1  # max-pool, ceil division
    return (size - 1) // 2 + 1  # layer2: 1x1 s2 (Bottleneck) or 3x3 s2 p1 (BasicBlock)

