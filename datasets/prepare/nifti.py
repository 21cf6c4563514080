"""Convert your own labelled NIfTI volumes to the Synapse format, with a ``dataset.json`` that
train.py and test.py take as ``--dataset``.

Input:

- ``--images DIR``: 3D scans ``NAME.nii.gz`` (or ``.nii``); an nnU-Net-style channel suffix
  ``NAME_0000.nii.gz`` is accepted and dropped from the case name; several channels of a case
  (multi-sequence MRI, several CT windows) as nnU-Net names them, ``NAME_0000.nii.gz``,
  ``NAME_0001.nii.gz``, ...: every case needs the same channels 0..C-1 on one voxel grid;
- ``--labels DIR``: label volumes ``NAME.nii.gz`` on the image's voxel grid (same size, spacing,
  origin and direction, up to header rounding), voxel values the class ids 0 (background), 1..K;
- ``--classes classes.json``: the names of classes 1..K, e.g. ``{"1": "liver", "2": "tumour"}``
  (an entry "0" for the background is allowed and ignored).

Each volume is clipped to ``--clip LOW HIGH`` if given (e.g. -125 275 for abdominal CT in HU),
then min-max scaled to [0, 1], each channel by itself. Cases are sorted by name; ``--test_fraction`` of them (at least
one, evenly spread over the sorted order) become test volumes, the rest training slices.

Output::

    OUT/train_npz/NAME_sliceNNN.npz, OUT/test_vol_h5/NAME.npy.h5, OUT/lists/{train,test_vol}.txt
    OUT/dataset.json    {"class_names": [...], "intensity_clip": [low, high] or null, "channels": C}

One channel is stored as always: slices image (H, W), volumes (D, H, W). C > 1 channels are
stored with the channel axis just before (H, W): slices image (C, H, W), volumes (D, C, H, W);
``"channels": C`` makes the network take C input channels (``DatasetInfo.in_chans``).
    OUT/conversion.json the completion marker (datasets.prepare.staging)

written into a staging folder beside OUT and renamed when complete: a conversion that fails
leaves an earlier one in OUT as it was.

Then::

    python train.py --dataset OUT/dataset.json --module networks.DAEFormer.DAEFormer ...
    python test.py --output_dir ./model_out        # the checkpoint remembers --dataset

Usage::

    python -m datasets.prepare.nifti --images imagesTr --labels labelsTr --classes classes.json --out data/mine
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.catalog import DATASET_JSON, DatasetInfo, load_dataset_json
from datasets.common import CHANNEL_PATTERN, DataError, normalise_volume
from datasets.lists import LIST_DIR, TEST_DIR, TRAIN_DIR
from datasets.prepare.common import read_nifti_channels
from datasets.prepare.staging import staged_output
from datasets.writing import write_training_slices, write_volume

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_TEST_FRACTION = 0.2


def read_classes(path: str | Path) -> list[str]:
    """Names of classes 1..K from a JSON object ``{"1": name, ..., "K": name}``.

    Raises:
        DataError: missing file, bad JSON, ids that are not 1..K without gaps, empty names.
    """
    path = Path(path)
    hint = 'write e.g. {"1": "liver", "2": "tumour"}'
    if not path.is_file():
        raise DataError(f"--classes {path} does not exist; {hint}")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"--classes {path} is not valid JSON ({error}); {hint}") from None
    if not isinstance(content, dict):
        raise DataError(f"--classes {path} must hold a JSON object of class id -> name; {hint}")
    try:
        classes = {int(key): value for key, value in content.items()}
    except ValueError:
        raise DataError(f"--classes {path}: keys must be class ids 1..K, got {sorted(content)}; {hint}") from None
    classes.pop(0, None)
    if sorted(classes) != list(range(1, len(classes) + 1)) or not classes:
        raise DataError(f"--classes {path}: class ids must be 1..K without gaps, got {sorted(classes)}; {hint}")
    if not all(isinstance(name, str) and name.strip() for name in classes.values()):
        raise DataError(f"--classes {path}: every class needs a non-empty name")
    return [classes[c].strip() for c in range(1, len(classes) + 1)]


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _case_and_channel(stem: str) -> tuple[str, int | None]:
    match = CHANNEL_PATTERN.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


def _label_of(labels: Path, name: str) -> Path | None:
    return next((labels / (name + s) for s in NIFTI_SUFFIXES if (labels / (name + s)).is_file()), None)


def find_cases(images: str | Path, labels: str | Path) -> list[tuple[str, tuple[Path, ...], Path]]:
    """``(case name, channel images in channel order, label)`` for every case with a label.

    An image without a channel suffix is a one-channel case; ``NAME_0000``, ``NAME_0001``, ...
    are the channels of case NAME.

    Raises:
        DataError: a folder is missing or empty, an image has no label, a case's channels are
            not 0..C-1, or the cases have different numbers of channels.
    """
    images, labels = Path(images), Path(labels)
    for flag, folder in (("--images", images), ("--labels", labels)):
        if not folder.is_dir():
            raise DataError(f"{flag} {folder} is not a folder")
    scans = sorted(p for p in images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not scans:
        raise DataError(f"--images {images} holds no .nii.gz or .nii files")
    channels: dict[str, dict[int, Path]] = {}
    for scan in scans:
        name, channel = _case_and_channel(_stem(scan))
        if channel is not None and _label_of(labels, _stem(scan)) is not None:
            # A label named by the whole stem (patient_0001.nii.gz): a one-channel case whose
            # name ends in digits, not channel 1 of case "patient".
            name, channel = _stem(scan), None
        found = channels.setdefault(name, {})
        if (channel or 0) in found:
            raise DataError(f"{scan} and {found[channel or 0]} are both channel {channel or 0} of case {name}; keep one")
        found[channel or 0] = scan
    cases = []
    for name, found in sorted(channels.items()):
        if sorted(found) != list(range(len(found))):
            raise DataError(
                f"--images {images}: case {name} has channels {sorted(found)}; they must be {name}_0000 .. "
                f"{name}_{len(found) - 1:04d} without gaps"
            )
        label = _label_of(labels, name)
        if label is None:
            raise DataError(f"{found[0]} has no label {labels / (name + NIFTI_SUFFIXES[0])}; add it or move the image out")
        cases.append((name, tuple(found[c] for c in range(len(found))), label))
    counts = {len(paths) for _, paths, _ in cases}
    if len(counts) > 1:
        odd = next(name for name, paths, _ in cases if len(paths) != len(cases[0][1]))
        raise DataError(
            f"--images {images}: case {cases[0][0]} has {len(cases[0][1])} channels but {odd} has "
            f"{len(channels[odd])}; every case needs the same channels"
        )
    return cases


def normalise_channels(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """``normalise_volume`` of a (D, H, W) volume, or of each channel of a (D, C, H, W) one:
    sequences of one case have unrelated scanner units, so each is scaled by its own range."""
    if image.ndim == 3:
        return normalise_volume(image, window)
    return np.stack([normalise_volume(image[:, c], window) for c in range(image.shape[1])], axis=1)


def held_out_positions(count: int, fraction: float) -> set[int]:
    """Indices (0-based, sorted order) of the test cases: ``round(fraction * count)`` of them,
    at least one, at most count - 1, evenly spread."""
    n_test = min(count - 1, max(1, round(fraction * count)))
    return {int((k + 0.5) * count / n_test) for k in range(n_test)}


def convert(
    images: str | Path,
    labels: str | Path,
    classes: str | Path,
    out_dir: str | Path,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    clip: Sequence[float] | None = None,
) -> DatasetInfo:
    """Convert a NIfTI folder pair (see the module docstring).

    Returns:
        The data set's entry, as train.py will read it from ``OUT/dataset.json``.

    Raises:
        DataError: bad input (one line naming the file or flag).
    """
    names = read_classes(classes)
    if not 0 < test_fraction < 1:
        raise DataError(f"--test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    if clip is not None and not clip[0] < clip[1]:
        raise DataError(f"--clip LOW HIGH needs LOW < HIGH, got {clip[0]} {clip[1]}")
    pairs = find_cases(images, labels)
    if len(pairs) < 2:
        raise DataError(f"--images {images} holds {len(pairs)} labelled volume; at least 2 are needed (training and test)")
    out_dir = Path(out_dir)
    testing = held_out_positions(len(pairs), test_fraction)
    slices, tests = [], []
    window = None if clip is None else (float(clip[0]), float(clip[1]))
    # Staged: a conversion that stops half-way leaves an earlier one in out_dir untouched.
    with staged_output(out_dir, "datasets.prepare.nifti") as stage:
        for index, (name, image_paths, label_path) in enumerate(tqdm(pairs, desc="NIfTI -> Synapse format", unit="case")):
            image, label, spacing = read_nifti_channels(image_paths, label_path, len(names) + 1)
            image = normalise_channels(image, window)
            if index in testing:
                write_volume(stage.folder / TEST_DIR, name, image, label, spacing)
                tests.append(name)
            else:
                slices += write_training_slices(stage.folder / TRAIN_DIR, name, image, label.astype(np.float32))
        description = {"class_names": names, "intensity_clip": None if window is None else list(window)}
        if len(pairs[0][1]) > 1:
            # Written only for several channels: a one-channel dataset.json stays as it was.
            description["channels"] = len(pairs[0][1])
        (stage.folder / DATASET_JSON).write_text(json.dumps(description, indent=2) + "\n")
        staged = load_dataset_json(stage.folder / DATASET_JSON)
        stage.list_file(out_dir / LIST_DIR / staged.train_list, slices)
        stage.list_file(out_dir / LIST_DIR / staged.test_list, tests)
    info_path = out_dir / DATASET_JSON
    info = load_dataset_json(info_path)
    logger.info(
        "converted %d training cases (%d slices) and %d test cases into %s; use --dataset %s",
        len(pairs) - len(tests),
        len(slices),
        len(tests),
        out_dir,
        info_path,
    )
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare.nifti",
        description="Convert labelled NIfTI volumes to the Synapse format plus a dataset.json.",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of 3D scans NAME.nii.gz")
    parser.add_argument("--labels", required=True, type=Path, help="folder of label volumes NAME.nii.gz (ids 0..K)")
    parser.add_argument("--classes", required=True, type=Path, help='JSON file {"1": "name", ..., "K": "name"}')
    parser.add_argument("--out", required=True, type=Path, help="output data folder")
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="share of the cases held out as test volumes (evenly spread over the sorted names)",
    )
    parser.add_argument(
        "--clip",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="intensity window before min-max scaling, e.g. -125 275 for abdominal CT (default: none)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.images, args.labels, args.classes, args.out, args.test_fraction, args.clip)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
