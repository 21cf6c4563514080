"""Convert the ACDC challenge's raw cine MRI (NIfTI) to the Synapse format used by train.py / test.py.

Input: the challenge's training folder, ``RAW/patientXXX/patientXXX_frameYY.nii.gz`` with
``patientXXX_frameYY_gt.nii.gz`` (found at any depth below RAW, so a flat folder works too).
Only the two annotated frames of each patient, end-diastole and end-systole, have a ``_gt``
file; both are converted, each as its own case ``patientXXX_frameYY``. Labels are ACDC's own
ids (0 background, 1 right ventricle, 2 myocardium, 3 left ventricle) and are kept.

For each frame:

1. read with SimpleITK; array axes (z, y, x), so short-axis slices run along the first axis;
2. min-max scale the volume to [0, 1] (MRI has no absolute scale, so no window);
3. split by patient number n (``datasets.lists.split_role``): test when n % 5 == 0,
   validation when n % 10 == 2, training otherwise -- 70 / 10 / 20 of the 100 training
   patients, 14 / 2 / 4 of each of ACDC's five pathology groups (patients 1-20, 21-40, ...).
   This rule is this repository's, not any paper's; to compare with a paper, give its split with
   ``--split_file split.json``: ``{"train": [...], "val": [...], "test": [...]}`` listing every
   patient as ``"patient001"`` or ``1`` (``val`` may be left out);
4. training frames -> ``OUT/train_npz/patientXXX_frameYY_sliceNNN.npz``; validation and test
   frames -> ``OUT/test_vol_h5/patientXXX_frameYY.npy.h5`` with their spacing (z, y, x) mm;
5. write ``train.txt``, ``val_vol.txt`` and ``test_vol.txt`` into ``--list_dir`` (default: the
   table's ``lists/lists_ACDC``).

The output is staged beside ``--out`` and renamed when complete (``datasets.prepare.staging``):
a conversion that fails leaves an earlier one in ``--out`` as it was.

Usage::

    python -m datasets.prepare.acdc --raw ACDC/database/training --out data/ACDC [--split_file split.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from datasets.catalog import DATASETS
from datasets.common import TEST, TRAIN, VAL, DataError, normalise_volume
from datasets.lists import TEST_DIR, TRAIN_DIR, split_role
from datasets.prepare.common import read_nifti_pair
from datasets.prepare.staging import staged_output
from datasets.writing import write_training_slices, write_volume

logger = logging.getLogger(__name__)

ACDC = DATASETS["ACDC"]
_IMAGE = re.compile(r"^patient(?P<patient>\d+)_frame(?P<frame>\d+)\.nii(\.gz)?$")
_LABEL_TAG = "_gt"
_PATIENT = re.compile(r"^(patient)?0*(?P<number>\d+)$")
ROLES = (TRAIN, VAL, TEST)
REQUIRED_ROLES = (TRAIN, TEST)  # many papers have no validation split


@dataclass(frozen=True)
class Frame:
    """One annotated frame: case name ``patientXXX_frameYY``, patient number, NIfTI files."""

    name: str
    patient: int
    image: Path
    label: Path


def find_frames(raw_dir: str | Path) -> list[Frame]:
    """Every ``patientXXX_frameYY.nii[.gz]`` below ``raw_dir`` that has its ``_gt`` label.

    Frames without a label (the 4D files, unannotated frames) are not matched. Returns the
    frames sorted by name.

    Raises:
        DataError: the folder is missing or holds no annotated frame.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"--raw {raw_dir} does not exist; pass the ACDC training folder (patient001/, patient002/, ...)")
    frames = []
    for path in sorted(raw_dir.rglob("patient*_frame*.nii*")):
        match = _IMAGE.match(path.name)
        if match is None:
            continue
        suffix = path.name[path.name.index(".nii") :]
        label = path.with_name(path.name[: -len(suffix)] + _LABEL_TAG + suffix)
        if not label.is_file():
            logger.warning("skipping %s: no %s", path, label.name)
            continue
        name = f"patient{int(match['patient']):03d}_frame{int(match['frame']):02d}"
        frames.append(Frame(name, int(match["patient"]), path, label))
    if not frames:
        raise DataError(f"--raw {raw_dir} holds no patientXXX_frameYY.nii.gz with a _gt label; pass the ACDC training folder")
    return sorted(frames, key=lambda frame: frame.name)


def _patient_number(path: Path, role: str, entry: object) -> int:
    text = str(entry) if isinstance(entry, (int, str)) and not isinstance(entry, bool) else ""
    match = _PATIENT.match(text.strip())
    if match is None or int(match["number"]) < 1:
        raise DataError(f"--split_file {path}: {role!r} entry {entry!r} is not a patient id (patient001 or 1)")
    return int(match["number"])


def read_split_file(path: str | Path, patients: Sequence[int]) -> dict[int, str]:
    """Patient number -> role from a JSON split ``{"train": [...], "val": [...], "test": [...]}``.

    Every patient of ``patients`` (those found in the raw folder) must be listed exactly once.

    Raises:
        DataError: unreadable JSON, an unknown role, or an unknown, duplicated or missing patient
            (one line naming the file and the patient).
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"--split_file {path} is not a readable JSON file ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict) or not set(content) <= set(ROLES) or not all(r in content for r in REQUIRED_ROLES):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"--split_file {path} must be a JSON object with lists 'train', 'test' and optionally 'val', got {found}")
    roles: dict[int, str] = {}
    for role in ROLES:
        entries = content.get(role, [])
        if not isinstance(entries, list):
            raise DataError(f"--split_file {path}: {role!r} must be a list of patients")
        for entry in entries:
            number = _patient_number(path, role, entry)
            if number in roles:
                raise DataError(
                    f"--split_file {path}: patient{number:03d} is listed twice ({roles[number]!r} and "
                    f"{role!r}); list each patient once"
                )
            roles[number] = role
    known = set(patients)
    unknown = sorted(set(roles) - known)
    if unknown:
        raise DataError(
            f"--split_file {path} lists patient{unknown[0]:03d}"
            + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else "")
            + " with no annotated frame in --raw; check the ids or the raw folder"
        )
    missing = sorted(known - set(roles))
    if missing:
        raise DataError(
            f"--split_file {path} does not list patient{missing[0]:03d}"
            + (f" nor {len(missing) - 1} more" if len(missing) > 1 else "")
            + " found in --raw; give every patient a role"
        )
    return roles


def convert(
    raw_dir: str | Path, out_dir: str | Path, list_dir: str | Path | None = None, split_file: str | Path | None = None
) -> dict[str, list[str]]:
    """Convert raw ACDC to the Synapse format under ``out_dir`` (see the module docstring).

    Args:
        split_file: a JSON split of the patients (``read_split_file``); None applies this
            repository's rule (``datasets.lists.split_role``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: the case names of each split.
    """
    frames = find_frames(raw_dir)
    if split_file is not None:
        # Read before anything is written, so a bad split file leaves --out untouched.
        roles = read_split_file(split_file, sorted({frame.patient for frame in frames}))
        role_of = roles.__getitem__
    else:
        role_of = split_role
    out_dir = Path(out_dir)
    list_dir = Path(list_dir if list_dir is not None else ACDC.list_dir)
    done: dict[str, list[str]] = {TRAIN: [], VAL: [], TEST: []}
    slices: list[str] = []
    # Staged: a conversion that stops half-way leaves an earlier one in out_dir untouched; the
    # lists (by default outside out_dir) are written after the rename and checked by the doctor
    # against the marker.
    with staged_output(out_dir, "datasets.prepare.acdc") as stage:
        for frame in tqdm(frames, desc="ACDC -> Synapse format", unit="frame"):
            image, label, spacing = read_nifti_pair(frame.image, frame.label, ACDC.num_classes)
            image = normalise_volume(image)
            role = role_of(frame.patient)
            if role == TRAIN:
                slices += write_training_slices(stage.folder / TRAIN_DIR, frame.name, image, label)
            else:
                write_volume(stage.folder / TEST_DIR, frame.name, image, label, spacing)
            done[role].append(frame.name)
        for file_name, names in ((ACDC.train_list, slices), (ACDC.val_list, done[VAL]), (ACDC.test_list, done[TEST])):
            if names:
                stage.list_file(list_dir / file_name, names)
            else:
                logger.warning("no frames for %s; not written", list_dir / file_name)
    logger.info(
        "converted %d training frames (%d slices), %d validation and %d test frames into %s; lists in %s",
        len(done[TRAIN]),
        len(slices),
        len(done[VAL]),
        len(done[TEST]),
        out_dir,
        list_dir,
    )
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare.acdc",
        description="Convert raw ACDC cine MRI (patientXXX_frameYY.nii.gz + _gt) to train_npz/ slices and "
        "test_vol_h5/ volumes with a 70/10/20 patient split (this repository's rule, not any paper's; "
        "--split_file gives a paper's).",
    )
    parser.add_argument("--raw", required=True, type=Path, help="ACDC training folder (patient001/ ... patient100/)")
    parser.add_argument("--out", required=True, type=Path, help="output data folder (the table's default: ./data/ACDC)")
    parser.add_argument("--list_dir", type=Path, help=f"where the lists go (default {ACDC.list_dir})")
    parser.add_argument(
        "--split_file",
        type=Path,
        help='JSON {"train": [...], "val": [...], "test": [...]} of patient ids (patient001 or 1), to '
        "reproduce a paper's split; default: this repository's rule (test n %% 5 == 0, "
        "validation n %% 10 == 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        convert(args.raw, args.out, args.list_dir, args.split_file)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main()
