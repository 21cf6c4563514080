"""Prediction and pixel metrics for 2D image data sets (ISIC 2018 skin lesions).

Metrics per foreground class c, one class against the rest, from the confusion counts
(TP, FP, FN, TN) of the pixels:

    Dice = 2TP / (2TP + FP + FN)        IoU = TP / (TP + FP + FN)
    sensitivity = TP / (TP + FN)        specificity = TN / (TN + FP)
    accuracy = (TP + TN) / (TP + FP + FN + TN)

The data-set figures pool the counts of all images first (one confusion matrix over every test
pixel, as the skin-lesion evaluation of the lineage does); per-image figures are also reported.
A ratio whose denominator is 0 (e.g. sensitivity of an image without lesion) is 1.0: there was
nothing to find and nothing was wrongly found. Predictions are scored at each image's own size
(the network's argmax resized back with nearest neighbour).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from datasets.isic import preprocess_rgb, resize_mask
from utils.devices import autocast

METRIC_NAMES = ("dice", "iou", "sensitivity", "specificity", "accuracy")
TP, FP, FN, TN = range(4)


@torch.inference_mode()
def predict_image(
    model: nn.Module, rgb: np.ndarray, img_size: tuple[int, int], device: torch.device | str = "cpu", amp: str = "off"
) -> np.ndarray:
    """Segment one RGB image.

    Args:
        model: network in eval mode, (1, 3, h, w) -> logits (1, C, h, w).
        rgb: uint8 (H, W, 3).
        img_size: (h, w) network input size.

    Returns:
        uint8 (H, W) class ids at the image's own size.
    """
    device = torch.device(device)
    x = torch.from_numpy(preprocess_rgb(rgb, img_size))[None].to(device)
    with autocast(device, amp):
        logits = model(x)
    label = logits.argmax(dim=1)[0].to("cpu", torch.uint8).numpy()
    return resize_mask(label, rgb.shape[:2]).astype(np.uint8)


def confusion(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel confusion counts of each foreground class against the rest.

    Args:
        prediction, truth: (H, W) class ids of the same shape.

    Returns:
        int64 (num_classes - 1, 4): TP, FP, FN, TN of classes 1..num_classes-1.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must have the same shape")
    counts = np.zeros((num_classes - 1, 4), np.int64)
    for c in range(1, num_classes):
        pred, gt = prediction == c, truth == c
        tp = int(np.count_nonzero(pred & gt))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(gt)) - tp
        counts[c - 1] = (tp, fp, fn, pred.size - tp - fp - fn)
    return counts


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0)


def scores(counts: np.ndarray) -> np.ndarray:
    """The metrics of ``METRIC_NAMES`` from confusion counts.

    Args:
        counts: (..., 4) TP, FP, FN, TN.

    Returns:
        float64 (..., 5): Dice, IoU, sensitivity, specificity, accuracy.
    """
    counts = np.asarray(counts, np.float64)
    tp, fp, fn, tn = counts[..., TP], counts[..., FP], counts[..., FN], counts[..., TN]
    return np.stack(
        [
            _ratio(2 * tp, 2 * tp + fp + fn),
            _ratio(tp, tp + fp + fn),
            _ratio(tp, tp + fn),
            _ratio(tn, tn + fp),
            _ratio(tp + tn, tp + fp + fn + tn),
        ],
        axis=-1,
    )
