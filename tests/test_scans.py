"""New scans: any storage orientation reads as the same canonical array, predictions go back onto
the scan's own voxels, and broken scans are one-line errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from datasets.common import CT_WINDOW, DataError, normalise_volume
from datasets.scans import CANONICAL_ORIENTATION, read_scan, write_prediction

SPACING_XYZ = (0.8, 0.9, 2.5)
ORIGIN_XYZ = (10.0, -20.0, 30.0)
# numpy axes of the canonical (z, y, x) array -> how another file stores them
LAYOUTS = {
    "canonical": ((0, 1, 2), ()),
    "ras": ((0, 1, 2), (1, 2)),  # what nibabel writes by default: x and y flipped
    "sagittal_flipped": ((2, 0, 1), (1,)),  # slices along x, rows run inferior -> superior reversed
    "coronal_flipped": ((1, 0, 2), (0, 2)),
}


def canonical_scan() -> np.ndarray:
    """(D, H, W) = (5, 6, 7) HU values with no symmetry, partly outside the CT window."""
    return np.random.default_rng(0).uniform(-400, 600, (5, 6, 7)).astype(np.float32)


def stored_as(volume: np.ndarray, axes: tuple[int, ...], flips: tuple[int, ...]) -> sitk.Image:
    """The canonical volume (identity direction, SPACING_XYZ, ORIGIN_XYZ) stored with its numpy
    axes permuted by ``axes`` and then flipped along ``flips``, with the geometry written out by
    hand so that every voxel keeps its physical position."""
    array = np.flip(np.transpose(volume, axes), flips)
    direction = np.zeros((3, 3))
    spacing, origin = [0.0] * 3, np.array(ORIGIN_XYZ)
    for numpy_axis, source in enumerate(axes):
        index_axis, world_axis = 2 - numpy_axis, 2 - source  # ITK orders axes (x, y, z)
        sign = -1.0 if numpy_axis in flips else 1.0
        direction[world_axis, index_axis] = sign
        spacing[index_axis] = SPACING_XYZ[world_axis]
        if numpy_axis in flips:  # the first stored voxel is the canonical last one along this axis
            origin[world_axis] += (volume.shape[source] - 1) * SPACING_XYZ[world_axis]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.flatten().tolist())
    return image


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_storage_orientation_reads_and_writes_back_the_same_voxels(layout, tmp_path):
    axes, flips = LAYOUTS[layout]
    volume = canonical_scan()
    source = tmp_path / f"{layout}.nii.gz"
    sitk.WriteImage(stored_as(volume, axes, flips), str(source))

    scan = read_scan(source, CT_WINDOW)
    np.testing.assert_array_equal(scan.image, normalise_volume(volume, CT_WINDOW))
    assert scan.image.dtype == np.float32
    assert scan.canonical_grid.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert scan.canonical_grid.origin == pytest.approx(ORIGIN_XYZ)
    assert scan.spacing_zyx == pytest.approx(SPACING_XYZ[::-1])

    labels = np.random.default_rng(1).integers(0, 9, volume.shape).astype(np.uint8)
    target = write_prediction(scan, labels, tmp_path / f"{layout}_pred.nii.gz")
    written, original = sitk.ReadImage(str(target)), sitk.ReadImage(str(source))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), np.flip(np.transpose(labels, axes), flips))
    assert written.GetDirection() == original.GetDirection()
    assert written.GetOrigin() == original.GetOrigin()
    assert written.GetSpacing() == original.GetSpacing()
    # The premise, checked in physical space: a stored voxel sits where its canonical twin does,
    # and the written label at that voxel is the canonical voxel's label.
    stored_index = (1, 2, 3)
    z, y, x = np.argwhere(volume == original[stored_index])[0]
    expected_point = np.add(ORIGIN_XYZ, np.multiply(SPACING_XYZ, (x, y, z)))
    np.testing.assert_allclose(original.TransformIndexToPhysicalPoint(stored_index), expected_point, atol=1e-4)
    assert written[stored_index] == labels[z, y, x]


def test_the_canonical_orientation_is_itks_identity():
    assert sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(CANONICAL_ORIENTATION) == (1, 0, 0, 0, 1, 0, 0, 0, 1)


# NIfTI: SimpleITK reads NaN / inf as 0, so read_scan counts them in the file; .mha keeps them.
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_voxels_are_a_one_line_error_naming_the_file_and_count(suffix, dtype, tmp_path):
    volume = canonical_scan().astype(dtype)
    volume[2, 3, 4] = np.nan
    volume[0, 0, 0] = -np.inf
    path = tmp_path / f"broken{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    with pytest.raises(DataError, match=rf"broken{re.escape(suffix)} has 2 NaN or infinite voxel\(s\) of 210") as error:
        read_scan(path, CT_WINDOW)
    assert "\n" not in str(error.value)


def test_an_integer_nifti_scan_skips_the_float_check_and_reads(tmp_path):
    volume = np.round(canonical_scan()).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    np.testing.assert_array_equal(read_scan(path, CT_WINDOW).image, normalise_volume(volume, CT_WINDOW))


def test_unreadable_and_non_3d_scans_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    with pytest.raises(DataError, match="garbage.nii.gz is not a readable image file") as error:
        read_scan(garbage)
    assert "\n" not in str(error.value)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7), np.float32)), str(flat))
    with pytest.raises(DataError, match=r"flat.nii.gz is a 2D image of size \(7, 6\); expected a 3D scan"):
        read_scan(flat)


def test_labels_of_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(canonical_scan()), str(path))
    scan = read_scan(path)
    with pytest.raises(ValueError, match=r"labels have shape \(5, 6, 6\)"):
        write_prediction(scan, np.zeros((5, 6, 6), np.uint8), tmp_path / "out.nii.gz")


def float64_normalisation(volume: np.ndarray, clip) -> np.ndarray:
    """The definition, written out in float64: clip, min-max scale, round once to float32."""
    values = volume.astype(np.float64)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(volume.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def test_normalising_a_ct_window_by_hand():
    hu = np.array([[[-1024, -125, 75], [275, 1000, 0]]], dtype=np.int16)
    out = normalise_volume(hu, CT_WINDOW)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[0.0, 0.0, 0.5], [1.0, 1.0, 0.3125]]])


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int8, np.uint8, np.int32, np.float32])
@pytest.mark.parametrize("clip", [None, CT_WINDOW, (-1024.0, 3071.0), (0.5, 99.5), (7.0, 7.0)])
def test_normalisation_equals_the_float64_definition_bit_for_bit(dtype, clip):
    # Integers of up to 16 bits take a float32 path; it must give the float64 result exactly,
    # also for window bounds that are not whole numbers (those take the float64 path).
    rng = np.random.default_rng(3)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        volume = rng.integers(max(info.min, -(2**20)), min(info.max, 2**20), (6, 40, 40), endpoint=True).astype(dtype)
    else:
        volume = rng.uniform(-2000, 3000, (6, 40, 40)).astype(dtype)
    np.testing.assert_array_equal(normalise_volume(volume, clip), float64_normalisation(volume, clip))
