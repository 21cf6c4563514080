"""Synapse readers: preprocessing, items, volume assembly, case split and every DataError."""

import re
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import zoom
from torch.utils.data import DataLoader

from datasets.lists import standard_synapse_split
from datasets.synapse import (
    IMAGE_MEAN,
    IMAGE_STD,
    DataError,
    H5Volumes,
    NpzSlices,
    preprocess_slice,
    resize_label,
    slices_to_volumes,
    split_cases,
)

NUM_CLASSES = 9


def write_slice(folder: Path, name: str, image=None, label=None, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = {}
    if image is not False:
        arrays["image"] = rng.random((12, 10), dtype=np.float32) if image is None else image
    if label is not False:
        arrays["label"] = rng.integers(0, NUM_CLASSES, (12, 10)).astype(np.float32) if label is None else label
    arrays.update(extra)
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def write_list(path: Path, names) -> Path:
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def write_volume(folder: Path, name: str, image=None, label=None, spacing=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    path = folder / f"{name}.npy.h5"
    with h5py.File(path, "w") as file:
        file["image"] = rng.random((3, 6, 5), dtype=np.float32) if image is None else image
        if label is not False:
            file["label"] = rng.integers(0, NUM_CLASSES, (3, 6, 5)).astype(np.float32) if label is None else label
        if spacing is not None:
            file.attrs["spacing"] = spacing
    return path


# ---------------------------------------------------------------- preprocessing


def test_preprocess_slice_hits_samples_exactly_on_a_hand_example():
    # 5 -> 3 with zoom (grid_mode False) samples rows/cols 0, 2, 4: the cubic spline
    # interpolates, so the output is the input there, then (x - 0.5) / 0.5.
    image = np.arange(25, dtype=np.float32).reshape(5, 5) / 25
    out = preprocess_slice(image, (3, 3))
    expected = (np.float32([[0, 2, 4], [10, 12, 14], [20, 22, 24]]) / 25 - 0.5) / 0.5
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32 and IMAGE_MEAN == 0.5 and IMAGE_STD == 0.5


def test_preprocess_slice_equals_scipy_zoom_order3_then_normalisation():
    image = np.random.default_rng(0).random((20, 16), dtype=np.float32)
    out = preprocess_slice(image, (24, 24))
    reference = (zoom(image, (24 / 20, 24 / 16), order=3) - 0.5) / 0.5
    np.testing.assert_array_equal(out, reference.astype(np.float32))
    # already the right size: normalisation only, no zoom
    np.testing.assert_array_equal(preprocess_slice(image, (20, 16)), (image - 0.5) / 0.5)


def test_resize_label_is_nearest_and_int64():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], np.float32)
    out = resize_label(label, (2, 2))
    np.testing.assert_array_equal(out, [[0, 1], [2, 3]])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(resize_label(out, (4, 4)), label)


def test_bad_img_size_and_ndim_are_rejected():
    with pytest.raises(ValueError, match="img_size must be two positive ints"):
        preprocess_slice(np.zeros((4, 4)), (0, 4))
    with pytest.raises(ValueError, match=r"expected a 2D slice \(H, W\), got shape \(2, 4, 4\)"):
        preprocess_slice(np.zeros((2, 4, 4)), (4, 4))


# ---------------------------------------------------------------- NpzSlices


def test_slices_item_without_augmentation(tmp_path):
    data = tmp_path / "train_npz"
    names = ["case0001_slice000", "case0001_slice001"]
    for name in names:
        write_slice(data, name)
    uint8_label = np.random.default_rng(1).integers(0, NUM_CLASSES, (12, 10)).astype(np.uint8)
    write_slice(data, "case0002_slice000", label=uint8_label)
    names.append("case0002_slice000")
    dataset = NpzSlices(data, write_list(tmp_path / "train.txt", names), NUM_CLASSES, img_size=(8, 8), augment=None)
    assert len(dataset) == 3
    for index, name in enumerate(names):
        item = dataset[index]
        with np.load(data / f"{name}.npz") as stored:
            image, label = stored["image"], stored["label"]
        assert item["case_name"] == name
        assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 8, 8)
        assert item["label"].dtype == torch.int64 and item["label"].shape == (8, 8)
        # Training resizes with float32 products (TRAINING_ZOOM_PRODUCTS): within a few
        # float32 roundings of scipy's zoom; labels exactly equal.
        np.testing.assert_allclose(item["image"][0].numpy(), preprocess_slice(image, (8, 8)), rtol=0, atol=4e-6)
        np.testing.assert_array_equal(item["label"].numpy(), resize_label(label, (8, 8)))
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 1, 8, 8) and batch["case_name"] == names[:2]


def test_slices_augmentation_runs_after_the_resize_or_first_on_request(tmp_path):
    # Deliberate change of order (datasets.augment docstring): the augmentation sees the slice
    # already resized to img_size; augment_first=True keeps the published order.
    data = tmp_path / "train_npz"
    path = write_slice(data, "case0001_slice000")
    seen = []

    def flip(image, label):
        seen.append((image.shape, image.dtype, label.dtype))
        return image[::-1].copy(), label[::-1].copy()

    with np.load(path) as stored:
        image, label = stored["image"], stored["label"]
    names = write_list(tmp_path / "t.txt", ["case0001_slice000"])
    item = NpzSlices(data, names, NUM_CLASSES, img_size=(8, 8), augment=flip)[0]
    assert seen == [((8, 8), np.float32, np.int64)]
    np.testing.assert_allclose(item["image"][0].numpy(), preprocess_slice(image, (8, 8))[::-1], rtol=0, atol=4e-6)
    np.testing.assert_array_equal(item["label"].numpy(), resize_label(label, (8, 8))[::-1])

    item = NpzSlices(data, names, NUM_CLASSES, img_size=(8, 8), augment=flip, augment_first=True)[0]
    assert seen[1] == ((12, 10), np.float32, np.int64)
    np.testing.assert_array_equal(item["image"][0].numpy(), preprocess_slice(image[::-1], (8, 8)))
    np.testing.assert_array_equal(item["label"].numpy(), resize_label(label[::-1], (8, 8)))
    # The sample positions 11k/7 of 12 -> 8 are symmetric (11 - 11k/7 = 11(7-k)/7), so a flip
    # commutes with this resize: both orders agree up to rounding.
    np.testing.assert_allclose(item["image"][0].numpy(), preprocess_slice(image, (8, 8))[::-1], atol=1e-6)


def test_slices_with_named_augmentation(tmp_path):
    data = tmp_path / "train_npz"
    write_slice(data, "case0001_slice000")
    dataset = NpzSlices(
        data, write_list(tmp_path / "t.txt", ["case0001_slice000"]), NUM_CLASSES, img_size=(16, 16), augment="daeformer"
    )
    torch.manual_seed(0)
    for _ in range(5):
        item = dataset[0]
        assert item["image"].shape == (1, 16, 16)
        assert int(item["label"].min()) >= 0 and int(item["label"].max()) < NUM_CLASSES
    with pytest.raises(ValueError, match="--augment"):
        NpzSlices(data, tmp_path / "t.txt", NUM_CLASSES, augment="imgaug")


def expect_data_error(path_in_message, make, read=False):
    with pytest.raises(DataError, match=re.escape(str(path_in_message))) as info:
        dataset = make()
        if read:
            dataset[0]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_slices_construction_errors(tmp_path):
    data = tmp_path / "train_npz"
    missing_list = tmp_path / "nope.txt"
    assert "does not exist" in expect_data_error(missing_list, lambda: NpzSlices(data, missing_list, NUM_CLASSES))
    empty = write_list(tmp_path / "empty.txt", [])
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert "is empty" in expect_data_error(empty, lambda: NpzSlices(data, empty, NUM_CLASSES))

    write_slice(data, "case0001_slice000")
    listed = write_list(tmp_path / "t.txt", ["case0001_slice000", "case0001_slice001"])
    message = expect_data_error(data / "case0001_slice001.npz", lambda: NpzSlices(data, listed, NUM_CLASSES))
    assert "does not exist" in message and "t.txt" in message

    no_label = write_slice(data, "case0002_slice000", label=False)
    listed = write_list(tmp_path / "t2.txt", ["case0002_slice000"])
    assert "no 'label' array" in expect_data_error(no_label, lambda: NpzSlices(data, listed, NUM_CLASSES))

    not_zip = data / "case0003_slice000.npz"
    not_zip.write_bytes(b"definitely not a zip archive")
    listed = write_list(tmp_path / "t3.txt", ["case0003_slice000"])
    assert "not a .npz" in expect_data_error(not_zip, lambda: NpzSlices(data, listed, NUM_CLASSES))

    truncated = write_slice(data, "case0004_slice000")
    truncated.write_bytes(truncated.read_bytes()[:300])
    listed = write_list(tmp_path / "t4.txt", ["case0004_slice000"])
    expect_data_error(truncated, lambda: NpzSlices(data, listed, NUM_CLASSES))

    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        NpzSlices(data, tmp_path / "t.txt", 0)


BAD_SLICES = {
    "shape mismatch": (dict(label=np.zeros((12, 9), np.float32)), "differs from image shape"),
    "wrong ndim": (dict(image=np.zeros((2, 12, 10), np.float32), label=np.zeros((2, 12, 10), np.float32)), "image has 3 dims"),
    "nan image": (dict(image=np.full((12, 10), np.nan, np.float32)), "NaN"),
    "nan label": (dict(label=np.full((12, 10), np.nan, np.float32)), "NaN"),
    "fractional label": (dict(label=np.full((12, 10), 1.5, np.float32)), "non-integer"),
    "label too large": (dict(label=np.full((12, 10), NUM_CLASSES, np.float32)), "expected class ids in [0, 9)"),
    "negative label": (dict(label=np.full((12, 10), -1, np.int16)), "span [-1, -1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_SLICES))
def test_slices_item_errors(tmp_path, case):
    arrays, expected = BAD_SLICES[case]
    data = tmp_path / "train_npz"
    path = write_slice(data, "case0001_slice000", **arrays)
    listed = write_list(tmp_path / "t.txt", ["case0001_slice000"])
    message = expect_data_error(path, lambda: NpzSlices(data, listed, NUM_CLASSES, augment=None), read=True)
    assert expected in message
    # check=False skips validation of the arrays (the caller vouches for the data)
    if case in ("nan image", "fractional label"):
        NpzSlices(data, listed, NUM_CLASSES, augment=None, check=False)[0]


def test_corrupt_array_data_is_caught_on_read(tmp_path):
    data = tmp_path / "train_npz"
    path = write_slice(data, "case0001_slice000")
    corrupt = bytearray(path.read_bytes())
    corrupt[200] ^= 0xFF  # inside image.npy's data: the zip directory stays intact
    path.write_bytes(bytes(corrupt))
    listed = write_list(tmp_path / "t.txt", ["case0001_slice000"])
    dataset = NpzSlices(data, listed, NUM_CLASSES, augment=None)  # directory is fine
    assert "Bad CRC-32" in expect_data_error(path, lambda: dataset, read=True)


def test_file_corrupted_after_construction_still_names_file(tmp_path):
    data = tmp_path / "train_npz"
    path = write_slice(data, "case0001_slice000")
    dataset = NpzSlices(data, write_list(tmp_path / "t.txt", ["case0001_slice000"]), NUM_CLASSES, augment=None)
    path.write_bytes(b"garbage")
    expect_data_error(path, lambda: dataset, read=True)


# ---------------------------------------------------------------- H5Volumes


def test_volume_item_with_and_without_spacing(tmp_path):
    data = tmp_path / "test_vol_h5"
    write_volume(data, "case0008", spacing=[3.0, 0.75, 0.7])
    write_volume(data, "case0022")
    dataset = H5Volumes(data, write_list(tmp_path / "v.txt", ["case0008", "case0022"]), NUM_CLASSES)
    item = dataset[0]
    with h5py.File(data / "case0008.npy.h5") as file:
        np.testing.assert_array_equal(item["image"], file["image"][()])
        np.testing.assert_array_equal(item["label"], file["label"][()].astype(np.int64))
    assert item["image"].dtype == np.float32 and item["image"].shape == (3, 6, 5)
    assert item["label"].dtype == np.int64
    assert item["case_name"] == "case0008"
    assert item["spacing"] == (3.0, 0.75, 0.7) and all(type(v) is float for v in item["spacing"])
    assert dataset[1]["spacing"] is None


def test_volume_without_label(tmp_path):
    data = tmp_path / "test_vol_h5"
    path = write_volume(data, "case0100", label=False)
    listed = write_list(tmp_path / "v.txt", ["case0100"])
    item = H5Volumes(data, listed, NUM_CLASSES, require_label=False)[0]
    assert item["label"] is None and item["image"].shape == (3, 6, 5)
    message = expect_data_error(path, lambda: H5Volumes(data, listed, NUM_CLASSES))
    assert "no 'label' dataset" in message and "require_label=False" in message


BAD_VOLUMES = {
    "wrong ndim": (dict(image=np.zeros((6, 5), np.float32), label=np.zeros((6, 5))), "image has 2 dims"),
    "shape mismatch": (dict(label=np.zeros((3, 6, 4), np.float32)), "differs from image shape"),
    "infinite image": (dict(image=np.full((3, 6, 5), np.inf, np.float32)), "infinite"),
    "label too large": (dict(label=np.full((3, 6, 5), 12.0, np.float32)), "span [12, 12]"),
    "fractional label": (dict(label=np.full((3, 6, 5), 0.25, np.float32)), "non-integer"),
    "bad spacing": (dict(spacing=[1.0, -1.0]), "attribute 'spacing'"),
    "zero slices": (dict(image=np.zeros((0, 6, 5), np.float32), label=np.zeros((0, 6, 5))), "which holds no voxels"),
    "raw HU": (
        dict(image=np.full((3, 6, 5), -1000.0, np.float32)),
        "image values span [-1000, -1000], the network expects [0, 1]",
    ),
    "0-255 pixels": (dict(image=np.full((3, 6, 5), 200.0, np.float32)), "divide the images by 255"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOLUMES))
def test_volume_item_errors(tmp_path, case):
    arrays, expected = BAD_VOLUMES[case]
    data = tmp_path / "test_vol_h5"
    path = write_volume(data, "case0001", **arrays)
    listed = write_list(tmp_path / "v.txt", ["case0001"])
    assert expected in expect_data_error(path, lambda: H5Volumes(data, listed, NUM_CLASSES), read=True)


def test_volume_construction_errors(tmp_path):
    data = tmp_path / "test_vol_h5"
    data.mkdir()
    listed = write_list(tmp_path / "v.txt", ["case0001"])
    assert "does not exist" in expect_data_error(data / "case0001.npy.h5", lambda: H5Volumes(data, listed, NUM_CLASSES))
    (data / "case0001.npy.h5").write_bytes(b"not hdf5 at all")
    assert "not a readable HDF5" in expect_data_error(data / "case0001.npy.h5", lambda: H5Volumes(data, listed, NUM_CLASSES))
    missing_list = tmp_path / "none.txt"
    expect_data_error(missing_list, lambda: H5Volumes(data, missing_list, NUM_CLASSES))


# ---------------------------------------------------------------- validation cases


def test_slices_to_volumes_stacks_in_slice_order(tmp_path):
    data = tmp_path / "train_npz"
    stored = {}
    for case in ("case0001", "case0002"):
        for index in (0, 1, 10, 2):  # slice 10 after 2: numeric, not text, order
            name = f"case{case[-4:]}_slice{index:03d}"
            write_slice(data, name)
            with np.load(data / f"{name}.npz") as npz:
                stored[name] = (npz["image"], npz["label"])
    names = [f"{c}_slice{i:03d}" for c in ("case0002", "case0001") for i in (10, 0, 2, 1)]
    volumes = slices_to_volumes(data, names, ["case0002", "case0001"], num_classes=NUM_CLASSES)
    assert [v["case_name"] for v in volumes] == ["case0002", "case0001"]
    for volume in volumes:
        order = [f"{volume['case_name']}_slice{i:03d}" for i in (0, 1, 2, 10)]
        np.testing.assert_array_equal(volume["image"], np.stack([stored[n][0] for n in order]))
        np.testing.assert_array_equal(volume["label"], np.stack([stored[n][1] for n in order]))
        assert volume["image"].dtype == np.float32 and volume["label"].dtype == np.int64
        assert volume["image"].shape == (4, 12, 10) and volume["spacing"] is None


def test_slices_to_volumes_errors(tmp_path):
    data = tmp_path / "train_npz"
    write_slice(data, "case0001_slice000")
    write_slice(data, "case0001_slice001", image=np.zeros((6, 6), np.float32), label=np.zeros((6, 6), np.float32))
    with pytest.raises(DataError, match="case case0009 has no slices"):
        slices_to_volumes(data, ["case0001_slice000"], ["case0009"])
    with pytest.raises(DataError, match=r"case0001_slice001.npz: slice shape \(6, 6\) differs"):
        slices_to_volumes(data, ["case0001_slice000", "case0001_slice001"], ["case0001"])
    with pytest.raises(DataError, match="case0001_slice002.npz does not exist"):
        slices_to_volumes(data, ["case0001_slice002"], ["case0001"])


def test_split_cases_holds_out_the_last_cases_in_sorted_order():
    names = [
        "case0003_slice000",
        "case0001_slice000",
        "case0010_slice001",
        "case0002_slice000",
        "case0010_slice000",
        "case0003_slice001",
    ]
    train, held_out = split_cases(names, 2)
    assert held_out == ["case0003", "case0010"]
    assert train == ["case0001_slice000", "case0002_slice000"]
    assert split_cases(names, 0) == (names, [])
    for k in (-1, 4):
        with pytest.raises(ValueError, match=f"--val_cases {k} must lie in"):
            split_cases(names, k)


def test_split_cases_on_the_standard_split():
    train, held_out = split_cases(standard_synapse_split()["train"], 2)
    assert held_out == ["case0039", "case0040"]
    assert len(train) == 2211 - 90 - 195


def test_raw_hounsfield_units_are_refused_with_the_doctors_explanation_unless_told(tmp_path):
    data = tmp_path / "test_vol_h5"
    hu = np.linspace(-1024, 1500, 3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5)
    path = write_volume(data, "case0001", image=hu)
    listed = write_list(tmp_path / "v.txt", ["case0001"])
    message = expect_data_error(path, lambda: H5Volumes(data, listed, NUM_CLASSES), read=True)
    assert (
        "span [-1024, 1500]" in message and "raw Hounsfield units: re-convert with python -m datasets.prepare.synapse" in message
    )
    assert H5Volumes(data, listed, NUM_CLASSES, check_range=False)[0]["image"].max() == 1500  # a later flag's way round


def test_a_declared_shape_above_the_limit_is_refused_before_reading(tmp_path):
    data = tmp_path / "test_vol_h5"
    data.mkdir()
    path = data / "case0001.npy.h5"
    with h5py.File(path, "w") as file:  # declared, never written: a 4 KiB file claiming 8 GiB
        file.create_dataset("image", shape=(2048, 1024, 1024), dtype=np.float32, chunks=(1, 64, 64))
        file.create_dataset("label", shape=(2048, 1024, 1024), dtype=np.float32, chunks=(1, 64, 64))
    assert path.stat().st_size < 1 << 20
    listed = write_list(tmp_path / "v.txt", ["case0001"])
    message = expect_data_error(path, lambda: H5Volumes(data, listed, NUM_CLASSES), read=True)
    assert "'image' declares shape (2048, 1024, 1024) (2.15e+09 voxels), above the limit of 1073741824" in message


def test_a_slice_without_pixels_is_refused(tmp_path):
    data = tmp_path / "train_npz"
    path = write_slice(data, "case0001_slice000", image=np.zeros((0, 10), np.float32), label=np.zeros((0, 10)))
    listed = write_list(tmp_path / "t.txt", ["case0001_slice000"])
    assert "which holds no voxels" in expect_data_error(
        path, lambda: NpzSlices(data, listed, NUM_CLASSES, augment=None), read=True
    )


def test_a_zero_slice_volume_stops_the_start_up_check_before_any_read(tmp_path):
    data = tmp_path / "test_vol_h5"
    write_volume(data, "case0001")
    path = write_volume(data, "case0002", image=np.zeros((0, 6, 5), np.float32), label=np.zeros((0, 6, 5), np.float32))
    listed = write_list(tmp_path / "v.txt", ["case0001", "case0002"])
    message = expect_data_error(path, lambda: H5Volumes(data, listed, NUM_CLASSES))  # construction only
    assert message == f"{path}: 'image' has shape (0, 6, 5), which holds no voxels; re-create the file from the raw data"
