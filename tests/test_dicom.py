"""test.py segments a DICOM series (a folder) and writes its prediction as NIfTI on the series' grid."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.band_network import IntensityBands
from tests.conftest import load_test_script
from utils.errors import UserError
from utils.scans import DICOM_SERIES, classify_volume_path

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.2121"
SPACING, ORIGIN = (0.8, 0.7, 2.5), (-12.0, 4.0, 30.0)


def ct_volume(seed: int = 0) -> sitk.Image:
    """A (6, 32, 32) int16 CT volume in HU: a bright disc in a darker body, noise on top."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    body = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 14**2, 40, -900)
    disc = np.where((yy - 12) ** 2 + (xx - 18) ** 2 < 5**2, 220, 0)
    array = (body + disc + rng.normal(0, 10, (6, 32, 32))).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def write_series(image: sitk.Image, folder: Path, uid: str = SERIES_UID) -> None:
    """One DICOM file per axial slice, with the tags that give a series its order and geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    # GDCM's writer switches the process to the C locale and leaves it so: Python's default text
    # encoding would become ASCII for every later test (a subprocess's UTF-8 output then fails
    # to decode). Reading a series does not; the writer is only in the tests.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(image, folder, uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image: sitk.Image, folder: Path, uid: str) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # scanners write files without a suffix
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetSize()[2]):
        piece = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000d", uid + ".0"),
            ("0020|000e", uid),
            ("0020|0013", str(index + 1)),
            ("0020|0032", "\\".join(f"{v:g}" for v in position)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0018|0050", f"{SPACING[2]:g}"),
        ):
            piece.SetMetaData(tag, value)
        # written in reverse: the reader must order the slices by position, not by file name
        writer.SetFileName(str(folder / f"IM{image.GetSize()[2] - index:04d}"))
        writer.Execute(piece)


def segment(path: Path, tmp_path: Path, out: str) -> Path:
    weights = tmp_path / "bands.pth"
    torch.save(IntensityBands(num_classes=9).state_dict(), weights)
    status = load_test_script().main(
        [
            *("--ckpt", str(weights), "--module", "tests.band_network.IntensityBands", "--img_size", "32"),
            *("--volume_path", str(path), "--test_save_dir", str(tmp_path / out)),
        ]
    )
    assert status == 0
    return tmp_path / out


def test_a_dicom_series_is_segmented_onto_its_own_grid_as_its_nifti_copy_is(tmp_path):
    image = ct_volume()
    write_series(image, tmp_path / "series")
    assert classify_volume_path(tmp_path / "series", "volumes").kind == DICOM_SERIES
    from_series = sitk.ReadImage(str(segment(tmp_path / "series", tmp_path, "dicom") / "series_pred.nii.gz"))
    assert from_series.GetSize() == image.GetSize()
    assert from_series.GetSpacing() == pytest.approx(SPACING) and from_series.GetOrigin() == pytest.approx(ORIGIN)
    # the same volume as a NIfTI file takes the same road: the labels must agree voxel for voxel
    sitk.WriteImage(image, str(tmp_path / "copy.nii.gz"))
    from_nifti = sitk.ReadImage(str(segment(tmp_path / "copy.nii.gz", tmp_path, "nifti") / "copy_pred.nii.gz"))
    labels = sitk.GetArrayFromImage(from_series)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(from_nifti))
    assert 0 < (labels > 0).mean() < 1  # the band network labels part of the volume


def test_a_folder_of_two_series_is_a_one_line_error(tmp_path):
    write_series(ct_volume(0), tmp_path / "mixed")
    write_series(ct_volume(1), tmp_path / "other", uid=SERIES_UID + "9")
    for path in (tmp_path / "other").iterdir():
        path.rename(tmp_path / "mixed" / ("B" + path.name))
    with pytest.raises(UserError, match=r"--volume_path .*mixed holds 2 DICOM series .* a folder of its own"):
        classify_volume_path(tmp_path / "mixed", "volumes", "--volume_path")
