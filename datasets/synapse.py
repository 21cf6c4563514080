"""Readers for the Synapse file layout, named by the formats they read: 2D training slices
(``NpzSlices``, .npz) and 3D evaluation volumes (``H5Volumes``, .npy.h5). They serve every data
set converted to this layout (Synapse, ACDC, a user's NIfTI folders), not Synapse only; the old
names ``SynapseSlices`` / ``SynapseVolumes`` stay as aliases.

Layout (TransUNet's preprocessing of the BTCV abdomen CT; see ``datasets.prepare.synapse``)::

    DATA/train_npz/caseXXXX_sliceNNN.npz   keys image, label: (H, W); one axial slice per file
    DATA/test_vol_h5/caseXXXX.npy.h5        datasets image, label: (D, H, W); optional attribute
                                            "spacing" = (z, y, x) in mm

Several channels (``datasets.prepare.nifti``): image (C, H, W) per slice, (D, C, H, W) per
volume -- the channel axis just before (H, W) -- labels as above.

Images hold CT intensities normalised to [0, 1]; labels hold class ids (stored as float32 in
the common copies; any dtype with whole-number values is accepted and returned as int64).

The network's input preprocessing lives in ``datasets.preprocess`` (shared with the
evaluation); ``preprocess_slice``, ``preprocess_batch``, ``resize_label`` and ``resize_labels``
are re-exported here for code written against this module.

Every malformed input raises ``DataError`` with a one-line message naming the file.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from datasets.augment import Augmentation

# IMAGE_MEAN, IMAGE_STD and the preprocessing are re-exported (``X as X``): code imported them
# from here before datasets.preprocess held them.
from datasets.common import IMAGE_KEY, LABEL_KEY, SPACING_ATTR, DataError, intensity_range_problem
from datasets.common import IMAGE_MEAN as IMAGE_MEAN
from datasets.common import IMAGE_STD as IMAGE_STD
from datasets.lists import SLICE_SUFFIX, VOLUME_SUFFIX, parse_slice_name, read_list
from datasets.preprocess import normalise, preprocess_slice, resize_label
from datasets.preprocess import preprocess_batch as preprocess_batch
from datasets.preprocess import resize_labels as resize_labels
from datasets.resize import check_size, zoom_images, zoom_labels

DEFAULT_IMG_SIZE = (224, 224)
SPATIAL_DIMS = 3  # (z, y, x)
# The largest volume a file may declare before it is read: 2**30 voxels (4 GiB as float32), four
# times a 1000-slice 512 x 512 whole-body CT. A corrupt or hostile header cannot make the reader
# try to allocate more.
MAX_VOLUME_VOXELS = 1 << 30
# Products of the training resize. float32 halves the resize, the largest cost of a training
# item (bench/data_speed.py), and moves intensities by < 1e-6 from scipy's zoom: far below the
# augmentation's noise. The evaluation keeps float64 (preprocess_batch), equal to scipy.
TRAINING_ZOOM_PRODUCTS = torch.float32


def _check_existing(paths: Sequence[Path], list_file: Path) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]} (listed in {list_file}) does not exist"
            + (f", nor do {len(missing) - 1} other listed files" if len(missing) > 1 else "")
            + "; check the data folder or regenerate the list"
        )


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _npz_error(path: Path, error: Exception) -> DataError:
    return DataError(f"{path} is not a readable .npz file ({_one_line(error)}); re-create or re-download it")


def _require_keys(path: Path, found: Sequence[str]) -> None:
    missing = [key for key in (IMAGE_KEY, LABEL_KEY) if key not in found]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(repr(k) for k in missing)} array (found {list(found)}); "
            "slice files need keys 'image' and 'label'"
        )


def _read_npz(path: Path, keys: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The array names of a .npz file and the arrays among ``keys`` that it holds.

    Reading no key only reads the zip directory, which is cheap.
    """
    # np.load silently treats a non-zip file as .npy or pickle; rule that out first.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .npz (zip) archive; re-create or re-download it")
    try:
        with np.load(path, allow_pickle=False) as data:
            found = list(data.files)
            arrays = {key: data[key] for key in keys if key in found}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise _npz_error(path, error) from error
    return found, arrays


def load_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and label arrays of a slice file; DataError for an unreadable file or missing key."""
    found, arrays = _read_npz(path, (IMAGE_KEY, LABEL_KEY))
    _require_keys(path, found)
    return arrays[IMAGE_KEY], arrays[LABEL_KEY]


def _check_npz_keys(path: Path) -> None:
    """Cheap check: the zip directory of the .npz names both arrays (no array is read)."""
    found, _ = _read_npz(path, ())
    _require_keys(path, found)


def spatial_shape(image: np.ndarray, ndim: int) -> tuple[int, ...]:
    """The image's shape without its channel axis (the axis before (H, W)), if it has one."""
    if image.ndim == ndim:
        return image.shape
    return image.shape[:-3] + image.shape[-2:]


def check_arrays(
    path: Path,
    image: np.ndarray,
    label: np.ndarray | None,
    ndim: int,
    num_classes: int | None,
) -> None:
    """Validate one item's arrays; DataError naming ``path`` on the first problem.

    Checks: image has ``ndim`` dims, or ``ndim + 1`` with a channel axis just before (H, W)
    (slices (C, H, W), volumes (D, C, H, W)), finite values; label (if given) has the image's
    shape without the channel axis, finite whole-number values in [0, num_classes) (upper bound
    skipped when None).
    """
    # A channel axis makes the image one dim more than its label; an image and label of one
    # dim more each is a volume where a slice belongs (or the reverse), not channels.
    with_channels = image.ndim == ndim + 1 and (label is None or label.ndim == ndim)
    if image.ndim != ndim and not with_channels:
        raise DataError(
            f"{path}: image has {image.ndim} dims {image.shape}, expected {ndim} "
            f"(or {ndim + 1} with a channel axis before H, W and a {ndim}-dim label)"
        )
    if image.size == 0:
        # A volume of 0 slices passed every other check and crashed the evaluation much later.
        raise DataError(f"{path}: image has shape {image.shape}, which holds no voxels; re-create the file from the raw data")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise DataError(f"{path}: image holds NaN, infinite or non-numeric values; fix the file")
    if label is None:
        return
    if label.shape != spatial_shape(image, ndim):
        raise DataError(f"{path}: label shape {label.shape} differs from image shape {image.shape}")
    if label.dtype == np.bool_:
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.number):
        raise DataError(f"{path}: label has non-numeric dtype {label.dtype}")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise DataError(f"{path}: label holds NaN or infinite values; fix the file")
        if not (label == np.round(label)).all():
            raise DataError(f"{path}: label holds non-integer values; labels must be class ids")
    if label.size:
        low, high = label.min(), label.max()
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise DataError(
                f"{path}: label values span [{low:g}, {high:g}], expected class ids in {bound}; "
                "check num_classes or the label file"
            )


def _check_num_classes(num_classes: int) -> None:
    is_int = isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
    if not is_int or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


class NpzSlices(Dataset):
    """2D training slices ``base_dir/NAME.npz`` for each NAME in ``list_file``.

    Each item is ``{"image": float32 tensor (C, S_h, S_w), "label": int64 tensor (S_h, S_w),
    "case_name": NAME}``: C = 1 for a stored (H, W) slice, C for a stored (C, H, W) one (every
    channel resized, augmented with the same geometric draw, and normalised alike). A slice is first resized to ``img_size`` -- the protocol's zoom (order
    3 image, order 0 label) as torch products (``datasets.resize``; float32 products, so the
    image is within 1e-6 of scipy's, labels equal) -- then augmented there
    (image float32 in [0, 1], label int64), then normalised. Augmenting the small slice is what
    makes this about 3x faster than the published order (see ``bench/data_speed.py``); a named
    augmentation is built for it with its blur and noise rescaled to the resize
    (``datasets.augment``, module docstring). ``augment_first=True`` keeps the published order:
    augment at the stored size, then ``preprocess_slice`` / ``resize_label`` (scipy).

    Args:
        base_dir: folder holding the .npz files (usually ``DATA/train_npz``).
        list_file: text file, one slice name (no extension) per line.
        num_classes: number of classes including background; labels must lie in [0, it).
        img_size: (S_h, S_w) network input size.
        augment: a name from ``datasets.augment.AUGMENTATIONS``, a callable
            ``(image, label) -> (image, label)`` (it sees the slice at ``img_size``, or at its
            stored size with ``augment_first``), or None for no augmentation.
        check: validate the files: at construction that every listed file exists and holds
            ``image`` and ``label`` (reads only the zip directories), and every item on read.
        augment_first: augment at the stored size and resize afterwards with scipy, the
            published order (the CPU reference; about 3x slower for 512 -> 224).
    """

    def __init__(
        self,
        base_dir: str | Path,
        list_file: str | Path,
        num_classes: int,
        img_size: Sequence[int] = DEFAULT_IMG_SIZE,
        augment: str | Augmentation | None = "daeformer",
        check: bool = True,
        augment_first: bool = False,
    ) -> None:
        _check_num_classes(num_classes)
        self.base_dir = Path(base_dir)
        self.list_file = Path(list_file)
        self.num_classes = int(num_classes)
        self.img_size = check_size(img_size, "img_size")
        self.augment_first = augment_first
        # The augmentation pulls in torchvision; only training readers need it.
        from datasets.augment import build_augmentation

        # Built now so that an unknown name fails here, not in a DataLoader worker.
        self.augment: Augmentation | None = build_augmentation(augment) if isinstance(augment, str) else augment
        self.augment_name = augment if isinstance(augment, str) else None
        # A named augmentation after the resize depends on the stored size (blur and noise
        # are rescaled); one per stored size, built on first use.
        self._resized_augments: dict[tuple[int, int], Augmentation] = {}
        self.check = check
        self.names = read_list(self.list_file)
        if check:
            paths = [self._path(name) for name in self.names]
            _check_existing(paths, self.list_file)
            for path in paths:
                _check_npz_keys(path)

    def _path(self, name: str) -> Path:
        return self.base_dir / (name + SLICE_SUFFIX)

    def __len__(self) -> int:
        return len(self.names)

    def _augmentation_after_resize(self, stored_size: tuple[int, int]) -> Augmentation | None:
        if self.augment_name is None:
            return self.augment
        if stored_size not in self._resized_augments:
            from datasets.augment import build_augmentation

            self._resized_augments[stored_size] = build_augmentation(self.augment_name, stored_size, self.img_size)
        return self._resized_augments[stored_size]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        name = self.names[index]
        path = self._path(name)
        image, label = load_slice(path)
        if self.check:
            check_arrays(path, image, label, ndim=2, num_classes=self.num_classes)
        image = image.astype(np.float32, copy=False)
        # One channel: the stored (H, W) as ever; several: (C, H, W), channels as a batch.
        channels = image if image.ndim == 3 else image[None]
        if self.augment_first:
            label = label.astype(np.int64)
            if self.augment is not None:
                image, label = self.augment(image, label)
                channels = image if image.ndim == 3 else image[None]
            image = np.stack([preprocess_slice(channel, self.img_size) for channel in channels])
            label = resize_label(label, self.img_size)
        else:
            augment = self._augmentation_after_resize(image.shape[-2:])
            image = zoom_images(torch.from_numpy(channels), self.img_size, TRAINING_ZOOM_PRODUCTS).numpy()
            # Gather in the stored dtype (whole numbers, checked above), convert the small
            # result: converting the stored 512x512 label to int64 first costs more.
            label = zoom_labels(torch.from_numpy(label)[None], self.img_size)[0].numpy()
            label = label.astype(np.int64)
            if image.shape[0] == 1:
                image = image[0]  # the augmentations take a one-channel slice as (H, W)
            if augment is not None:
                image, label = augment(image, label)
            image = normalise(image)
        if image.ndim == 2:
            image = image[None]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "case_name": name,
        }


def _read_spacing(path: Path, file: h5py.File) -> tuple[float, float, float] | None:
    if SPACING_ATTR not in file.attrs:
        return None
    spacing = np.asarray(file.attrs[SPACING_ATTR], dtype=np.float64).ravel()
    if spacing.shape != (SPATIAL_DIMS,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise DataError(f"{path}: attribute 'spacing' is {spacing.tolist()}, expected 3 positive mm values (z, y, x)")
    return tuple(float(value) for value in spacing)


def _h5_error(path: Path, error: Exception) -> DataError:
    return DataError(f"{path} is not a readable HDF5 file ({_one_line(error)}); re-create or re-download it")


def _check_declared_shape(path: Path, file: h5py.File, key: str) -> None:
    """Refuse a dataset whose declared shape is empty or above ``MAX_VOLUME_VOXELS``, before
    reading it (h5py would try to allocate whatever the header says)."""
    dataset = file[key]
    shape = getattr(dataset, "shape", None)
    if shape is None:
        raise DataError(f"{path}: {key!r} is an HDF5 group, not an array; volume files hold 'image' and 'label' arrays")
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > MAX_VOLUME_VOXELS:
        raise DataError(
            f"{path}: {key!r} declares shape {shape} ({voxels:.3g} voxels), above the limit of "
            f"{MAX_VOLUME_VOXELS} (datasets.synapse.MAX_VOLUME_VOXELS); the file is corrupt or not one scan"
        )
    if voxels == 0:
        raise DataError(f"{path}: {key!r} has shape {shape}, which holds no voxels; re-create the file from the raw data")


class H5Volumes(Dataset):
    """3D volumes ``base_dir/NAME.npy.h5`` for each NAME in ``list_file``.

    Each item is ``{"image": float32 (D, H, W) or (D, C, H, W), "label": int64 (D, H, W) or None,
    "case_name": NAME, "spacing": (z, y, x) mm or None}`` with numpy arrays. ``spacing`` comes
    from the file's optional ``spacing`` attribute (None when absent).

    Args:
        base_dir: folder holding the .npy.h5 files (usually ``DATA/test_vol_h5``).
        list_file: text file, one case name per line.
        num_classes: number of classes including background; labels must lie in [0, it).
        check: validate at construction that every listed file opens and holds the datasets,
            and every item on read.
        require_label: if False, a file without a ``label`` dataset is accepted and its item's
            label is None (for predicting unlabeled volumes).
        check_range: with ``check``, refuse an image outside [0, 1] (raw HU or 0-255 pixels),
            which a network trained on [0, 1] scores as empty masks; the message is the data
            doctor's explanation. Costs one min / max pass over the volume.
    """

    def __init__(
        self,
        base_dir: str | Path,
        list_file: str | Path,
        num_classes: int,
        check: bool = True,
        require_label: bool = True,
        check_range: bool = True,
    ) -> None:
        _check_num_classes(num_classes)
        self.base_dir = Path(base_dir)
        self.list_file = Path(list_file)
        self.num_classes = int(num_classes)
        self.check = check
        self.require_label = require_label
        self.check_range = check_range
        self.names = read_list(self.list_file)
        if check:
            paths = [self._path(name) for name in self.names]
            _check_existing(paths, self.list_file)
            for path in paths:
                self._check_keys(path)

    def _path(self, name: str) -> Path:
        return self.base_dir / (name + VOLUME_SUFFIX)

    def _required_keys(self) -> tuple[str, ...]:
        return (IMAGE_KEY, LABEL_KEY) if self.require_label else (IMAGE_KEY,)

    def _check_keys(self, path: Path) -> None:
        """The start-up check: the datasets exist and declare a readable, non-empty shape (the
        header only, so a 0-slice volume stops a run at start, not at its first evaluation)."""
        try:
            with h5py.File(path, "r", locking=False) as file:
                keys = list(file.keys())
                missing = [key for key in self._required_keys() if key not in keys]
                if missing:
                    raise DataError(
                        f"{path} has no {' or '.join(repr(k) for k in missing)} dataset (found {keys}); "
                        "volume files need 'image' and 'label' (pass require_label=False for "
                        "unlabeled volumes)"
                    )
                for key in (IMAGE_KEY, LABEL_KEY):
                    if key in file:
                        _check_declared_shape(path, file, key)
        except OSError as error:
            raise _h5_error(path, error) from error

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        path = self._path(name)
        try:
            with h5py.File(path, "r", locking=False) as file:
                missing = [key for key in self._required_keys() if key not in file]
                if missing:
                    raise DataError(
                        f"{path} has no {' or '.join(repr(k) for k in missing)} dataset; volume files need 'image' and 'label'"
                    )
                for key in (IMAGE_KEY, LABEL_KEY):
                    if key in file:
                        _check_declared_shape(path, file, key)
                image = file[IMAGE_KEY][()]
                label = file[LABEL_KEY][()] if LABEL_KEY in file else None
                spacing = _read_spacing(path, file)
        except OSError as error:
            raise _h5_error(path, error) from error
        if self.check:
            check_arrays(path, image, label, ndim=SPATIAL_DIMS, num_classes=self.num_classes)
            problem = intensity_range_problem(float(image.min()), float(image.max())) if self.check_range else None
            if problem is not None:
                raise DataError(f"{path}: {problem[0]}; {problem[1]}")
        return {
            "image": image.astype(np.float32, copy=False),
            "label": None if label is None else label.astype(np.int64),
            "case_name": name,
            "spacing": spacing,
        }


def split_cases(slice_names: Sequence[str], k: int) -> tuple[list[str], list[str]]:
    """Hold out whole cases for validation: the LAST ``k`` cases in sorted case order.

    The choice is deterministic (no seed) so that resumed or repeated runs validate on the same
    cases; with the standard split and k=2 it holds out case0039 and case0040.

    Args:
        slice_names: training slice names ``CASE_sliceNNN``.
        k: number of cases to hold out; 0 holds out nothing.

    Returns:
        (training slice names in their original order without the held-out cases,
        held-out case names sorted).

    Raises:
        ValueError: k < 0, or k leaves no training case, or a name is not ``CASE_sliceNNN``.
    """
    cases = sorted({parse_slice_name(name)[0] for name in slice_names})
    if k < 0 or k >= len(cases):
        raise ValueError(
            f"--val_cases {k} must lie in [0, {len(cases) - 1}]: the training list has "
            f"{len(cases)} cases and at least one must stay for training"
        )
    held_out = cases[len(cases) - k :] if k else []
    held = set(held_out)
    train = [name for name in slice_names if parse_slice_name(name)[0] not in held]
    return train, held_out


def slices_to_volumes(
    base_dir: str | Path,
    slice_names: Sequence[str],
    case_names: Sequence[str],
    num_classes: int | None = None,
) -> list[dict]:
    """Assemble whole cases from their training slices, e.g. for held-out validation.

    Args:
        base_dir: folder holding ``NAME.npz`` slice files.
        slice_names: slice names ``CASE_sliceNNN`` (any order; others' cases are ignored).
        case_names: cases to assemble, in the order returned.
        num_classes: if given, labels must lie in [0, num_classes).

    Returns:
        One dict per case, as ``H5Volumes`` items: image float32 (D, H, W) (or (D, C, H, W)
        from (C, H, W) slices), label int64
        (D, H, W), ``case_name``, ``spacing`` None; slices stacked by slice index. Memory: about
        12 bytes per voxel, e.g. 0.5 GB for a 150-slice 512x512 case.

    Raises:
        DataError: a case has no slices, a file is missing or malformed, or slice shapes differ.
    """
    base_dir = Path(base_dir)
    by_case: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in slice_names:
        case, index = parse_slice_name(name)
        by_case[case].append((index, name))
    volumes = []
    for case in case_names:
        if case not in by_case:
            raise DataError(f"case {case} has no slices in the slice list; check --val_cases")
        images, labels = [], []
        for _, name in sorted(by_case[case]):
            path = base_dir / (name + SLICE_SUFFIX)
            if not path.is_file():
                raise DataError(f"{path} does not exist; check the data folder")
            image, label = load_slice(path)
            check_arrays(path, image, label, ndim=2, num_classes=num_classes)
            if images and image.shape != images[0].shape:
                raise DataError(
                    f"{path}: slice shape {image.shape} differs from {images[0].shape} of the first slice of {case}; cannot stack"
                )
            images.append(image.astype(np.float32, copy=False))
            labels.append(label.astype(np.int64))
        volumes.append(
            {
                "image": np.stack(images),
                "label": np.stack(labels),
                "case_name": case,
                "spacing": None,
            }
        )
    return volumes


# The names before the readers were named by their format; kept for a release so that code
# written against them keeps working.
SynapseSlices = NpzSlices
SynapseVolumes = H5Volumes
