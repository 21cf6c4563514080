"""The training objective of the published recipe: weighted cross-entropy plus Dice loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Smoothing term of the reference Dice loss, in numerator and denominator alike.
DICE_SMOOTH = 1e-5
# Published weights of the two terms (--ce_weight, --dice_weight).
CE_WEIGHT = 0.4
DICE_WEIGHT = 0.6


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of the reference implementation.

    Softmax over classes, one-hot target; for every class c (background included)
    ``1 - (2 * sum(p_c * t_c) + s) / (sum(p_c^2) + sum(t_c^2) + s)`` with the sums over the whole
    batch and all pixels, then the mean over classes.

    Args:
        logits: (B, C, H, W) raw scores.
        target: (B, H, W) integer class ids in [0, C).

    Returns:
        A scalar tensor.
    """
    return _dice_of_probabilities(logits.float().softmax(dim=1), target)


def _dice_of_probabilities(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``dice_loss`` from the softmax probabilities (B, C, H, W). The one-hot target stays a
    boolean mask: an int64 one-hot of 24x9x224x224 is 87 MB, written and converted every step."""
    classes = torch.arange(probs.shape[1], device=target.device).view(1, -1, 1, 1)
    onehot = target.unsqueeze(1) == classes
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = (probs * probs).sum(dims) + onehot.sum(dims)  # onehot^2 == onehot
    return (1 - (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)).mean()


class CEDiceLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * DiceLoss``; returns (total, ce, dice).

    Both terms start from one log-softmax: the cross-entropy is its negative log-likelihood (what
    ``F.cross_entropy`` computes) and the Dice term takes its exponential as the probabilities.
    """

    def __init__(self, ce_weight: float = CE_WEIGHT, dice_weight: float = DICE_WEIGHT) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs = logits.float().log_softmax(dim=1)
        ce = F.nll_loss(log_probs, target.long())
        dice = _dice_of_probabilities(log_probs.exp(), target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice
