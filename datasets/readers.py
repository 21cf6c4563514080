"""Which reader serves which kind of data: the one place both scripts ask."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from datasets.catalog import IMAGES, DatasetInfo
from datasets.isic import SkinCases, SkinImages
from datasets.lists import TEST_DIR
from datasets.synapse import SynapseSlices, SynapseVolumes


def training_set(
    info: DatasetInfo, root: Path, list_file: Path, num_classes: int, img_size: tuple[int, int], augment: str
) -> Dataset:
    """The training items of ``info``'s kind of data: slices (``.npz``) or 2D images."""
    if info.kind == IMAGES:
        return SkinImages(root, list_file, num_classes, img_size, augment=augment != "none")
    return SynapseSlices(root, list_file, num_classes, img_size, augment=augment)


def evaluation_cases(info: DatasetInfo, folder: Path, list_file: Path, num_classes: int) -> Dataset:
    """The labelled evaluation cases of ``info``'s kind: volumes (``.npy.h5``; ``folder`` is the
    volumes' folder or a data root with ``test_vol_h5/`` below it) or 2D images (``folder`` holds
    ``images/`` and ``masks/``)."""
    if info.kind == IMAGES:
        return SkinCases(folder, list_file, num_classes)
    below = Path(folder) / TEST_DIR
    return SynapseVolumes(below if below.is_dir() else folder, list_file, num_classes)
