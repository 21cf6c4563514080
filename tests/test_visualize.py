"""Colour overlays: the same pixels as torchvision's draw_segmentation_masks, without its import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.utils import draw_segmentation_masks

from utils.visualize import OVERLAY_ALPHA, class_colours, overlay, overlay_rgb

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("num_classes", [2, 9, 14])
def test_the_overlay_equals_torchvisions_drawing_bit_for_bit(num_classes):
    generator = np.random.default_rng(num_classes)
    rgb = generator.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    labels = generator.integers(0, num_classes, (37, 41))
    masks = torch.from_numpy(labels).unsqueeze(0) == torch.arange(1, num_classes).view(-1, 1, 1)
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    expected = draw_segmentation_masks(image, masks, alpha=OVERLAY_ALPHA, colors=class_colours(num_classes)).numpy()
    np.testing.assert_array_equal(overlay_rgb(rgb, labels, num_classes), expected)


def test_a_coloured_pixel_by_hand():
    # grey 100 under the aorta's red (230, 25, 75) at alpha 0.45: 55 + 103.5, 55 + 11.25, 55 + 33.75, truncated
    image = np.full((1, 2), 100 / 255)
    pixels = overlay(image, np.array([[0, 1]]), 9)[:, 0]
    np.testing.assert_array_equal(pixels, [[100, 158], [100, 66], [100, 88]])


def test_drawing_a_training_picture_does_not_import_torchvision():
    code = (
        "import sys, numpy as np; from utils.visualize import panel; "
        "panel(np.zeros((8, 8)), np.ones((8, 8), int), np.ones((8, 8), int), 9); "
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
