"""The network contract, checked once where a network is built: for a ``(B, C, H, W)`` batch
of the data's channels at the input size, the network returns ``(B, num_classes, H, W)``
logits, in train mode and in eval mode (after the library adapter's one rule for tuple and dict
outputs, ``utils.loader.segmentation_logits``).

A network that breaks it -- logits at half the input size, the wrong class count, a tuple with
no logits -- would otherwise be scored after a nearest resize (not the published protocol) or
end in a traceback hours into a run; here it is a one-line error before anything is written.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError

# Two slices, not one: BatchNorm after a global pooling (DeepLabV3+'s ASPP, SwinUNETR's
# bottleneck) cannot train on a single value per channel, and neither could the run.
CHECK_BATCH = 2


def check_network(model: nn.Module, num_classes: int, channels: int, img_size: int, device: torch.device) -> None:
    """Run one zero batch of ``CHECK_BATCH`` through ``model`` in train and in eval mode and check the logits' shape.

    The check leaves no trace: BatchNorm statistics and the random streams are as they were,
    and the network is given back in the mode it had.

    Raises:
        UserError: the output is not a tensor of shape (1, num_classes, img_size, img_size).
    """
    expected = (CHECK_BATCH, num_classes, img_size, img_size)
    batch = torch.zeros(CHECK_BATCH, channels, img_size, img_size, device=device)
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for mode in ("train", "eval"):
                model.train(mode == "train")
                try:
                    output = model(batch)
                except UserError:
                    raise
                except Exception as error:  # the user's network may fail in any way on a plain batch
                    raise UserError(
                        f"{type(model).__name__} failed on a {tuple(batch.shape)} batch in {mode} mode: "
                        f"{type(error).__name__}: {' '.join(str(error).split())}"
                    ) from None
                _check(output, expected, tuple(batch.shape), f"{type(model).__name__} in {mode} mode")
    finally:
        for kept, buffer in zip(buffers, model.buffers()):
            buffer.copy_(kept)
        model.train(was_training)


def _check(output: object, expected: tuple[int, ...], given: tuple[int, ...], who: str) -> None:
    if not isinstance(output, torch.Tensor):
        raise UserError(
            f"{who} returned a {type(output).__name__}, not a tensor of logits {expected}; return the logits from forward"
        )
    if tuple(output.shape) != expected:
        raise UserError(
            f"{who} returned logits of shape {tuple(output.shape)} for a {given} input; the contract is {expected} "
            "(the classes, at the input's height and width: upsample inside the network)"
        )
