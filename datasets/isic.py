"""Readers for 2D RGB images with segmentation masks, in the layout of ISIC 2018 task 1.

Layout::

    DATA/images/NAME.jpg                 RGB dermoscopy image, any size (or NAME.png, lossless:
                                         what datasets.prepare.images writes)
    DATA/masks/NAME_segmentation.png     mask of the same size: 0 background, 255 lesion
    LIST_DIR/train.txt, val.txt, test.txt    image names (NAME), one per line

The challenge's own folders fit by linking them as ``images`` and ``masks``. Masks are
thresholded at ``MASK_THRESHOLD`` (JPEG-like artefacts in a re-saved mask do not become
classes). The network sees the image resized (bilinear) to the input size, scaled to [0, 1] and
normalised as (x - 0.5) / 0.5 like the volume readers; the mask is resized with nearest
neighbour.

The readers are named by what they read: ``ImagePairs`` (training: resized, augmented image
and mask pairs) and ``ImageCases`` (evaluation: each image and mask at its own size). They
serve any 2D image data set in this layout (``datasets.prepare.images`` writes it), not skin
images only; the old names ``SkinImages`` / ``SkinCases`` stay as aliases.

The lists for a folder are written by ``python -m datasets.prepare.isic_lists --root DATA --out
LIST_DIR`` (``python -m datasets.isic`` forwards to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datasets.catalog import DATASETS
from datasets.common import TEST, TRAIN, VAL, DataError
from datasets.lists import read_list

# Re-exported (``X as X``): utils.images imported it from here before datasets.preprocess held it.
from datasets.preprocess import preprocess_rgb as preprocess_rgb

IMAGE_DIR = "images"
MASK_DIR = "masks"
IMAGE_SUFFIX = ".jpg"
# Looked for in this order; PNG keeps converted medical images lossless.
IMAGE_SUFFIXES = (IMAGE_SUFFIX, ".png")
MASK_SUFFIX = "_segmentation.png"
MASK_THRESHOLD = 128
ISIC = DATASETS["ISIC2018"]
LIST_NAMES = {TRAIN: ISIC.train_list, VAL: ISIC.val_list, TEST: ISIC.test_list}


def image_path(root: str | Path, name: str) -> Path:
    """``root/images/NAME.jpg``, or ``NAME.png`` when only that exists."""
    candidates = [Path(root) / IMAGE_DIR / (name + suffix) for suffix in IMAGE_SUFFIXES]
    return next((path for path in candidates if path.is_file()), candidates[0])


def mask_path(root: str | Path, name: str) -> Path:
    return Path(root) / MASK_DIR / (name + MASK_SUFFIX)


def _open(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check --root_path / --test_path and the list file")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path} is not a readable image ({' '.join(str(error).split())}); re-create it") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Any image file PIL reads as uint8 (H, W, 3); a one-line DataError if it cannot."""
    return _open(Path(path), "RGB")


def read_pair(root: str | Path, name: str, num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask of ``name``.

    Returns:
        RGB uint8 (H, W, 3) and label int64 (H, W): ids 0..num_classes-1 (for a binary mask,
        pixels >= MASK_THRESHOLD are 1).

    Raises:
        DataError: a file is missing or unreadable, or the sizes differ.
    """
    rgb = _open(image_path(root, name), "RGB")
    mask = _open(mask_path(root, name), "L")
    if mask.shape != rgb.shape[:2]:
        raise DataError(
            f"{mask_path(root, name)} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{rgb.shape[1]}x{rgb.shape[0]}; they must be the same size"
        )
    if num_classes == 2:
        return rgb, (mask >= MASK_THRESHOLD).astype(np.int64)
    if mask.max() >= num_classes:
        raise DataError(f"{mask_path(root, name)} holds value {mask.max()}, expected class ids 0..{num_classes - 1}")
    return rgb, mask.astype(np.int64)


def resize_mask(label: np.ndarray, img_size: Sequence[int]) -> np.ndarray:
    """Resize a label map (H, W) to (S_h, S_w) with nearest neighbour; int64."""
    size = (int(img_size[1]), int(img_size[0]))
    if label.shape[::-1] == size:
        return label.astype(np.int64)
    return np.asarray(Image.fromarray(label.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)).astype(np.int64)


def _flip_rotate(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random quarter turns and flips (lesions have no orientation); torch's generator draws."""
    turns = int(torch.randint(0, 4, ()))
    image, label = np.rot90(image, turns, axes=(1, 2)), np.rot90(label, turns)
    if int(torch.randint(0, 2, ())):
        image, label = image[:, :, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class ImagePairs(Dataset):
    """Training images ``root/images/NAME.jpg`` with masks, for each NAME in ``list_file``.

    Each item is ``{"image": float32 tensor (3, S_h, S_w), "label": int64 tensor (S_h, S_w),
    "case_name": NAME}``.

    Args:
        root: folder holding ``images/`` and ``masks/``.
        list_file: text file, one image name per line.
        num_classes: classes including background (2 for a lesion mask).
        img_size: (S_h, S_w) network input size.
        augment: random quarter turns and flips after resizing (train.py's ``--augment none``
            turns them off).
    """

    def __init__(
        self, root: str | Path, list_file: str | Path, num_classes: int, img_size: Sequence[int], augment: bool = True
    ) -> None:
        self.root = Path(root)
        self.names = read_list(list_file)
        self.num_classes = num_classes
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = augment
        missing = [name for name in self.names if not image_path(self.root, name).is_file()]
        if missing:
            raise DataError(
                f"{image_path(self.root, missing[0])} (listed in {list_file}) does not exist"
                + (f", nor do {len(missing) - 1} other listed images" if len(missing) > 1 else "")
                + "; check --root_path or the list"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        rgb, label = read_pair(self.root, name, self.num_classes)
        image, label = preprocess_rgb(rgb, self.img_size), resize_mask(label, self.img_size)
        if self.augment:
            image, label = _flip_rotate(image, label)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label), "case_name": name}


class ImageCases(Dataset):
    """Evaluation images at their own size: items ``{"image": uint8 (H, W, 3), "label": int64
    (H, W), "case_name": NAME}`` as numpy arrays."""

    def __init__(self, root: str | Path, list_file: str | Path, num_classes: int) -> None:
        self.root = Path(root)
        self.names = read_list(list_file)
        self.num_classes = num_classes
        missing = [name for name in self.names if not image_path(self.root, name).is_file()]
        if missing:
            raise DataError(
                f"{image_path(self.root, missing[0])} (listed in {list_file}) does not exist; "
                "check --test_path / --volume_path or the list"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        rgb, label = read_pair(self.root, self.names[index], self.num_classes)
        return {"image": rgb, "label": label, "case_name": self.names[index]}


def write_isic_lists(root: str | Path, list_dir: str | Path) -> dict[str, list[str]]:
    """Forward to ``datasets.prepare.isic_lists.write_isic_lists``, its home since list writing
    moved under ``datasets.prepare`` (imported on call: that module imports this one)."""
    from datasets.prepare.isic_lists import write_isic_lists as write

    return write(root, list_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m datasets.isic`` as the README showed it: forwards to
    ``python -m datasets.prepare.isic_lists``."""
    from datasets.prepare.isic_lists import main as lists_main

    lists_main(argv)


# The names before the readers were named by their format; kept for a release.
SkinImages = ImagePairs
SkinCases = ImageCases


if __name__ == "__main__":
    main()
