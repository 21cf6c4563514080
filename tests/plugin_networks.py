"""Networks for testing how train.py behaves around them: a preemption at a chosen step and an
evaluation slower than the collective timeout. Both are the tests' tiny U-Net otherwise."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from networks.UNet import UNet


class SignalAt(UNet):
    """Sends SIGTERM to its own process during training forward number ``signal_at`` -- once:
    the first time it does, it creates ``once_file``, and it never signals while that exists."""

    def __init__(self, *args, signal_at: int = 1, once_file: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.signal_at, self.once_file, self.calls = signal_at, Path(once_file), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.signal_at and not self.once_file.exists():
                self.once_file.touch()
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


class SlowEval(UNet):
    """Sleeps ``seconds`` before every forward pass in eval mode (every evaluated slice)."""

    def __init__(self, *args, seconds: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            time.sleep(self.seconds)
        return super().forward(x)


class SignalGroupAt(SignalAt):
    """As :class:`SignalAt`, but sends SIGTERM to its whole process group -- what a scheduler
    that signals every process of a job does -- so the loader workers receive it too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.signal_at and not self.once_file.exists():
                self.once_file.touch()
                os.killpg(os.getpgid(0), signal.SIGTERM)
        return UNet.forward(self, x)


class HalfSizeLogits(UNet):
    """Breaks the network contract: its logits are half the input's height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(super().forward(x), 2)


class CountsOnly(UNet):
    """Breaks the network contract: it returns a tuple holding no logits at the input's size."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = super().forward(x)
        return logits.mean(dim=(2, 3)), logits.sum(dim=(1, 2, 3))
