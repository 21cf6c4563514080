"""Which reader serves which kind of data, decided once for train.py and test.py.

A data set's ``kind`` (``datasets.catalog``) names its file format, and the format decides the
reader:

===========  =================================  ====================================
kind         training (``training_set``)        evaluation (``evaluation_cases``)
===========  =================================  ====================================
volumes      ``NpzSlices`` (2D .npz slices)     ``H5Volumes`` (3D .npy.h5 volumes)
images       ``ImagePairs`` (images + masks)    ``ImageCases`` (at their own size)
===========  =================================  ====================================

Both evaluation readers have ``names`` (the case names, in list order), ``len`` and items
``{"image", "label", "case_name", ...}``.

``ignore_stop_signals`` is the ``worker_init_fn`` for the DataLoader: a scheduler that signals
the whole process group (``kill -- -PGID``) reaches the loader workers too, and a worker that
dies of it turns the main process's orderly stop into a ``RuntimeError``. The main process
decides when to stop and ends its workers itself.
"""

from __future__ import annotations

import signal
from pathlib import Path

from torch.utils.data import Dataset

from datasets.catalog import IMAGES, KINDS, DatasetInfo
from datasets.isic import ImageCases, ImagePairs
from datasets.synapse import H5Volumes, NpzSlices

NO_AUGMENTATION = "none"  # train.py's --augment none
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _check_kind(info: DatasetInfo) -> None:
    if info.kind not in KINDS:
        raise ValueError(f"data set kind {info.kind!r} has no reader; the kinds are {', '.join(KINDS)}")


def training_set(
    info: DatasetInfo, root: Path, list_file: Path, num_classes: int, img_size: tuple[int, int], augment: str
) -> Dataset:
    """The training reader of ``info``'s kind.

    Args:
        info: the data set's entry; only its ``kind`` is read.
        root: training data folder (``--root_path``).
        list_file: the training list.
        num_classes: classes including background.
        img_size: (S_h, S_w) network input size.
        augment: a name of ``datasets.augment.AUGMENTATIONS`` or ``"none"``. 2D images have one
            augmentation (quarter turns and flips), on unless ``"none"``.

    Returns:
        ``NpzSlices`` for volumes, ``ImagePairs`` for images.
    """
    _check_kind(info)
    if info.kind == IMAGES:
        return ImagePairs(root, list_file, num_classes, img_size, augment=augment != NO_AUGMENTATION)
    return NpzSlices(root, list_file, num_classes, img_size, augment=augment)


def evaluation_cases(info: DatasetInfo, folder: Path, list_file: Path, num_classes: int) -> H5Volumes | ImageCases:
    """The evaluation reader of ``info``'s kind: ``H5Volumes`` for volumes (``folder`` holds the
    ``.npy.h5`` files), ``ImageCases`` for images (``folder`` holds ``images/`` and ``masks/``)."""
    _check_kind(info)
    if info.kind == IMAGES:
        return ImageCases(folder, list_file, num_classes)
    return H5Volumes(folder, list_file, num_classes)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` (and process-pool initializer): ignore SIGTERM and SIGINT in a worker
    process, so that a signal to the whole process group stops only the main process, which
    then ends its workers. ``worker_id`` is what the DataLoader passes; unused."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
