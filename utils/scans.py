"""Unlabeled inputs for test.py -- new NIfTI scans and folders of 2D images -- and NIfTI copies
of evaluated volumes.

SimpleITK is imported only when a NIfTI file is read or written, so a machine that only trains
and evaluates ``.npz`` / ``.h5`` data does not need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datasets.catalog import IMAGES
from datasets.isic import read_rgb
from utils.predictor import Predictor
from utils.visualize import montage, overlay_rgb

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICTION_SUFFIX = "_pred.nii.gz"


def find_nifti(path: Path) -> list[Path]:
    """NIfTI scans named by ``path`` (a file, or the files of a folder), predictions excluded."""
    if path.is_file():
        return [path] if path.name.endswith(NIFTI_SUFFIXES) else []
    if not path.is_dir():
        return []
    return sorted(
        p
        for p in path.iterdir()
        if p.name.endswith(NIFTI_SUFFIXES) and not p.name.endswith((PREDICTION_SUFFIX, PREDICTION_SUFFIX.removesuffix(".gz")))
    )


def nifti_stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


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
    from datasets.scans import CANONICAL_ORIENTATION, read_scan, write_prediction

    scan = read_scan(path, predictor.info.intensity_clip)
    prediction = predictor.predict(scan.image)
    target = write_prediction(scan, prediction, save_dir / f"{nifti_stem(path)}{PREDICTION_SUFFIX}")
    if save_png:
        montage(scan.image, prediction, None, predictor.class_names).save(save_dir / f"{nifti_stem(path)}.png")
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
    earlier predictions excluded."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_pred", "_overlay")))


def segment_image(predictor: Predictor, path: Path, save_dir: Path, save_png: bool = True) -> Path:
    """Predict one unlabeled 2D image; write ``NAME_pred.png`` (class ids) and ``NAME_overlay.png``
    (the classes coloured over the image) -- always: they are the output (``save_png`` is there
    for the signature :func:`unlabelled_inputs` promises)."""
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


def unlabelled_inputs(kind: str, path: Path) -> tuple[list[Path], Segmenter]:
    """The unlabelled inputs at ``path`` for a kind of data -- NIfTI scans for volume data, a
    folder of plain images for 2D image data -- and the function that segments one of them."""
    if kind == IMAGES:
        return find_images(path), segment_image
    return find_nifti(path), segment_scan
