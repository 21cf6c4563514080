"""Unlabeled inputs for test.py -- new NIfTI scans, DICOM series and folders of 2D images -- and NIfTI copies
of evaluated volumes; and ``classify_volume_path``, which says what a ``--volume_path`` is (or,
in one line, why it is none of the things test.py reads).

SimpleITK is imported only when a NIfTI file is read or written, so a machine that only trains
and evaluates ``.npz`` / ``.h5`` data does not need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.catalog import IMAGES
from datasets.common import CHANNEL_PATTERN, DataError, first_channel
from datasets.isic import IMAGE_DIR, read_rgb
from datasets.lists import TEST_DIR, VOLUME_SUFFIX
from utils.errors import UserError
from utils.predictor import Predictor
from utils.visualize import montage, overlay_rgb

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICTION_SUFFIX = "_pred.nii.gz"
FLAG = "--volume_path"

# What classify_volume_path finds a --volume_path to be.
SCAN = "scan"  # one NIfTI scan: segmented, no metrics
SCAN_FOLDER = "scan folder"  # a folder of NIfTI scans: each segmented
DICOM_SERIES = "DICOM series"  # a folder holding one DICOM series: one scan, segmented
VOLUME_FOLDER = "volume folder"  # Synapse layout: NAME.npy.h5 volumes (or DATA/test_vol_h5/), scored
IMAGE_FOLDER = "image folder"  # a folder of unlabeled 2D images: each segmented
IMAGE_LAYOUT = "image layout"  # images/ + masks/ (datasets.isic), scored
_VOLUME_CHOICES = (
    f"a NIfTI scan (.nii / .nii.gz), a folder of scans, a folder of one DICOM series, or a Synapse-layout "
    f"folder (NAME{VOLUME_SUFFIX} volumes, or a folder holding {TEST_DIR}/)"
)
_IMAGE_CHOICES = f"a folder of 2D images ({' / '.join(IMAGE_SUFFIXES)}) or a folder holding {IMAGE_DIR}/ and masks/"


@dataclass(frozen=True)
class VolumePath:
    """What a ``--volume_path`` is.

    Attributes:
        kind: ``SCAN``, ``SCAN_FOLDER``, ``VOLUME_FOLDER``, ``IMAGE_FOLDER`` or ``IMAGE_LAYOUT``.
        folder: for ``VOLUME_FOLDER`` the folder holding the ``.npy.h5`` files (``test_vol_h5/``
            resolved); for ``IMAGE_LAYOUT`` the folder holding ``images/``; otherwise the path given.
        files: the scans or images to segment (``SCAN``, ``SCAN_FOLDER``, ``IMAGE_FOLDER``).
    """

    kind: str
    folder: Path
    files: tuple[Path, ...] = ()


def _is_prediction(path: Path) -> bool:
    return path.name.endswith((PREDICTION_SUFFIX, PREDICTION_SUFFIX.removesuffix(".gz")))


def _refuse_same_stem(paths: Iterable[Path], stem_of, what: str) -> None:
    """Two inputs with one stem (``scan.nii`` and ``scan.nii.gz``) would write one prediction file."""
    seen: dict[str, Path] = {}
    for path in paths:
        stem = stem_of(path)
        if stem in seen:
            raise UserError(
                f"{seen[stem]} and {path} have the same name {stem!r}: both {what} would be written to one "
                "prediction file; rename or move one of them"
            )
        seen[stem] = path


def _check_scan_file(path: Path, flag: str) -> None:
    """A file given as the volume path must be a NIfTI scan with a lower-case suffix."""
    name = path.name
    if name.endswith(NIFTI_SUFFIXES):
        return
    if name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(
            f"{flag} {path} has an upper-case suffix; rename it to end in .nii.gz or .nii (lower case), the "
            "suffixes test.py reads"
        )
    suffix = "".join(path.suffixes) or "suffix-less"
    raise UserError(
        f"{flag} {path} is a {suffix} file, not a NIfTI scan; convert it to .nii.gz (e.g. SimpleITK.ReadImage, "
        f"then WriteImage) or pass {_VOLUME_CHOICES}"
    )


def find_nifti(path: Path) -> list[Path]:
    """NIfTI scans named by ``path`` (a file, or the files of a folder), predictions excluded.

    Raises:
        UserError: ``path`` is a file but not a NIfTI scan (e.g. ``.mha``, or an upper-case
            ``.NII.GZ``), or two scans of the folder share a name (``scan.nii``, ``scan.nii.gz``).
    """
    if path.is_file():
        _check_scan_file(path, FLAG)
        return [path]
    if not path.is_dir():
        return []
    scans = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not _is_prediction(p))
    _refuse_same_stem(scans, nifti_stem, "predictions")
    return scans


def nifti_stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def channel_case(path: Path) -> str:
    """The case of a channel file: ``NAME`` for ``NAME_0000.nii.gz`` (nnU-Net's naming)."""
    match = CHANNEL_PATTERN.match(nifti_stem(path))
    return match["case"] if match else nifti_stem(path)


def channel_files(first: Path, channels: int) -> list[Path]:
    """The files of one scan of ``channels`` channels, from its first: ``NAME_0000.nii.gz`` ->
    ``NAME_0000`` .. ``NAME_{channels-1:04d}``, beside it, in channel order."""
    match = CHANNEL_PATTERN.match(nifti_stem(first))
    if not match or int(match["channel"]) != 0:
        raise UserError(
            f"{first}: the network takes {channels} channels; name a scan's channels NAME_0000.nii.gz, "
            "NAME_0001.nii.gz, ... (nnU-Net's naming) and pass NAME_0000.nii.gz or their folder"
        )
    suffix = first.name[len(nifti_stem(first)) :]
    paths = [first.with_name(f"{match['case']}_{channel:04d}{suffix}") for channel in range(channels)]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{missing[0]} does not exist: the network takes {channels} channels, {first.name} .. {paths[-1].name}")
    return paths


def scan_inputs(files: Sequence[Path], kind: str, channels: int) -> list[Path]:
    """The inputs to segment among ``files``: every file, except that for a volume network of
    several channels each scan is named once, by its first channel file (``NAME_0000``)."""
    if kind == IMAGES or channels == 1 or not files:
        return list(files)
    firsts = [path for path in files if (match := CHANNEL_PATTERN.match(nifti_stem(path))) and int(match["channel"]) == 0]
    if not firsts:
        raise UserError(
            f"none of {', '.join(path.name for path in files[:3])} is the first channel (NAME_0000.nii.gz) of a scan "
            f"of {channels} channels; name a scan's channels NAME_0000.nii.gz, NAME_0001.nii.gz, ..."
        )
    return firsts


def save_nifti(array: np.ndarray, path: Path, z_spacing: int) -> None:
    """Write a (D, H, W) array with spacing (1, 1, z_spacing), as the published test script does."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1, 1, z_spacing))
    sitk.WriteImage(image, str(path))


def segment_scan(predictor: Predictor, path: Path, save_dir: Path, save_png: bool = False) -> Path:
    """Predict one unlabeled scan and write ``{name}_pred.nii.gz`` on its own grid.

    ``datasets.scans.read_scan`` reorients the scan to the orientation the network was trained
    on, refuses NaN / infinite voxels, clips to the data set's window (CT: HU) if it has one and
    scales to [0, 1], as the preprocessing of the training data did; the prediction is oriented
    back and written with the scan's geometry.
    """
    from datasets.scans import CANONICAL_ORIENTATION, read_scan, read_scan_channels, write_prediction

    channels = predictor.info.channels
    if channels > 1:
        scan = read_scan_channels(channel_files(path, channels), predictor.info.intensity_clip)
        path = path.with_name(channel_case(path) + path.name[len(nifti_stem(path)) :])  # name the output by the case
    else:
        scan = read_scan(path, predictor.info.intensity_clip)
    prediction = predictor.predict(scan.image)
    target = write_prediction(scan, prediction, save_dir / f"{nifti_stem(path)}{PREDICTION_SUFFIX}")
    if save_png:
        montage(first_channel(scan.image), prediction, None, predictor.class_names).save(save_dir / f"{nifti_stem(path)}.png")
    logger.info(
        "%s (stored %s, read as %s) -> %s (%s voxels labelled)",
        path.name,
        scan.orientation,
        CANONICAL_ORIENTATION,
        target,
        int((prediction > 0).sum()),
    )
    return target


def find_images(path: Path) -> list[Path]:
    """2D images directly inside the folder ``path`` (not the ISIC layout's images/ and masks/),
    earlier predictions excluded.

    Raises:
        UserError: two images share a name (``a.png``, ``a.jpg``): one prediction file for both.
    """
    if not path.is_dir():
        return []
    images = sorted(
        p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_pred", "_overlay"))
    )
    _refuse_same_stem(images, lambda p: p.stem, "predictions")
    return images


def _missing(path: Path, flag: str, choices: str) -> UserError:
    if path.is_symlink():
        return UserError(f"{flag} {path} is a link to {path.readlink()}, which does not exist; pass {choices}")
    return UserError(f"{flag} {path} does not exist; pass {choices}")


def _unrecognised_folder(path: Path, flag: str, choices: str) -> UserError:
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return UserError(f"{flag} {path} is an empty folder; pass {choices}")
    upper = [name for name in entries if name.lower().endswith(NIFTI_SUFFIXES) and not name.endswith(NIFTI_SUFFIXES)]
    if upper:
        return UserError(
            f"{flag} {path} holds {upper[0]}"
            + (f" and {len(upper) - 1} more" if len(upper) > 1 else "")
            + " with an upper-case suffix; rename them to end in .nii.gz or .nii (lower case), the suffixes test.py reads"
        )
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    return UserError(f"{flag} {path} is none of {choices}; it holds {shown}")


def classify_volume_path(path: str | Path, data_kind: str, flag: str = FLAG) -> VolumePath:
    """What test.py's ``--volume_path`` (or ``--test_path``) is, for data of ``data_kind``.

    Volumes (``data_kind`` other than ``datasets.catalog.IMAGES``), in this order: a NIfTI
    scan; a folder of NIfTI scans; a Synapse-layout folder -- one holding ``test_vol_h5/``, or
    ``NAME.npy.h5`` files itself; a folder holding one DICOM series (one scan). Images: a folder of 2D images; a folder holding ``images/``.

    Raises:
        UserError: one line saying that ``path`` is none of these and what it is instead
            (missing, a dangling link, an empty folder, a ``.mha`` or an upper-case ``.NII.GZ``,
            a folder of something else), or that two inputs share a name.
    """
    path = Path(path)
    choices = _IMAGE_CHOICES if data_kind == IMAGES else _VOLUME_CHOICES
    if not path.exists():
        raise _missing(path, flag, choices)
    if data_kind == IMAGES:
        if not path.is_dir():
            raise UserError(f"{flag} {path} is a file; pass {choices} (a folder holding the image)")
        images = find_images(path)
        if images:
            return VolumePath(IMAGE_FOLDER, path, tuple(images))
        if (path / IMAGE_DIR).is_dir():
            return VolumePath(IMAGE_LAYOUT, path)
        raise _unrecognised_folder(path, flag, choices)
    if path.is_file():
        _check_scan_file(path, flag)
        return VolumePath(SCAN, path, (path,))
    scans = find_nifti(path)
    if scans:
        return VolumePath(SCAN_FOLDER, path, tuple(scans))
    if (path / TEST_DIR).is_dir():
        return VolumePath(VOLUME_FOLDER, path / TEST_DIR)
    if any(p.name.endswith(VOLUME_SUFFIX) for p in path.iterdir()):
        return VolumePath(VOLUME_FOLDER, path)
    if _holds_dicom_series(path, flag):
        return VolumePath(DICOM_SERIES, path, (path,))
    raise _unrecognised_folder(path, flag, choices)


def _holds_dicom_series(path: Path, flag: str) -> bool:
    # SimpleITK (and GDCM's directory scan) only when no cheaper reading of the folder fits.
    from datasets.scans import dicom_series_files

    try:
        return bool(dicom_series_files(path))
    except DataError as error:
        raise UserError(f"{flag} {error}") from None


def segment_image(predictor: Predictor, path: Path, save_dir: Path, save_png: bool = True) -> Path:
    """Predict one unlabeled 2D image; write ``NAME_pred.png`` (class ids) and ``NAME_overlay.png``
    (the classes coloured over the image) -- always: they are the output (``save_png`` is there
    for the signature :func:`segmenter` promises)."""
    from PIL import Image

    rgb = read_rgb(path)
    prediction = predictor.predict(rgb)
    target = save_dir / f"{path.stem}_pred.png"
    Image.fromarray(prediction).save(target)
    Image.fromarray(overlay_rgb(rgb, prediction, predictor.num_classes).transpose(1, 2, 0)).save(
        save_dir / f"{path.stem}_overlay.png"
    )
    logger.info("%s -> %s (%d pixels labelled)", path.name, target, int((prediction > 0).sum()))
    return target


Segmenter = Callable[[Predictor, Path, Path, bool], Path]


def segmenter(kind: str) -> Segmenter:
    """The function that segments one unlabelled input of a kind of data: a NIfTI scan for volume
    data, a plain image for 2D image data."""
    return segment_image if kind == IMAGES else segment_scan
