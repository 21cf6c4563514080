"""U-Net (Ronneberger et al., 2015): the classic convolutional baseline.

Same contract as every network here, so it swaps in for DAE-Former with ``--module
networks.UNet.UNet``; small widths make it the fast network of the CPU demo and the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from networks.blocks import check_input


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BatchNorm -> ReLU) twice: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``depth`` 2x downsamplings; stage k has ``base_channels * 2**k`` channels.

    Args:
        num_classes: output channels (background included).
        img_size: nominal input size, recorded for the scripts; any height and width that are
            multiples of 2**depth are accepted at run time.
        in_chans: input channels; a 1-channel batch is repeated to in_chans.
        base_channels: width of the first stage (the original paper: 64).
        depth: number of downsamplings (the original paper: 4).

    Shapes: (B, 1 or in_chans, H, W) -> logits (B, num_classes, H, W), no softmax.
    """

    # Its convolutions run faster in torch.channels_last on a CPU (utils.loader.to_device).
    channels_last = True

    def __init__(
        self,
        num_classes: int = 9,
        img_size: int = 224,
        in_chans: int = 1,
        base_channels: int = 32,
        depth: int = 4,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1 or base_channels < 1 or depth < 1:
            raise ValueError(
                "UNet: num_classes, in_chans, base_channels and depth must be positive, got "
                f"{num_classes}, {in_chans}, {base_channels}, {depth}"
            )
        if img_size % 2**depth:
            raise ValueError(f"UNet: img_size must be a multiple of 2**depth = {2**depth}, got {img_size}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.in_chans = in_chans
        self.divisor = 2**depth
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.stem = DoubleConv(in_chans, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[k], widths[k + 1]) for k in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(depth))
        self.fuse = nn.ModuleList(DoubleConv(2 * widths[k], widths[k]) for k in range(depth))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_input(x, self.in_chans, self.divisor, type(self).__name__))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(self.pool(x))
        for k in reversed(range(len(self.up))):
            x = self.fuse[k](torch.cat([skips[k], self.up[k](x)], dim=1))
        return self.head(x)
