"""Slice-wise inference of a 2D network over 3D volumes, exactly per the evaluation protocol.

Each axial slice (first axis) is resized to the network's input size with cubic interpolation
and normalised exactly as in training (``datasets.synapse.preprocess_batch``, the batched torch
form of ``preprocess_slice``), the network's argmax is resized back with nearest-neighbour
interpolation (``datasets.resize.zoom_labels``), both on the network's device. Slices go through the network in
batches; the labels equal one-slice-at-a-time prediction except where float32 rounding (about
1e-6 in the logits: batched matrix products accumulate in another order) decides a near-tie
between two classes -- 6 of 4.2 million voxels for an untrained DAE-Former. ``batch_size=1`` is
the published loop exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from datasets.preprocess import preprocess_batch
from datasets.resize import zoom_labels
from utils.devices import autocast

# Slices resized together (the network still sees ``batch_size`` at a time).
RESIZE_CHUNK = 32


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    img_size: tuple[int, int],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: str = "off",
) -> np.ndarray:
    """Predict a label volume slice by slice, the protocol's resizes on ``device``.

    The cubic resize in and the nearest resize back are scipy's ``zoom`` written as matrix
    products and index gathers (``datasets.resize``), batched on the network's device: the
    labels equal the scipy path's (the float64 products give scipy's numbers; a test and
    ``bench/resize_speed.py`` count the differences, none so far).

    Args:
        model: network in eval mode, mapping (B, 1, h, w) -- (B, K, h, w) for K channels -- to
            logits (B, C, h, w).
        image: (D, H, W) volume with intensities in [0, 1], or (D, K, H, W) of K channels.
        img_size: (h, w) the network's input size.
        batch_size: slices per forward pass.
        device: where the network runs.
        amp: "off", "bf16" or "fp16" autocast.

    Returns:
        (D, H, W) uint8 label volume.
    """
    device = torch.device(device)
    height, width = image.shape[-2:]
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    # (D, H, W) whether or not the image has a channel axis.
    prediction = np.empty((image.shape[0], height, width), dtype=np.uint8)
    # The resizes are matrix products that pay off on many slices at once, whatever number of
    # slices the network takes per forward pass.
    chunk = max(batch_size, RESIZE_CHUNK)
    for start in range(0, image.shape[0], chunk):
        x = preprocess_batch(volume[start : start + chunk].to(device, non_blocking=True), img_size)
        # Each batch's class indices are written straight into one buffer per chunk (no list,
        # no cat, no copy) and converted to uint8 once per chunk: at batch 1 on a CPU every extra
        # small operation per slice costs a round trip of the thread pool, which can cost more
        # than a cheap network itself.
        indices = torch.empty((len(x), *x.shape[2:]), dtype=torch.int64, device=device)
        for offset, batch in zip(range(0, len(x), batch_size), x.split(batch_size)):
            with autocast(device, amp):
                logits = model(batch)
            # max(dim=1).indices is argmax(dim=1), the first maximum on ties included, but on
            # a CPU it reduces the strided class axis ~10x faster (3.7-9.2 -> 0.5 ms per 224x224
            # slice of 9 classes on the README's AMD EPYC). The maxima go to a scratch tensor
            # of the logits' own dtype, so no rounding can create or break a tie.
            torch.max(logits, dim=1, out=(logits.new_empty(0), indices[offset : offset + len(batch)]))
        # uint8 before the nearest resize: the gather then moves a byte per voxel, not 8.
        labels = zoom_labels(indices.to(torch.uint8), (height, width))
        prediction[start : start + len(labels)] = labels.cpu().numpy()
    return prediction
