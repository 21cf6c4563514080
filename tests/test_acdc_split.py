"""ACDC with a published split: --split_file puts each patient where the file says; unknown,
duplicated or missing patients are one-line errors and nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from datasets.common import DataError
from datasets.prepare.acdc import convert, main, read_split_file
from datasets.synthetic.acdc import make_case

PATIENTS = (1, 2, 3, 4, 5, 6)
FRAMES = (1, 12)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The challenge layout, patientNNN/patientNNN_frameYY.nii.gz + _gt, of synthetic hearts."""
    folder = tmp_path_factory.mktemp("acdc_raw") / "training"
    for patient in PATIENTS:
        case = folder / f"patient{patient:03d}"
        case.mkdir(parents=True)
        for frame in FRAMES:
            image, label = make_case(np.random.default_rng(patient * 100 + frame), 32, 3)
            for array, tag in ((np.round(image * 800).astype(np.int16), ""), (label.astype(np.uint8), "_gt")):
                volume = sitk.GetImageFromArray(array)
                volume.SetSpacing((1.4, 1.4, 10.0))
                sitk.WriteImage(volume, str(case / f"patient{patient:03d}_frame{frame:02d}{tag}.nii.gz"))
    return folder


def write_split(path, split: dict):
    path.write_text(json.dumps(split))
    return path


def names(patients) -> list[str]:
    return [f"patient{p:03d}_frame{f:02d}" for p in patients for f in FRAMES]


def test_a_split_file_decides_every_patient_role(raw, tmp_path):
    split = write_split(
        tmp_path / "split.json", {"train": ["patient001", 3, "4", "patient006"], "val": [2], "test": ["patient005"]}
    )
    done = convert(raw, tmp_path / "out", tmp_path / "lists", split)
    assert done == {"train": names([1, 3, 4, 6]), "val": names([2]), "test": names([5])}
    assert (tmp_path / "lists" / "val_vol.txt").read_text().split() == names([2])
    assert (tmp_path / "lists" / "test_vol.txt").read_text().split() == names([5])
    slices = (tmp_path / "lists" / "train.txt").read_text().split()
    assert len(slices) == 4 * 2 * 3 and slices[0] == "patient001_frame01_slice000"
    # The default rule puts patient 5 in test and 2 in validation too, but 3 would go to training
    # either way; a different split shows the file, not the rule, decides.
    other = write_split(tmp_path / "other.json", {"train": [1, 2, 5, 6], "test": [3, 4]})
    done = convert(raw, tmp_path / "out2", tmp_path / "lists2", other)
    assert done == {"train": names([1, 2, 5, 6]), "val": [], "test": names([3, 4])}
    assert not (tmp_path / "lists2" / "val_vol.txt").exists()


def test_without_a_split_file_the_rule_applies(raw, tmp_path):
    done = convert(raw, tmp_path / "out", tmp_path / "lists")
    assert done == {"train": names([1, 3, 4, 6]), "val": names([2]), "test": names([5])}


@pytest.mark.parametrize(
    "split, message",
    [
        ({"train": [1, 2, 3, 4, 7], "test": [5, 6]}, r"lists patient007 with no annotated frame in --raw"),
        ({"train": [1, 2, 3, 4], "val": ["patient004"], "test": [5, 6]}, r"patient004 is listed twice \('train' and 'val'\)"),
        ({"train": [1, 2, 3], "test": [5, 6]}, r"does not list patient004 found in --raw"),
        ({"train": [1, 2, 3, 4, 5, 6]}, r"must be a JSON object with lists 'train', 'test'"),
        ({"train": [1, 2, 3, 4], "test": [5, 6], "holdout": []}, r"must be a JSON object"),
        ({"train": [1, 2, 3, 4, "heart"], "test": [5, 6]}, r"'train' entry 'heart' is not a patient id"),
    ],
)
def test_bad_split_files_are_one_line_errors(raw, tmp_path, split, message):
    path = write_split(tmp_path / "split.json", split)
    with pytest.raises(DataError, match=message):
        convert(raw, tmp_path / "out", tmp_path / "lists", path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "lists").exists()


def test_the_cli_reports_a_bad_split_file_in_one_line(raw, tmp_path, capsys):
    path = write_split(tmp_path / "split.json", {"train": [1, 1], "test": [2]})
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--raw", str(raw), "--out", str(tmp_path / "out"), "--list_dir", str(tmp_path / "lists"), "--split_file", str(path)]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == f"error: --split_file {path}: patient001 is listed twice ('train' and 'train'); list each patient once\n"


def test_read_split_file_accepts_ids_and_numbers(tmp_path):
    path = write_split(tmp_path / "s.json", {"train": ["patient010", "11"], "val": [12], "test": ["patient0013"]})
    assert read_split_file(path, [10, 11, 12, 13]) == {10: "train", 11: "train", 12: "val", 13: "test"}
