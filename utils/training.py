"""The training step and what it needs: the published optimiser and schedule, the batch-size lr
rule, the random streams a checkpoint restores.

``train_step`` is the one place where an optimisation step is written; ``train.py`` runs it in
its loop and ``bench/train_speed.py`` times the very same function.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

from utils.devices import autocast

# The published recipe (the DAE-Former train.py): SGD with momentum 0.9 and weight decay 1e-4, poly power 0.9.
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
# The reference scales the lr by batch/24 when the batch is not 24 but divisible by 5.
REFERENCE_BATCH = 24
REFERENCE_BATCH_DIVISOR = 5
LR_RULES = ("reference", "off")


def scaled_lr(base_lr: float, batch_size: int, rule: str = "reference") -> float:
    """The lr the published code trains with: ``base_lr * batch / 24`` when the batch is not 24
    but divisible by 5 (so the published batch 20 trains at 0.05 * 20/24), else ``base_lr``.
    ``rule="off"`` always keeps ``base_lr``."""
    if rule == "reference" and batch_size != REFERENCE_BATCH and batch_size % REFERENCE_BATCH_DIVISOR == 0:
        return base_lr * batch_size / REFERENCE_BATCH
    return base_lr


def poly_lr(base_lr: float, iteration: int, total_iterations: int) -> float:
    """The lr after ``iteration`` steps of the poly schedule: ``base_lr * (1 - it / total) ** 0.9``."""
    return base_lr * (1 - min(iteration, total_iterations) / total_iterations) ** POLY_POWER


def build_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """SGD of the published recipe. On a GPU the fused implementation updates every parameter
    in a few kernels instead of several per tensor (the same update, computed in one pass)."""
    on_gpu = all(p.device.type == "cuda" for p in model.parameters())
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, fused=on_gpu or None)


def build_scheduler(optimizer: torch.optim.Optimizer, total_iterations: int) -> PolynomialLR:
    """The poly schedule, stepped once per optimisation step."""
    return PolynomialLR(optimizer, total_iters=total_iterations, power=POLY_POWER)


@dataclass(frozen=True)
class StepLosses:
    """The losses of one step as 0-d tensors on the training device (reading them synchronises
    with the GPU, so the loop reads them only every few steps)."""

    loss: torch.Tensor
    ce: torch.Tensor
    dice: torch.Tensor

    def __add__(self, other: StepLosses) -> StepLosses:
        return StepLosses(self.loss + other.loss, self.ce + other.ce, self.dice + other.dice)

    def __truediv__(self, count: float) -> StepLosses:
        return StepLosses(self.loss / count, self.ce / count, self.dice / count)


def train_step(
    model: nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
    amp: str = "off",
) -> StepLosses:
    """One optimisation step over one or more micro-batches (gradient accumulation).

    Each micro-batch's loss is divided by their number before its backward pass, so for a loss
    that is a mean over samples the step equals one step on the concatenated batch. (The Dice
    term sums over its micro-batch, so with accumulation it is the mean of per-micro-batch Dice
    losses -- as in every accumulation implementation.) Under DistributedDataParallel the
    gradients are all-reduced once, after the last micro-batch.

    Args:
        model: the network in train mode (possibly DDP- or compile-wrapped).
        micro_batches: ``(images (B, Cin, H, W), labels (B, H, W))`` already on the device.
        criterion: returns ``(total, ce, dice)`` (``utils.losses.CEDiceLoss``).
        amp: "off", "bf16" or "fp16" autocast.

    Returns:
        The mean losses over the micro-batches, detached, on the device.
    """
    device = micro_batches[0][0].device
    count = len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(3, device=device)
    for k, (images, labels) in enumerate(micro_batches):
        last = k == count - 1
        sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with autocast(device, amp):
                logits = model(images)
            loss, ce, dice = criterion(logits, labels)
            scaler.scale(loss / count).backward()
        totals += torch.stack([loss.detach(), ce.detach(), dice.detach()]).float()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    totals /= count
    return StepLosses(totals[0], totals[1], totals[2])


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside the torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random stream training draws from, in a form ``weights_only`` loading accepts."""
    numpy_state = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [version, list(python_state), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the streams of :func:`rng_state`. GPU streams are restored for the GPUs visible
    now only, so a checkpoint written with 8 GPUs resumes on 1 GPU or on the CPU."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        for index, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)
