"""Writing the Synapse layout's files, for the converters and the phantom generators alike::

    OUT/train_npz/CASE_sliceNNN.npz   image, label: float32 (H, W); one slice per file
    OUT/test_vol_h5/CASE.npy.h5       image, label: float32 (D, H, W); attribute spacing (z, y, x) mm

Needs neither SimpleITK nor torch, so the phantom (and bench.gpu_report, which writes one) runs
where they are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from datasets.common import IMAGE_KEY, LABEL_KEY, SPACING_ATTR
from datasets.lists import SLICE_SUFFIX, VOLUME_SUFFIX, slice_name


def write_training_slices(train_dir: Path, case: str, image: np.ndarray, label: np.ndarray) -> list[str]:
    """Write each slice of a case as ``train_dir/CASE_sliceNNN.npz``; returns the slice names."""
    train_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(image.shape[0]):
        name = slice_name(case, index)
        np.savez(train_dir / (name + SLICE_SUFFIX), image=image[index].astype(np.float32), label=label[index].astype(np.float32))
        names.append(name)
    return names


def write_volume(test_dir: Path, case: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None) -> Path:
    """Write a case as ``test_dir/CASE.npy.h5`` (float32 image and label, spacing attribute)."""
    test_dir.mkdir(parents=True, exist_ok=True)
    path = test_dir / (case + VOLUME_SUFFIX)
    with h5py.File(path, "w", locking=False) as file:
        file.create_dataset(IMAGE_KEY, data=image.astype(np.float32))
        file.create_dataset(LABEL_KEY, data=label.astype(np.float32))
        if spacing is not None:
            file.attrs[SPACING_ATTR] = np.asarray(spacing, np.float64)
    return path
