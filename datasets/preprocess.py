"""The network's input preprocessing, shared by the readers (training) and
``utils.inference`` (evaluation), so both feed the network exactly the same numbers.

Volumes (one grey channel): ``preprocess_slice`` / ``resize_label`` are the reference -- one
slice, scipy ``zoom``, as the published protocol. ``preprocess_batch`` / ``resize_labels`` do the
same to a whole batch of slices with torch on any device (``datasets.resize``), equal to the
reference to float32 rounding for images and exactly for labels.

2D images (RGB): ``preprocess_rgb`` resizes bilinearly and normalises alike.

Every image the network sees is ``(x - IMAGE_MEAN) / IMAGE_STD`` of intensities in [0, 1].
It lives apart from the readers so that the evaluation does not import a reader to get it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import zoom

from datasets.common import IMAGE_MEAN, IMAGE_STD
from datasets.resize import NEAREST_ORDER, SPLINE_ORDER, check_batch, check_size, zoom_images, zoom_labels

RGB_MAX = 255.0


def normalise(image: np.ndarray) -> np.ndarray:
    """``(image - IMAGE_MEAN) / IMAGE_STD`` as float32: intensities in [0, 1] to [-1, 1]."""
    return ((image - IMAGE_MEAN) / IMAGE_STD).astype(np.float32, copy=False)


def _resize(array: np.ndarray, img_size: Sequence[int], order: int) -> np.ndarray:
    """``zoom`` a 2D array to ``img_size`` with spline ``order``; unchanged if already that size."""
    if array.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W), got shape {array.shape}")
    size = check_size(img_size, "img_size")
    if array.shape == size:
        return array
    return zoom(array, (size[0] / array.shape[0], size[1] / array.shape[1]), order=order)


def preprocess_slice(image: np.ndarray, img_size: Sequence[int]) -> np.ndarray:
    """Resize a slice for the network and normalise it.

    Args:
        image: (H, W) intensities in [0, 1].
        img_size: (S_h, S_w) network input size.

    Returns:
        float32 (S_h, S_w): ``zoom(image, order=3)`` (skipped when already that size), then
        ``(x - IMAGE_MEAN) / IMAGE_STD``.
    """
    return normalise(_resize(np.asarray(image, dtype=np.float32), img_size, SPLINE_ORDER))


def resize_label(label: np.ndarray, img_size: Sequence[int]) -> np.ndarray:
    """Resize a label map with nearest neighbour (``zoom`` order 0).

    Args:
        label: (H, W) integer class ids.
        img_size: (S_h, S_w).

    Returns:
        int64 (S_h, S_w).
    """
    return _resize(np.asarray(label, dtype=np.int64), img_size, NEAREST_ORDER)


def preprocess_batch(images: torch.Tensor, img_size: Sequence[int]) -> torch.Tensor:
    """``preprocess_slice`` for a batch of slices, in torch on the batch's device.

    Args:
        images: (B, H, W) intensities in [0, 1], or (B, C, H, W) for slices of several
            channels, any floating dtype, any device.
        img_size: (S_h, S_w) network input size.

    Returns:
        float32 (B, 1, S_h, S_w) -- or (B, C, S_h, S_w) -- on the device of ``images``: each
        slice (channel) equal to ``preprocess_slice(images[b], img_size)`` to within a float32
        rounding or two (the zoom is computed in float64, as scipy does; see ``datasets.resize``).
    """
    check_batch(images, "images", channels=True)
    size = check_size(img_size, "img_size")
    resized = zoom_images(images.float(), size)
    normalised = (resized - IMAGE_MEAN) / IMAGE_STD
    return normalised.unsqueeze(1) if images.ndim == 3 else normalised


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``resize_label`` for a batch of label maps, in torch on the batch's device.

    Typically brings the network's (B, S_h, S_w) argmax back to the volume's (H, W).

    Args:
        labels: (B, h, w) integer class ids, any device.
        size: (H, W) output size.

    Returns:
        int64 (B, H, W) on the device of ``labels``, element for element equal to
        ``resize_label(labels[b], size)``.
    """
    check_batch(labels, "labels")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
    return zoom_labels(labels.long(), size)


def preprocess_rgb(rgb: np.ndarray, img_size: Sequence[int]) -> np.ndarray:
    """Resize an RGB image (bilinear) and normalise it for the network.

    Args:
        rgb: uint8 (H, W, 3).
        img_size: (S_h, S_w).

    Returns:
        float32 (3, S_h, S_w): ``(x / 255 - IMAGE_MEAN) / IMAGE_STD``.
    """
    size = (int(img_size[1]), int(img_size[0]))
    if rgb.shape[1::-1] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return normalise(rgb.astype(np.float32).transpose(2, 0, 1) / RGB_MAX)
