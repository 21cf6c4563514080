"""Your own data: a folder of labelled NIfTI volumes converted by datasets.prepare.nifti, then
train.py and test.py with --dataset OUT/dataset.json."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

import train as train_script
from datasets.catalog import load_dataset_json
from datasets.prepare.nifti import convert, held_out_positions, main, read_classes
from datasets.synthetic.acdc import (
    LEFT_VENTRICLE,
    MYOCARDIUM,
    RIGHT_VENTRICLE,
    make_case,
)
from tests.conftest import TINY_RUN, TINY_SIZE, load_test_script

CLASSES = {"0": "background", "1": "cavity", "2": "wall"}
CLIP = (-100.0, 300.0)
NUM_CASES = 5


def two_class_label(label: np.ndarray) -> np.ndarray:
    """Both ventricles -> 1 (cavity), myocardium -> 2 (wall)."""
    out = np.zeros_like(label)
    out[(label == LEFT_VENTRICLE) | (label == RIGHT_VENTRICLE)] = 1
    out[label == MYOCARDIUM] = 2
    return out


@pytest.fixture(scope="module")
def nifti_folder(tmp_path_factory) -> dict:
    """5 cases named like nnU-Net's raw data (imagesTr/NAME_0000.nii.gz, labelsTr/NAME.nii.gz)."""
    root = tmp_path_factory.mktemp("mine")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    raw = {}
    for k in range(NUM_CASES):
        image, label = make_case(np.random.default_rng(k), TINY_SIZE, 4)
        hu = (image * 600 - 200).astype(np.float32)  # beyond the clip window on both sides
        for path, array in (
            (root / "imagesTr" / f"heart{k}_0000.nii.gz", hu),
            (root / "labelsTr" / f"heart{k}.nii.gz", two_class_label(label)),
        ):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.0, 1.0, 8.0))
            sitk.WriteImage(volume, str(path))
        raw[f"heart{k}"] = (hu, two_class_label(label))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return {"root": root, "raw": raw}


def test_held_out_cases_are_spread_over_the_sorted_names():
    assert held_out_positions(5, 0.2) == {2}
    assert held_out_positions(10, 0.2) == {2, 7}
    assert held_out_positions(2, 0.9) == {1}  # at least one training case stays
    assert held_out_positions(3, 0.01) == {1}  # at least one test case


def test_conversion_and_training_and_testing_with_the_dataset_json(nifti_folder, tmp_path):
    root = nifti_folder["root"]
    out = tmp_path / "data"
    info = convert(root / "imagesTr", root / "labelsTr", root / "classes.json", out, 0.2, CLIP)
    assert json.loads((out / "dataset.json").read_text()) == {"class_names": ["cavity", "wall"], "intensity_clip": list(CLIP)}
    assert (info.num_classes, info.class_names) == (3, ("cavity", "wall"))
    assert (out / "lists" / "test_vol.txt").read_text().split() == ["heart2"]
    assert len((out / "lists" / "train.txt").read_text().split()) == 4 * 4
    hu, label = nifti_folder["raw"]["heart2"]
    clipped = np.clip(hu.astype(np.float64), *CLIP)
    with h5py.File(out / "test_vol_h5" / "heart2.npy.h5") as file:
        np.testing.assert_allclose(file["image"][()], (clipped - clipped.min()) / (clipped.max() - clipped.min()), rtol=1e-6)
        np.testing.assert_array_equal(file["label"][()], label)
        np.testing.assert_allclose(file.attrs["spacing"], (8.0, 1.0, 1.0))

    run = tmp_path / "run"
    code = train_script.main(
        [
            "--dataset",
            str(out / "dataset.json"),
            "--output_dir",
            str(run),
            *TINY_RUN,
            *("--max_epochs", "1"),
        ]
    )
    assert code == 0
    log = (run / "log.txt").read_text()
    assert f"--root_path {out / 'train_npz'} (from --dataset" in log and "--num_classes 3 (from --dataset" in log
    assert "test evaluation after epoch 0 (1 case(s)" in log and "wall" in log

    # test.py takes everything from the checkpoint, which remembers --dataset
    assert load_test_script().main(["--output_dir", str(run), "--workers", "0"]) == 0
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert [row["name"] for row in metrics["per_class"]] == ["cavity", "wall"]
    assert [case["case"] for case in metrics["cases"]] == ["heart2"]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"1": "a", "3": "b"}, "class ids must be 1..K without gaps, got [1, 3]"),
        ({"one": "a"}, "keys must be class ids"),
        (["a", "b"], "must hold a JSON object"),
    ],
)
def test_bad_class_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "classes.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="--classes") as error:
        read_classes(tmp_path / "classes.json")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_converter_cli_errors_name_the_file(nifti_folder, tmp_path, capsys):
    root = nifti_folder["root"]
    (tmp_path / "labels").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "--images",
                str(root / "imagesTr"),
                "--labels",
                str(tmp_path / "labels"),
                "--classes",
                str(root / "classes.json"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "heart0_0000.nii.gz has no label" in err and err.count("\n") == 1


def test_a_bad_dataset_json_stops_train_py_in_one_line(tmp_path, capsys):
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": []}))
    assert train_script.main(["--dataset", str(tmp_path / "dataset.json"), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'class_names' must be a non-empty list" in err and err.count("\n") == 1
    assert train_script.main(["--dataset", "Synapze", "--output_dir", str(tmp_path / "run")]) == 2
    assert "--dataset 'Synapze' is not known; choose one of Synapse, ACDC, ISIC2018" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset_json(tmp_path / "missing.json")
