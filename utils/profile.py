"""The cost of a network as this project reports it: parameters and GMACs of one slice.

One measurement for every caller -- ``bench.model``'s table, the comparison table of
``utils.compare`` and what a training run records -- so the numbers of a run and of the
benchmark agree. MACs are counted by torch's ``FlopCounterMode`` (2 FLOPs per
multiply-accumulate) on one forward pass in eval mode; it counts convolutions (also transposed
and grouped), mm, addmm, bmm, baddbmm and the fused attention kernels, and nothing for softmax,
normalisation, activations or element-wise arithmetic, nor biases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FLOPS_PER_MAC = 2  # FlopCounterMode counts a multiply-accumulate as 2 FLOPs
GIGA = 1e9
# Volume data reach a network as grey (B, 1, H, W) slices (a data set may set more channels).
SLICE_CHANNELS = 1
COST_KEY = "network_cost"  # where a training run records network_cost in its args.json


@contextlib.contextmanager
def train_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in training or eval mode for the block, then back in the mode it had."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def forward_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of ``model(example)`` in eval mode: the total and per aten operator."""
    with train_mode(model, training=False), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    by_operator = {str(op): flops // FLOPS_PER_MAC for op, flops in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() // FLOPS_PER_MAC, by_operator


def network_cost(model: nn.Module, in_chans: int | None = None, img_size: int = 224) -> dict[str, int | float]:
    """Parameters and GMACs per slice of ``model``, as the published tables give them.

    Args:
        model: the network, on any device (the example slice is made on its parameters' device).
        in_chans: channels of the slices the network is fed (None: a grey slice, 1).
        img_size: side of the square slice.

    Returns:
        ``{"params": all parameter elements, "gmacs": MACs of one (1, in_chans, img_size,
        img_size) forward pass / 1e9}``.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    example = torch.zeros(1, in_chans or SLICE_CHANNELS, img_size, img_size, device=device)
    total, _ = forward_macs(model, example)
    return {"params": sum(p.numel() for p in model.parameters()), "gmacs": total / GIGA}
