"""New scans for a trained network: read a NIfTI scan (or a DICOM series, a folder) in the
orientation the network was trained on, and write a predicted label volume back onto the scan's
own grid, as NIfTI.

A 2D network learns the in-plane orientation of its training slices: a scan stored sagittally, or
with its rows flipped, gives it images it never saw and a plausible-looking wrong segmentation.
So ``read_scan`` reorients every scan to ``CANONICAL_ORIENTATION`` -- by permuting and flipping
the voxel grid only, never resampling -- and ``write_prediction`` undoes exactly that
permutation and flip, so the output label volume lies on the input's grid with its geometry.

Canonical orientation ``"LPS"`` (DICOM / ITK codes: the direction each index axis points to).
It is the identity direction matrix of ITK's physical space. ``datasets.prepare.synapse`` makes
the training volumes with ``GetArrayFromImage`` of the raw BTCV NIfTI files and no
reorientation, so the network learned the orientation stored in those files; LPS is the
orientation in which the common Synapse copies look as they do in the papers and in which the
phantom (``datasets.synthetic.synapse``) draws its slices: array (z, y, x) with x towards the
patient's left (the patient's right on the image's left) and y towards posterior (anterior at
the top). The slice order along z does not matter to a 2D network; the in-plane axes do.

Scans whose axes are oblique to the patient are reoriented to the nearest axis-aligned
orientation (the filter's rule), again without resampling.

Voxels that are NaN or infinite are an error (``DataError``): a single one turns the min-max
normalisation of the whole volume into NaN and the prediction into an empty mask, and filling
it with a guess would hide a broken file. SimpleITK's NIfTI reader (nifticlib) silently turns
such voxels into 0 while reading, so for a floating-point ``.nii`` / ``.nii.gz`` the stored
values are counted from the file itself.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from datasets.common import DataError, first_channel, normalise_volume

CANONICAL_ORIENTATION = "LPS"

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """The geometry of a 3D image in SimpleITK's (x, y, z) order: size in voxels, spacing in mm,
    origin in mm, direction cosines (row-major 3x3, column j = direction of index axis j)."""

    size: tuple[int, int, int]
    spacing: Vector3
    origin: Vector3
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)


@dataclass(frozen=True)
class Scan:
    """A scan read for the network.

    Attributes:
        path: the file it was read from.
        image: float32 (D, H, W) in [0, 1] -- (D, C, H, W) for a scan of C channels -- in
            ``CANONICAL_ORIENTATION`` (axial slices along D for the default), clipped and min-max
            scaled as the training data were.
        orientation: the file's own orientation code, e.g. ``"RAS"`` or ``"PIL"``.
        file_grid: the file's geometry, given unchanged to the written prediction.
        canonical_grid: the geometry of ``image`` (the file's voxels, permuted and flipped).
    """

    path: Path
    image: np.ndarray
    orientation: str
    file_grid: Grid
    canonical_grid: Grid

    @property
    def spacing_zyx(self) -> Vector3:
        """Voxel spacing of ``image`` along (D, H, W) in mm."""
        x, y, z = self.canonical_grid.spacing
        return (z, y, x)


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order; [] when it holds none.

    Raises:
        DataError: the folder holds several series (which one is the scan is not ours to guess).
    """
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) > 1:
        raise DataError(
            f"{folder} holds {len(series)} DICOM series ({', '.join(series[:3])}"
            f"{' ...' if len(series) > 3 else ''}); put each series in a folder of its own"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])) if series else []


def _read_series(folder: Path) -> sitk.Image:
    files = dicom_series_files(folder)
    if not files:
        raise DataError(f"{folder} is a folder without a DICOM series; give a scan file or a folder of one series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _read_image(path: Path) -> sitk.Image:
    try:
        # A folder is a DICOM series (scanners write one file per slice); GDCM orders the slices
        # by their position and gives the volume its geometry.
        image = _read_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DataError(f"{path} is not a readable image file: {' '.join(str(error).split())[:200]}") from None
    if image.GetDimension() != 3:
        raise DataError(
            f"{path} is a {image.GetDimension()}D image of size {image.GetSize()}; expected a 3D scan "
            "(split a 4D series into 3D volumes first)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel; expected a single-channel (grey-value) scan"
        )
    return image


# NIfTI data type codes of the real floating-point types numpy can count non-finite values in.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}
_CHUNK_VOXELS = 1 << 24  # 64 MiB of float32 at a time: a large CT never sits in memory twice


def _nifti_float_layout(stream: BinaryIO) -> tuple[np.dtype, int, int] | None:
    """(dtype, data offset, voxel count) of a single-file NIfTI-1/2 float image, else None."""
    head = stream.read(540)
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348 and head[344:347] == b"n+1":
            ndim, *dims = struct.unpack(order + "8h", head[40:56])
            code = struct.unpack(order + "h", head[70:72])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and head[4:7] == b"n+2":
            code = struct.unpack(order + "h", head[12:14])[0]
            ndim, *dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        return None
    if code not in _NIFTI_FLOATS or not 1 <= ndim <= 7:
        return None
    return np.dtype(order + _NIFTI_FLOATS[code]), offset, int(np.prod(dims[:ndim], dtype=np.int64))


def _nifti_nonfinite_count(path: Path) -> int | None:
    """NaN and infinite voxels stored in a float NIfTI file, or None for any other file."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        layout = _nifti_float_layout(stream)
        if layout is None:
            return None
        dtype, offset, remaining = layout
        stream.seek(offset)
        bad = 0
        while remaining > 0:
            count = min(remaining, _CHUNK_VOXELS)
            chunk = np.frombuffer(stream.read(count * dtype.itemsize), dtype)
            if chunk.size != count:
                return None  # truncated: the reader has already said what it makes of the file
            bad += int(np.count_nonzero(~np.isfinite(chunk)))
            remaining -= count
    return bad


def orientation_of(image: sitk.Image) -> str:
    """The orientation code (e.g. ``"LPS"``) nearest to the image's direction cosines."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def read_scan(path: str | Path, clip: tuple[float, float] | None = None, orientation: str = CANONICAL_ORIENTATION) -> Scan:
    """Read a 3D scan (any format SimpleITK reads, e.g. ``.nii.gz``, or a folder holding one DICOM
    series) for the network.

    Args:
        path: the scan file, or the folder of a DICOM series.
        clip: intensity window (e.g. ``CT_WINDOW`` in HU) applied before min-max scaling, or None.
        orientation: the orientation the network was trained on.

    Returns:
        The scan with its image float32 (D, H, W) in [0, 1] in ``orientation``.

    Raises:
        DataError: unreadable, not 3D, more than one channel, or NaN / infinite voxels.
    """
    path = Path(path)
    return _scan_of(path, _read_image(path), clip, orientation)


def _scan_of(path: Path, image: sitk.Image, clip: tuple[float, float] | None, orientation: str) -> Scan:
    own = orientation_of(image)
    canonical = sitk.DICOMOrient(image, orientation)
    volume = sitk.GetArrayFromImage(canonical)
    if np.issubdtype(volume.dtype, np.floating):
        stored = _nifti_nonfinite_count(path)
        bad = stored if stored is not None else int(np.count_nonzero(~np.isfinite(volume)))
        if bad:
            raise DataError(
                f"{path} has {bad} NaN or infinite voxel(s) of {volume.size}; replace them with a valid "
                "intensity (e.g. the scan's minimum) and run again"
            )
    return Scan(path, normalise_volume(volume, clip), own, Grid.of(image), Grid.of(canonical))


def read_scan_channels(
    paths: Sequence[str | Path], clip: tuple[float, float] | None = None, orientation: str = CANONICAL_ORIENTATION
) -> Scan:
    """Read one scan of several channels -- ``NAME_0000.nii.gz``, ``NAME_0001.nii.gz``, ... as
    nnU-Net names them -- each channel as :func:`read_scan` reads a scan.

    Returns:
        The first channel's scan, its image float32 (D, C, H, W), each channel scaled to [0, 1]
        on its own, as the converter scales the training channels.

    Raises:
        DataError: a channel on another voxel grid than the first (the converter's check).
    """
    from datasets.prepare.common import check_channel_grids

    paths = [Path(path) for path in paths]
    images = [_read_image(path) for path in paths]
    check_channel_grids(images, paths)
    scans = [_scan_of(path, image, clip, orientation) for path, image in zip(paths, images)]
    return dataclasses.replace(scans[0], image=np.stack([scan.image for scan in scans], axis=1))


def write_prediction(scan: Scan, labels: np.ndarray, path: str | Path) -> Path:
    """Write a predicted label volume onto the scan's own grid, with the scan's geometry.

    The labels are permuted and flipped back to the file's voxel order -- no resampling, so
    every voxel keeps its label.

    Args:
        scan: what ``read_scan`` returned.
        labels: uint8 (D, H, W) class ids, in the orientation of ``scan.image``.
        path: output file (e.g. ``NAME_pred.nii.gz``); its folder must exist.

    Returns:
        ``path``.
    """
    labels = np.asarray(labels)
    if labels.shape != first_channel(scan.image).shape:
        raise ValueError(f"labels have shape {labels.shape} but the scan {scan.path} has {scan.image.shape}")
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 class ids, got {labels.dtype}")
    canonical = sitk.GetImageFromArray(labels)
    scan.canonical_grid.apply(canonical)
    back = sitk.DICOMOrient(canonical, scan.orientation)
    if tuple(back.GetSize()) != scan.file_grid.size:
        raise AssertionError(f"reorienting back gave size {back.GetSize()}, expected {scan.file_grid.size}")
    # The filter recomputes origin and direction in floating point; the file's own values make
    # the output header match the input's exactly (same grid, within float error either way).
    scan.file_grid.apply(back)
    path = Path(path)
    sitk.WriteImage(back, str(path), True)
    return path
