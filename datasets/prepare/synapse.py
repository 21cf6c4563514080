"""Convert the raw BTCV abdomen CT (MICCAI 2015 "Beyond the Cranial Vault") to the Synapse format.

Input: ``RAW/img00XX.nii.gz`` with ``RAW/label00XX.nii.gz``, either side by side or in
``RAW/img/`` and ``RAW/label/``. For each case, as TransUNet's preprocessing:

1. read with SimpleITK; the array axes are (z, y, x), so axial slices run along the first axis;
2. clip intensities to [-125, 275] HU, then min-max normalise the clipped volume to [0, 1];
3. keep the chosen organs (``--organs``; default the 8 of the benchmark, renumbered to Synapse's
   ids; ``all`` keeps BTCV's 13 with their own ids) -- class k is the k-th organ chosen, every
   other organ becomes background;
4. test cases of the standard split -> ``OUT/test_vol_h5/caseXXXX.npy.h5`` (datasets ``image``
   and ``label``, float32 (D, H, W), attribute ``spacing`` = (z, y, x) mm); all other cases ->
   ``OUT/train_npz/caseXXXX_sliceNNN.npz`` (``image``, ``label`` float32 (H, W), NNN 0-based).
   Cases outside the standard split also go to training (the log says which).
5. write ``train.txt`` and ``test_vol.txt`` for the converted files into ``--list_dir``, and
   ``OUT/dataset.json`` with the class names, so ``--dataset OUT/dataset.json`` trains and
   evaluates with them.

The output is staged beside ``--out`` and renamed when complete (``datasets.prepare.staging``):
a conversion that fails leaves an earlier one in ``--out`` as it was.

Usage::

    python -m datasets.prepare.synapse --raw RawData/Training --out data/Synapse
    python -m datasets.prepare.synapse --raw RawData/Training --out data/BTCV13 --organs all
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.catalog import DATASET_JSON
from datasets.common import (
    CT_WINDOW,
    DataError,
    normalise_volume,
)
from datasets.lists import (
    STANDARD_TEST_CASES,
    STANDARD_TRAIN_SLICE_COUNTS,
    TEST_DIR,
    TEST_LIST,
    TRAIN_DIR,
    TRAIN_LIST,
    sort_slice_names,
)
from datasets.prepare.common import read_nifti_pair
from datasets.prepare.staging import staged_output
from datasets.writing import write_training_slices, write_volume

logger = logging.getLogger(__name__)

BTCV_NUM_LABELS = 14  # background + 13 organs
# BTCV's 13 organs by their id in the raw label files.
BTCV_ORGANS = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# BTCV organ id -> Synapse class id; the five organs not listed become background.
BTCV_TO_SYNAPSE = {
    8: 1,  # aorta
    4: 2,  # gallbladder
    3: 3,  # left kidney
    2: 4,  # right kidney
    6: 5,  # liver
    11: 6,  # pancreas
    1: 7,  # spleen
    7: 8,  # stomach
}
# The organs of the published protocol in Synapse's class order: the default of --organs.
PUBLISHED_ORGANS = tuple(sorted(BTCV_TO_SYNAPSE, key=BTCV_TO_SYNAPSE.get))
ALL, PUBLISHED = "all", "published"
_IMAGE_FILE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_LABEL_FILE = re.compile(r"^label(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class RawCase:
    """One raw BTCV case: its Synapse name (e.g. case0001) and NIfTI files."""

    name: str
    image: Path
    label: Path


def _case_name(number: str) -> str:
    return f"case{int(number):04d}"


def _scan(folders: Sequence[Path], pattern: re.Pattern) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = pattern.match(path.name)
            if match and path.is_file():
                found.setdefault(_case_name(match.group(1)), path)
    return found


def find_raw_cases(raw_dir: str | Path) -> list[RawCase]:
    """Pair ``img00XX.nii[.gz]`` with ``label00XX.nii[.gz]`` in ``raw_dir`` or its img/, label/.

    Returns:
        The cases sorted by name.

    Raises:
        DataError: the folder is missing, holds no images, or an image has no label.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw data folder {raw_dir} does not exist; pass the BTCV folder as --raw")
    images = _scan([raw_dir, raw_dir / "img"], _IMAGE_FILE)
    labels = _scan([raw_dir, raw_dir / "label"], _LABEL_FILE)
    if not images:
        raise DataError(
            f"no img00XX.nii.gz files in {raw_dir} or {raw_dir / 'img'}; pass the BTCV folder (e.g. RawData/Training) as --raw"
        )
    unlabeled = sorted(set(images) - set(labels))
    if unlabeled:
        image = images[unlabeled[0]]
        raise DataError(
            f"{image} has no label file (expected label{image.name[len('img') :]} in {raw_dir} "
            f"or {raw_dir / 'label'}); add it or remove the image"
        )
    for name in sorted(set(labels) - set(images)):
        logger.warning("skipping %s: no matching image", labels[name])
    return [RawCase(name, images[name], labels[name]) for name in sorted(images)]


def parse_organs(text: str) -> tuple[int, ...]:
    """``--organs``: ``published`` (the 8 of the benchmark, in Synapse's order), ``all`` (BTCV's
    13, in BTCV's order) or a comma-separated list of BTCV organ names or ids, in the order the
    classes get. Returns BTCV ids.

    Raises:
        DataError: an unknown or repeated organ (one line, naming it and the choices).
    """
    if text.strip().lower() == ALL:
        return tuple(BTCV_ORGANS)
    if text.strip().lower() == PUBLISHED:
        return PUBLISHED_ORGANS
    by_name = {name.replace(" ", "_"): btcv_id for btcv_id, name in BTCV_ORGANS.items()}
    organs: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        key = item.lower().replace(" ", "_")
        btcv_id = int(key) if key.isdigit() else by_name.get(key)
        if btcv_id not in BTCV_ORGANS:
            choices = ", ".join(f"{i} {name}" for i, name in BTCV_ORGANS.items())
            raise DataError(f"--organs: {item!r} is not a BTCV organ; give '{ALL}', '{PUBLISHED}' or names / ids of: {choices}")
        if btcv_id in organs:
            raise DataError(f"--organs names {BTCV_ORGANS[btcv_id]!r} twice; give each organ once")
        organs.append(btcv_id)
    return tuple(organs)


def organ_names(organs: Sequence[int]) -> list[str]:
    """The class names of classes 1..K for the BTCV organ ids ``organs``."""
    return [BTCV_ORGANS[btcv_id] for btcv_id in organs]


def btcv_to_synapse(label: np.ndarray, source: str | Path = "label", organs: Sequence[int] = PUBLISHED_ORGANS) -> np.ndarray:
    """Renumber BTCV organ ids to classes 1..K, class k being organ ``organs[k - 1]`` (the
    default: the 8 Synapse classes of ``BTCV_TO_SYNAPSE``); every other organ -> 0.

    Args:
        label: BTCV ids 0..13, any numeric dtype with whole-number values.
        source: file name for error messages.
        organs: the BTCV ids kept, in class order.

    Returns:
        float32 array of class ids 0..K, same shape (float32 as the common copies).

    Raises:
        DataError: values that are not whole numbers in [0, 13].
    """
    low, high = label.min(), label.max()
    fractional = np.issubdtype(label.dtype, np.floating) and (label != np.round(label)).any()
    if fractional or low < 0 or high >= BTCV_NUM_LABELS:
        raise DataError(
            f"{source}: label values span [{low:g}, {high:g}]"
            + (" with fractions" if fractional else "")
            + f"; BTCV labels are organ ids 0..{BTCV_NUM_LABELS - 1} (is this a BTCV label file?)"
        )
    table = np.zeros(BTCV_NUM_LABELS, np.float32)
    for class_id, btcv_id in enumerate(organs, 1):
        table[btcv_id] = class_id
    return table[label.astype(np.int64)]


def read_case(
    case: RawCase, organs: Sequence[int] = PUBLISHED_ORGANS
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read and convert one case.

    Returns:
        image float32 (D, H, W) in [0, 1], label float32 (D, H, W) Synapse ids, and the voxel
        spacing (z, y, x) in mm.
    """
    # The converters' shared reader: it also refuses a label on another voxel grid (spacing,
    # origin, direction), which reading the two files separately let through.
    image, label, spacing = read_nifti_pair(case.image, case.label, BTCV_NUM_LABELS)
    return normalise_volume(image, CT_WINDOW), btcv_to_synapse(label, case.label, organs), spacing


def convert(
    raw_dir: str | Path, out_dir: str | Path, list_dir: str | Path | None = None, organs: Sequence[int] = PUBLISHED_ORGANS
) -> dict[str, list[str]]:
    """Convert raw BTCV to the Synapse format under ``out_dir`` (see the module docstring).

    Args:
        raw_dir: folder with the raw NIfTI files (flat or img/ + label/).
        out_dir: output root; ``train_npz/`` and ``test_vol_h5/`` are created in it.
        list_dir: where to write train.txt and test_vol.txt; default ``out_dir/lists``.
        organs: BTCV ids of the organs kept, in class order (default the published 8).

    Returns:
        ``{"train": [case names], "test": [case names]}`` as converted.
    """
    cases = find_raw_cases(raw_dir)
    out_dir = Path(out_dir)
    list_dir = Path(list_dir) if list_dir is not None else out_dir / "lists"
    test_cases = set(STANDARD_TEST_CASES)
    outside = [c.name for c in cases if c.name not in test_cases | set(STANDARD_TRAIN_SLICE_COUNTS)]
    if outside:
        logger.warning("cases outside the standard split go to training: %s", ", ".join(outside))
    done: dict[str, list[str]] = {"train": [], "test": []}
    train_slices: list[str] = []
    # Staged: a conversion that stops half-way leaves an earlier one in out_dir untouched; lists
    # outside out_dir are written after the rename and checked by the doctor against the marker.
    with staged_output(out_dir, "datasets.prepare.synapse") as stage:
        for case in tqdm(cases, desc="BTCV -> Synapse", unit="case"):
            image, label, spacing = read_case(case, organs)
            if case.name in test_cases:
                write_volume(stage.folder / TEST_DIR, case.name, image, label, spacing)
                done["test"].append(case.name)
            else:
                train_slices += write_training_slices(stage.folder / TRAIN_DIR, case.name, image, label)
                done["train"].append(case.name)
        if not (done["train"] and done["test"]):
            logger.warning("no %s cases converted; writing only the other list", "test" if done["train"] else "training")
        # The lists write_synapse_lists would find in the folders: slices by case, then slice index.
        if done["train"]:
            stage.list_file(list_dir / TRAIN_LIST, sort_slice_names(train_slices))
        if done["test"]:
            stage.list_file(list_dir / TEST_LIST, sorted(done["test"]))
        # The class names travel with the data: --dataset OUT/dataset.json reads them (and new
        # scans are windowed as the conversion windowed these).
        description = {"class_names": organ_names(organs), "intensity_clip": list(CT_WINDOW), "btcv_ids": list(organs)}
        (stage.folder / DATASET_JSON).write_text(json.dumps(description, indent=2) + "\n")
    logger.info("classes 1..%d: %s", len(organs), ", ".join(organ_names(organs)))
    logger.info(
        "converted %d training cases (%d slices) and %d test cases into %s; lists in %s",
        len(done["train"]),
        len(train_slices),
        len(done["test"]),
        out_dir,
        list_dir,
    )
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare.synapse",
        description="Convert raw BTCV abdomen CT (img00XX/label00XX.nii.gz) to the Synapse "
        "format: train_npz/ slices and test_vol_h5/ volumes with the standard split.",
    )
    parser.add_argument(
        "--raw", required=True, type=Path, help="folder with img00XX.nii.gz and label00XX.nii.gz (flat or in img/ and label/)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output data folder")
    parser.add_argument(
        "--list_dir", type=Path, default=None, help="where to write train.txt and test_vol.txt (default OUT/lists)"
    )
    parser.add_argument(
        "--organs",
        default=PUBLISHED,
        help=f"organs kept, in class order: '{PUBLISHED}' (the 8 of the benchmark, Synapse's ids), '{ALL}' "
        "(BTCV's 13, their own ids) or a comma-separated list of BTCV names or ids, e.g. 'liver,spleen,9'",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        convert(args.raw, args.out, args.list_dir, parse_organs(args.organs))
    except (DataError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main()
