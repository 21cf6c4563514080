"""Shared steps of the converters to the Synapse format: reading NIfTI pairs, intensity scaling,
writing training slices and test volumes, and the deterministic 70 / 10 / 20 split rule.

Output layout (what ``datasets.synapse`` reads)::

    OUT/train_npz/CASE_sliceNNN.npz   image, label: float32 (H, W); one slice per file
    OUT/test_vol_h5/CASE.npy.h5       image, label: float32 (D, H, W); attribute spacing (z, y, x) mm
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from datasets.common import IMAGE_KEY, LABEL_KEY, SPACING_ATTR, DataError
from datasets.lists import SLICE_SUFFIX, VOLUME_SUFFIX, slice_name

# How far the headers of an image and its label may disagree and still describe one voxel grid:
# float32 header rounding and converters that round to micrometres stay far below these; a label
# drawn on another grid is far above them. Spacing is relative (an error of 1e-4 moves the far
# edge of a 512-voxel axis by 0.05 voxel), origin in units of the smallest voxel, direction
# cosines absolute (1e-4 rad turns the edge of a 400 mm field of view by 0.04 mm).
SPACING_RTOL = 1e-4
ORIGIN_TOL_VOXELS = 1e-2
DIRECTION_ATOL = 1e-4


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def check_same_grid(image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path) -> None:
    """Raise a DataError naming both files and the property (spacing, origin, direction) in
    which the label's voxel grid differs from the image's (same size assumed)."""
    spacing = np.array(image.GetSpacing())
    checks = (
        ("spacing (x, y, z) mm", image.GetSpacing(), label.GetSpacing(), SPACING_RTOL * spacing),
        ("origin (x, y, z) mm", image.GetOrigin(), label.GetOrigin(), ORIGIN_TOL_VOXELS * spacing.min()),
        ("direction cosines", image.GetDirection(), label.GetDirection(), DIRECTION_ATOL),
    )
    for name, ours, theirs, tolerance in checks:
        if not np.all(np.abs(np.subtract(ours, theirs)) <= tolerance):
            raise DataError(
                f"{image_path} and {label_path} differ in {name}: {_fmt(ours)} vs {_fmt(theirs)}; "
                "the label must lie on the image's voxel grid -- resample it onto the image or fix its header"
            )


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DataError(f"{path} is not a readable NIfTI file: {' '.join(str(error).split())[:200]}") from None


def read_nifti_pair(
    image_path: Path, label_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D image and its label volume.

    Returns:
        image (D, H, W) as stored, label float32 (D, H, W) class ids, spacing (z, y, x) in mm.

    Raises:
        DataError: unreadable file, not 3D, shapes or geometry (spacing, origin, direction)
            differ, or labels outside [0, num_classes).
    """
    image_itk, label_itk = _read(image_path), _read(label_path)
    image, label = sitk.GetArrayFromImage(image_itk), sitk.GetArrayFromImage(label_itk)
    if image.ndim != 3:
        raise DataError(f"{image_path} has {image.ndim} dimensions {image.shape}; expected a 3D volume")
    if image.shape != label.shape:
        raise DataError(f"{image_path} has shape {image.shape} (z, y, x) but {label_path} has {label.shape}; they must match")
    check_same_grid(image_itk, label_itk, image_path, label_path)
    fractional = np.issubdtype(label.dtype, np.floating) and (label != np.round(label)).any()
    if fractional or label.min() < 0 or label.max() >= num_classes:
        raise DataError(
            f"{label_path}: label values span [{label.min():g}, {label.max():g}]"
            + (" with fractions" if fractional else "")
            + f"; expected class ids 0..{num_classes - 1}"
        )
    x, y, z = image_itk.GetSpacing()
    return image, label.astype(np.float32), (float(z), float(y), float(x))


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
