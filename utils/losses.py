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
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = (probs * probs).sum(dims) + onehot.sum(dims)  # onehot^2 == onehot
    return (1 - (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)).mean()


class CEDiceLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * DiceLoss``; returns (total, ce, dice)."""

    def __init__(self, ce_weight: float = CE_WEIGHT, dice_weight: float = DICE_WEIGHT) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(logits.float(), target.long())
        dice = dice_loss(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice
