"""Output-space discriminator for the warm-up stage (AdaptSegNet-style, ProDA's variant).

Module names (``conv1``..``conv4``, ``classifier``) mirror the original
``models/discriminator.py::FCDiscriminator`` so warm-up checkpoints load by name.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["FCDiscriminator"]


class FCDiscriminator(nn.Module):
    """Fully convolutional patch discriminator on softmax maps ``[B, num_classes, H, W]``.

    conv(C->ndf, k3 s2 p1)-ReLU-conv(ndf->2ndf)-ReLU-conv(2ndf->4ndf)-ReLU-conv(4ndf->8ndf)
    -LeakyReLU(0.2)-conv1x1(8ndf->1). Kernel 3 (AdaptSegNet uses 4), and plain ReLU in the
    first three stages, exactly as ProDA. Output: ``[B, 1, H/16, W/16]`` (ceil) raw scores,
    to be fed to an LS-GAN (MSE) or BCE-with-logits loss. PyTorch default init, as the
    original.

    Args:
        num_classes: input channels (one per class).
        ndf: base channel count (64 = original); smaller for CPU demos.
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)
        self.classifier = nn.Conv2d(ndf * 8, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
