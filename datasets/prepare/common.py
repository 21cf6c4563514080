"""Shared steps of the converters to the Synapse format: reading NIfTI pairs, intensity scaling
(the files are written by ``datasets.writing``) and the deterministic 70 / 10 / 20 split rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from datasets.common import DataError

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


GRID_FIX = "the label must lie on the image's voxel grid -- resample it onto the image or fix its header"
CHANNEL_GRID_FIX = "the channels of a case must share one voxel grid -- resample them onto the first or fix the header"


def check_same_grid(image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path, fix: str = GRID_FIX) -> None:
    """Raise a DataError naming both files and the property (spacing, origin, direction) in
    which the label's (or another channel's) voxel grid differs from the image's (same size
    assumed); ``fix`` says what to do."""
    spacing = np.array(image.GetSpacing())
    checks = (
        ("spacing (x, y, z) mm", image.GetSpacing(), label.GetSpacing(), SPACING_RTOL * spacing),
        ("origin (x, y, z) mm", image.GetOrigin(), label.GetOrigin(), ORIGIN_TOL_VOXELS * spacing.min()),
        ("direction cosines", image.GetDirection(), label.GetDirection(), DIRECTION_ATOL),
    )
    for name, ours, theirs, tolerance in checks:
        if not np.all(np.abs(np.subtract(ours, theirs)) <= tolerance):
            raise DataError(f"{image_path} and {label_path} differ in {name}: {_fmt(ours)} vs {_fmt(theirs)}; {fix}")


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
    return _checked_pair(_read(image_path), _read(label_path), image_path, label_path, num_classes)


def _checked_pair(
    image_itk: sitk.Image, label_itk: sitk.Image, image_path: Path, label_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
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


def read_nifti_channels(
    image_paths: Sequence[Path], label_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read the channels of one case (nnU-Net's ``NAME_0000``, ``NAME_0001``, ...) and its label.

    Returns:
        image (D, H, W) for one channel -- exactly ``read_nifti_pair`` -- or (D, C, H, W) for
        several, the channel axis just before (H, W) as the readers expect; label float32
        (D, H, W); spacing (z, y, x) in mm.

    Raises:
        DataError: as ``read_nifti_pair``, or a channel whose shape or voxel grid differs from
            the first channel's (one line naming both files).
    """
    if len(image_paths) == 1:
        return read_nifti_pair(image_paths[0], label_path, num_classes)
    images = [_read(path) for path in image_paths]
    first, label, spacing = _checked_pair(images[0], _read(label_path), image_paths[0], label_path, num_classes)
    check_channel_grids(images, image_paths)
    return np.stack([first, *(sitk.GetArrayFromImage(image) for image in images[1:])], axis=1), label, spacing


def check_channel_grids(images: Sequence[sitk.Image], paths: Sequence[Path]) -> None:
    """The channels of one scan share the first channel's voxel grid: size, spacing, origin and
    direction (a DataError naming both files otherwise)."""
    for path, image in zip(paths[1:], images[1:]):
        if image.GetSize() != images[0].GetSize():
            raise DataError(
                f"{path} has {image.GetSize()} voxels (x, y, z) but {paths[0]} has {images[0].GetSize()}; {CHANNEL_GRID_FIX}"
            )
        check_same_grid(images[0], image, paths[0], path, CHANNEL_GRID_FIX)
