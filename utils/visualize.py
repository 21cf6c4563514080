"""Pictures of segmentations: colour overlays for TensorBoard panels and test-time montages."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

OVERLAY_ALPHA = 0.45
MONTAGE_SLICES = 6
MONTAGE_MIN_SIDE = 192  # slices smaller than this are enlarged (nearest) for reading
LEGEND_LINE = 18
# Distinct colours for the 8 Synapse organs (aorta red, gallbladder green, kidneys blue and
# cyan, liver magenta, pancreas yellow, spleen purple, stomach orange); further classes get
# evenly spaced hues.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (70, 240, 240),
    (240, 50, 230),
    (255, 225, 25),
    (145, 30, 180),
    (245, 130, 48),
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
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return overlay_rgb(np.repeat(grey[..., None], 3, axis=2), labels, num_classes)


def overlay_rgb(rgb: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Colour ``labels`` over an RGB image.

    Args:
        rgb: uint8 (H, W, 3).
        labels: (H, W) class ids in [0, num_classes).

    Returns:
        (3, H, W) uint8 RGB.
    """
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    ids = torch.from_numpy(np.asarray(labels)).long()
    coloured = (ids > 0) & (ids < num_classes)
    palette = torch.tensor([(0, 0, 0), *class_colours(num_classes)], dtype=torch.uint8)
    painted = torch.where(coloured, palette[ids.clamp(0, num_classes - 1)].permute(2, 0, 1), image)
    # the blend of torchvision's draw_segmentation_masks, whose 1 s import a picture need not pay
    return (image * (1 - OVERLAY_ALPHA) + painted * OVERLAY_ALPHA).to(torch.uint8).numpy()


def panel(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Side by side: image, ground-truth overlay (when given), prediction overlay.

    Returns:
        (3, H, 3W) uint8, or (3, H, 2W) without ``truth``.
    """
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)[None].repeat(3, axis=0)
    parts = [grey] if truth is None else [grey, overlay(image, truth, num_classes)]
    return np.concatenate([*parts, overlay(image, prediction, num_classes)], axis=2)


def montage(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, names: list[str]) -> Image.Image:
    """Rows of image | ground truth | prediction for up to MONTAGE_SLICES slices that show a
    class, under column titles and a legend of the class colours; small slices are enlarged.

    Args:
        image: (D, H, W) intensities in [0, 1].
        prediction, truth: (D, H, W) class ids (``truth`` None for unlabeled scans).
        names: names of classes 1..C-1.
    """
    num_classes = len(names) + 1
    shown = (prediction > 0) if truth is None else (prediction > 0) | (truth > 0)
    candidates = np.flatnonzero(shown.any(axis=(1, 2)))
    if candidates.size == 0:
        candidates = np.arange(image.shape[0])
    picks = candidates[np.linspace(0, candidates.size - 1, min(MONTAGE_SLICES, candidates.size)).round().astype(int)]
    rows = [panel(image[z], prediction[z], None if truth is None else truth[z], num_classes) for z in picks]
    scale = max(1, MONTAGE_MIN_SIDE // image.shape[2])
    grid = np.concatenate(rows, axis=1).transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
    width = image.shape[2] * scale
    columns = ["image", "prediction"] if truth is None else ["image", "ground truth", "prediction"]

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, x, y = [], 4, LEGEND_LINE
    for name, colour in zip(names, class_colours(num_classes)):
        span = 14 + int(draw.textlength(name)) + 10
        if x + span > grid.shape[1] and x > 4:
            x, y = 4, y + LEGEND_LINE
        entries.append((x, y, name, colour))
        x += span
    header = y + LEGEND_LINE
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "black")
    canvas.paste(Image.fromarray(np.ascontiguousarray(grid)), (0, header))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(columns):
        draw.text((k * width + 4, 4), title, fill="white")
    for x, y, name, colour in entries:
        draw.rectangle((x, y + 4, x + 10, y + 14), fill=colour)
        draw.text((x + 14, y + 3), name, fill="white")
    return canvas
