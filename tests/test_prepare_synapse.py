"""Raw BTCV -> Synapse conversion on tiny NIfTI files written by the test."""

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from datasets.prepare.synapse import BTCV_TO_SYNAPSE, main
from datasets.synapse import H5Volumes, NpzSlices

SHAPE = (4, 16, 16)  # (z, y, x)
SPACING_XYZ = (0.7, 0.8, 3.0)

# BTCV id -> Synapse id, written out by hand from the BTCV and Synapse organ names.
EXPECTED_RENUMBERING = {
    0: 0,
    1: 7,
    2: 4,
    3: 3,
    4: 2,
    5: 0,
    6: 5,
    7: 8,
    8: 1,
    9: 0,
    10: 0,
    11: 6,
    12: 0,
    13: 0,
}


def wide_window_image() -> np.ndarray:
    """HU values spanning beyond [-125, 275], so the clipped min/max are -125 and 275."""
    image = np.full(SHAPE, 75, np.int16)
    image[0, 0, 0] = -1000  # clipped to -125 -> 0
    image[0, 0, 1] = 1000  # clipped to 275 -> 1
    image[1, 2, 3] = -25  # (-25 + 125) / 400 = 0.25
    image[2, 5, 5] = 175  # 0.75
    image[3, 15, 15] = -125  # 0
    return image


def narrow_window_image() -> np.ndarray:
    """HU values inside the window: per-volume min-max uses 0 and 100, not -125 and 275."""
    image = np.full(SHAPE, 50, np.int16)
    image[0, 0, 0] = 0
    image[3, 3, 3] = 100
    image[2, 2, 2] = 25
    return image


def all_ids_label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    for btcv_id in range(14):
        label[btcv_id % 4, btcv_id, :] = btcv_id  # one row per id, spread over slices
    return label


def write_nifti(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_case(raw: Path, number: int, image: np.ndarray, label: np.ndarray, subfolders: bool = False) -> None:
    write_nifti(raw / ("img" if subfolders else "") / f"img{number:04d}.nii.gz", image)
    write_nifti(raw / ("label" if subfolders else "") / f"label{number:04d}.nii.gz", label)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case0001 (standard test), case0005 (standard train), case0050 (in neither list)."""
    root = tmp_path_factory.mktemp("btcv")
    raw, out = root / "raw", root / "out"
    write_case(raw, 1, wide_window_image(), all_ids_label())
    write_case(raw, 5, narrow_window_image(), all_ids_label()[::-1].copy())
    write_case(raw, 50, wide_window_image(), np.zeros(SHAPE, np.uint8))
    logger = logging.getLogger("datasets.prepare.synapse")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        main(["--raw", str(raw), "--out", str(out)])
    finally:
        logger.removeHandler(handler)
    return out, [record.getMessage() for record in records]


def test_file_names_and_lists(converted):
    out, _ = converted
    assert sorted(p.name for p in (out / "test_vol_h5").iterdir()) == ["case0001.npy.h5"]
    expected_slices = [f"case{c:04d}_slice{i:03d}" for c in (5, 50) for i in range(4)]
    assert sorted(p.name for p in (out / "train_npz").iterdir()) == [f"{name}.npz" for name in expected_slices]
    assert (out / "lists" / "train.txt").read_text().splitlines() == expected_slices
    assert (out / "lists" / "test_vol.txt").read_text().splitlines() == ["case0001"]


def test_case_outside_the_split_goes_to_training_with_a_log_line(converted):
    _, messages = converted
    assert any("case0050" in m and "training" in m for m in messages)


def test_test_volume_contents_and_spacing(converted):
    out, _ = converted
    with h5py.File(out / "test_vol_h5" / "case0001.npy.h5") as file:
        image, label = file["image"][()], file["label"][()]
        spacing = tuple(file.attrs["spacing"])
    assert image.dtype == np.float32 and label.dtype == np.float32
    assert image.shape == label.shape == SHAPE
    assert spacing == pytest.approx((3.0, 0.8, 0.7))  # (z, y, x)
    assert image[0, 0, 0] == 0.0 and image[0, 0, 1] == 1.0
    assert image[1, 2, 3] == pytest.approx(0.25)
    assert image[2, 5, 5] == pytest.approx(0.75)
    assert image[3, 15, 15] == 0.0
    assert image[1, 1, 1] == pytest.approx(0.5)  # 75 HU
    raw_label = all_ids_label()
    for btcv_id, synapse_id in EXPECTED_RENUMBERING.items():
        assert (label[raw_label == btcv_id] == synapse_id).all(), btcv_id
    assert BTCV_TO_SYNAPSE == {b: s for b, s in EXPECTED_RENUMBERING.items() if s}


def test_training_slices_are_per_volume_normalised_and_renumbered(converted):
    out, _ = converted
    raw_label = all_ids_label()[::-1]
    for index in range(SHAPE[0]):
        with np.load(out / "train_npz" / f"case0005_slice{index:03d}.npz") as npz:
            image, label = npz["image"], npz["label"]
        assert image.dtype == np.float32 and label.dtype == np.float32
        assert image.shape == label.shape == SHAPE[1:]
        expected_image = narrow_window_image()[index].astype(np.float32) / 100
        np.testing.assert_allclose(image, expected_image, atol=1e-6)
        expected_label = np.vectorize(EXPECTED_RENUMBERING.get)(raw_label[index])
        np.testing.assert_array_equal(label, expected_label)


def test_outputs_read_back_with_the_readers(converted):
    out, _ = converted
    volumes = H5Volumes(out / "test_vol_h5", out / "lists" / "test_vol.txt", 9)
    assert volumes[0]["spacing"] == pytest.approx((3.0, 0.8, 0.7))
    slices = NpzSlices(out / "train_npz", out / "lists" / "train.txt", 9, img_size=(16, 16), augment=None)
    assert len(slices) == 8 and slices[7]["case_name"] == "case0050_slice003"


def test_subfolders_and_custom_list_dir(tmp_path):
    raw = tmp_path / "raw"
    write_case(raw, 8, wide_window_image(), all_ids_label(), subfolders=True)
    write_case(raw, 6, narrow_window_image(), all_ids_label(), subfolders=True)
    main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--list_dir", str(tmp_path / "l")])
    assert (tmp_path / "l" / "test_vol.txt").read_text() == "case0008\n"
    assert len((tmp_path / "l" / "train.txt").read_text().splitlines()) == 4
    assert (tmp_path / "out" / "test_vol_h5" / "case0008.npy.h5").is_file()


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err  # may also hold the progress bar
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    err = run_error(["--raw", str(tmp_path / "absent"), "--out", out], capsys)
    assert "absent does not exist" in err

    raw = tmp_path / "raw"
    raw.mkdir()
    assert "no img00XX.nii.gz files" in run_error(["--raw", str(raw), "--out", out], capsys)

    write_nifti(raw / "img0002.nii.gz", wide_window_image())
    err = run_error(["--raw", str(raw), "--out", out], capsys)
    assert "img0002.nii.gz has no label file" in err and "label0002.nii.gz" in err

    write_nifti(raw / "label0002.nii.gz", np.zeros((4, 16, 15), np.uint8))
    err = run_error(["--raw", str(raw), "--out", out], capsys)
    assert "shape (4, 16, 16)" in err and "(4, 16, 15)" in err

    bad_ids = np.zeros(SHAPE, np.uint8)
    bad_ids[0, 0, 0] = 14
    write_nifti(raw / "label0002.nii.gz", bad_ids)
    err = run_error(["--raw", str(raw), "--out", out], capsys)
    assert "label0002.nii.gz: label values span [0, 14]" in err


def test_a_label_on_another_voxel_grid_is_refused_as_the_other_converters_do(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_case(raw, 8, wide_window_image(), all_ids_label())
    shifted = sitk.GetImageFromArray(all_ids_label())
    shifted.SetSpacing(SPACING_XYZ)
    shifted.SetOrigin((40.0, 0.0, 0.0))  # 40 mm off: the label was drawn on another grid
    sitk.WriteImage(shifted, str(raw / "label0008.nii.gz"))
    err = run_error(["--raw", str(raw), "--out", str(tmp_path / "out")], capsys)
    assert "img0008.nii.gz and" in err and "label0008.nii.gz differ in origin (x, y, z) mm: (0, 0, 0) vs (40, 0, 0)" in err
