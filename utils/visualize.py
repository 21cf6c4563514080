"""Pictures of segmentations: colour overlays for TensorBoard panels and test-time montages."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from torchvision.utils import draw_segmentation_masks

OVERLAY_ALPHA = 0.45
# Distinct colours for the 8 Synapse organs (aorta red, gallbladder green, kidneys blue and
# cyan, liver magenta, pancreas yellow, spleen purple, stomach orange); further classes get
# evenly spaced hues.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (70, 240, 240),
    (240, 50, 230), (255, 225, 25), (145, 30, 180), (245, 130, 48),
]


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """RGB colours of classes 1..num_classes-1."""
    colours = list(PALETTE[: num_classes - 1])
    extra = num_classes - 1 - len(colours)
    for k in range(extra):
        r, g, b = colorsys.hsv_to_rgb(k / max(extra, 1), 0.8, 0.95)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Colour ``labels`` over a grey ``image``.

    Args:
        image: (H, W) intensities in [0, 1].
        labels: (H, W) class ids in [0, num_classes).

    Returns:
        (3, H, W) uint8 RGB.
    """
    grey = torch.from_numpy((np.clip(image, 0, 1) * 255).astype(np.uint8)).expand(3, -1, -1)
    classes = torch.arange(1, num_classes).view(-1, 1, 1)
    masks = torch.from_numpy(np.asarray(labels)).unsqueeze(0) == classes
    return draw_segmentation_masks(grey, masks, alpha=OVERLAY_ALPHA, colors=class_colours(num_classes)).numpy()


def panel(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Side by side: image, ground-truth overlay (when given), prediction overlay.

    Returns:
        (3, H, 3W) uint8, or (3, H, 2W) without ``truth``.
    """
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)[None].repeat(3, axis=0)
    parts = [grey] if truth is None else [grey, overlay(image, truth, num_classes)]
    return np.concatenate([*parts, overlay(image, prediction, num_classes)], axis=2)
