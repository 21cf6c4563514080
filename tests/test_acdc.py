"""ACDC: the raw-NIfTI converter, the synthetic cardiac generator, and train.py + test.py end to
end with --dataset ACDC on the generated data."""

from __future__ import annotations

import importlib
import json
import re

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import train as train_script
from datasets.catalog import dataset_info
from datasets.common import TEST, TRAIN, VAL, normalise_volume
from datasets.lists import split_role
from datasets.prepare.acdc import convert, main
from datasets.synthetic.acdc import (
    LEFT_VENTRICLE,
    MYOCARDIUM,
    RIGHT_VENTRICLE,
    generate_dataset,
    make_case,
)
from tests.conftest import TINY_RUN, TINY_SIZE, load_test_script
from utils.checkpoint import load_checkpoint, model_from_payload
from utils.inference import predict_volume

ACDC_SMALL = dict(seed=3, size=TINY_SIZE, train_cases=2, val_cases=1, test_cases=1, min_slices=4, max_slices=5)


def test_the_split_rule_is_70_10_20_and_alike_in_every_pathology_group():
    roles = [split_role(n) for n in range(1, 101)]
    assert (roles.count(TRAIN), roles.count(VAL), roles.count(TEST)) == (70, 10, 20)
    for group in range(5):  # ACDC's groups: patients 1-20 DCM, 21-40 HCM, 41-60 MINF, 61-80 NOR, 81-100 RV
        part = roles[20 * group : 20 * group + 20]
        assert (part.count(TRAIN), part.count(VAL), part.count(TEST)) == (14, 2, 4)
    assert [n for n in range(1, 21) if split_role(n) != TRAIN] == [2, 5, 10, 12, 15, 20]


def write_nifti(path, array, spacing=(1.5, 1.4, 10.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_the_converter_reads_the_challenge_layout(tmp_path):
    raw = tmp_path / "training"
    rng = np.random.default_rng(0)
    volumes = {}
    for patient in (1, 2, 5):  # train, validation, test by the rule
        folder = raw / f"patient{patient:03d}"
        folder.mkdir(parents=True)
        for frame in (1, 12):
            image = rng.uniform(10, 400, (3, 6, 5)).astype(np.int16)
            label = rng.integers(0, 4, (3, 6, 5)).astype(np.uint8)
            write_nifti(folder / f"patient{patient:03d}_frame{frame:02d}.nii.gz", image)
            write_nifti(folder / f"patient{patient:03d}_frame{frame:02d}_gt.nii.gz", label)
            volumes[f"patient{patient:03d}_frame{frame:02d}"] = (image, label)
        write_nifti(folder / f"patient{patient:03d}_4d.nii.gz", np.zeros((2, 3, 6, 5), np.int16)[0])  # no _gt: skipped
    out, lists = tmp_path / "out", tmp_path / "lists"
    done = convert(raw, out, lists)
    assert done == {
        TRAIN: ["patient001_frame01", "patient001_frame12"],
        VAL: ["patient002_frame01", "patient002_frame12"],
        TEST: ["patient005_frame01", "patient005_frame12"],
    }
    assert (lists / "train.txt").read_text().split()[:4] == [
        "patient001_frame01_slice000",
        "patient001_frame01_slice001",
        "patient001_frame01_slice002",
        "patient001_frame12_slice000",
    ]
    assert (lists / "val_vol.txt").read_text().split() == done[VAL]
    assert (lists / "test_vol.txt").read_text().split() == done[TEST]
    image, label = volumes["patient005_frame12"]
    with h5py.File(out / "test_vol_h5" / "patient005_frame12.npy.h5") as file:
        expected = (image - image.min()) / (image.max() - image.min())  # per-volume min-max to [0, 1]
        np.testing.assert_allclose(file["image"][()], expected, rtol=1e-6)
        np.testing.assert_array_equal(file["label"][()], label)  # ACDC's ids kept
        np.testing.assert_allclose(file.attrs["spacing"], (10.0, 1.4, 1.5))  # (z, y, x)
    with np.load(out / "train_npz" / "patient001_frame01_slice002.npz") as data:
        np.testing.assert_array_equal(data["label"], volumes["patient001_frame01"][1][2])


def test_converter_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--raw" in err and str(tmp_path / "nowhere") in err and err.count("\n") == 1
    folder = tmp_path / "patient001"
    folder.mkdir()
    write_nifti(folder / "patient001_frame01.nii.gz", np.zeros((2, 4, 4), np.int16))
    write_nifti(folder / "patient001_frame01_gt.nii.gz", np.full((2, 4, 4), 7, np.uint8))
    with pytest.raises(SystemExit):
        main(["--raw", str(tmp_path), "--out", str(tmp_path / "out"), "--list_dir", str(tmp_path / "lists")])
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last_line.startswith("error: ") and "patient001_frame01_gt.nii.gz" in last_line and "0..3" in last_line


def test_generated_hearts_have_the_short_axis_anatomy():
    image, label = make_case(np.random.default_rng(5), 64, 8)
    assert image.dtype == np.float32 and image.min() == 0.0 and image.max() == 1.0
    for z in range(8):
        lv, myo, rv = label[z] == LEFT_VENTRICLE, label[z] == MYOCARDIUM, label[z] == RIGHT_VENTRICLE
        assert lv.any() and myo.any()
        # the myocardium encloses the pool: growing the pool by one pixel stays in the heart
        assert not (ndimage.binary_dilation(lv) & ~(lv | myo)).any()
        # the right ventricle never touches the left-ventricle pool (the septum lies between)
        assert not (ndimage.binary_dilation(rv) & lv).any()
        if rv.any():  # beside the LV on the image's left
            assert np.argwhere(rv)[:, 1].mean() < np.argwhere(lv)[:, 1].mean()
        # bright blood, dark muscle
        assert image[z][lv].mean() > image[z][myo].mean() + 0.2
    assert (label[0] == RIGHT_VENTRICLE).any() and not (label[-1] == RIGHT_VENTRICLE).any()  # RV ends before the apex
    assert (label[-1] == LEFT_VENTRICLE).sum() < (label[0] == LEFT_VENTRICLE).sum()  # LV narrows to the apex


def test_generation_is_deterministic_and_in_the_converter_layout(tmp_path):
    first = generate_dataset(tmp_path / "a", **ACDC_SMALL)
    second = generate_dataset(tmp_path / "b", **ACDC_SMALL)
    assert (first[VAL], first[TEST]) == (["patient003_frame01"], ["patient004_frame01"])
    names = (first["list_dir"] / "train.txt").read_text().split()
    assert len(names) == first["num_train_slices"] and names[0] == "patient001_frame01_slice000"
    for name in ("patient003_frame01", "patient004_frame01"):
        with h5py.File(first["test_dir"] / f"{name}.npy.h5") as a, h5py.File(second["test_dir"] / f"{name}.npy.h5") as b:
            np.testing.assert_array_equal(a["image"][()], b["image"][()])
            assert set(np.unique(a["label"][()])) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="--out .* already holds"):
        generate_dataset(tmp_path / "a", **ACDC_SMALL)


@pytest.fixture(scope="module")
def acdc(tmp_path_factory) -> dict:
    return generate_dataset(tmp_path_factory.mktemp("acdc"), **ACDC_SMALL)


def test_train_and_test_end_to_end_with_dataset_acdc(acdc, tmp_path):
    run = tmp_path / "run"
    code = train_script.main(
        [
            "--dataset",
            "ACDC",
            "--root_path",
            str(acdc["train_dir"]),
            "--test_path",
            str(acdc["test_dir"]),
            "--list_dir",
            str(acdc["list_dir"]),
            "--output_dir",
            str(run),
            *TINY_RUN,
            *("--eval_interval", "1", "--max_epochs", "1"),
        ]
    )
    assert code == 0
    log = (run / "log.txt").read_text()
    assert "--num_classes 4 (from --dataset ACDC)" in log
    assert "validation evaluation after epoch 0 (1 case(s)" in log  # the table's val_vol.txt, not the test list
    assert re.search(r"right ventricle +\d+\.\d\d +\d+\.\d\d", log) and re.search(r"left ventricle +\d+\.\d\d", log)
    assert (run / "best.pth").exists() and load_checkpoint(run / "last.pth")["model_kwargs"]["num_classes"] == 4

    code = load_test_script().main(
        ["--output_dir", str(run), "--volume_path", str(acdc["out_dir"]), "--list_dir", str(acdc["list_dir"]), "--workers", "0"]
    )
    assert code == 0
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert [row["name"] for row in metrics["per_class"]] == list(dataset_info("ACDC").class_names)
    assert [case["case"] for case in metrics["cases"]] == acdc[TEST]
    assert metrics["mean_dice"] == pytest.approx(np.mean([row["dice"] for row in metrics["per_class"]]))

    # a new MRI scan in NIfTI: min-max scaled (no CT window), segmented, written with its geometry
    with h5py.File(acdc["test_dir"] / f"{acdc[TEST][0]}.npy.h5") as file:
        volume = file["image"][()] * 800 + 40  # back to scanner units
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(scans / "patient101_frame01.nii.gz", volume.astype(np.float32))
    assert load_test_script().main(["--output_dir", str(run), "--volume_path", str(scans)]) == 0
    out = sitk.ReadImage(str(run / "test" / "patient101_frame01_pred.nii.gz"))
    assert out.GetSpacing() == pytest.approx((1.5, 1.4, 10.0))
    model = model_from_payload(load_checkpoint(run / "best.pth"), "best.pth").eval()
    expected = predict_volume(model, normalise_volume(volume.astype(np.float32)), (TINY_SIZE, TINY_SIZE))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected)


@pytest.mark.parametrize("module", ["datasets.synthetic.acdc", "datasets.synthetic.isic"])
def test_generator_cli_errors_name_the_flag(module, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--out", str(tmp_path), "--size", "8"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: --size must be an integer >= 32 pixels, got 8")
