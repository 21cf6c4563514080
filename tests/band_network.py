"""A network whose prediction is a fixed function of intensity, for checking evaluation numbers.

Its 1x1 convolution gives each class a logit linear in the pixel value, so the argmax splits the
intensity range into bands: predictions overlap the phantom's organs partly, which exercises every
branch of the metrics with non-trivial Dice and HD95 values.
"""

from __future__ import annotations

import torch
from torch import nn


class IntensityBands(nn.Module):
    def __init__(self, num_classes: int = 9, img_size: int = 224) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.img_size = img_size
        self.conv = nn.Conv2d(1, num_classes, 1)
        centres = torch.linspace(-1, 1, num_classes)
        with torch.no_grad():
            # logit_c(x) = 2 c_k x - c_k^2 is largest for the centre c_k closest to x.
            self.conv.weight.copy_((2 * centres).view(-1, 1, 1, 1))
            self.conv.bias.copy_(-(centres**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
