"""The phantom generator: Synapse layout, determinism, anatomy, intensities, argument errors."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from scipy import ndimage

from datasets.synthetic import synapse as phantom
from datasets.synthetic.synapse import (
    AORTA,
    GALLBLADDER,
    LEFT_KIDNEY,
    LIVER,
    NUM_CLASSES,
    PANCREAS,
    RIGHT_KIDNEY,
    SPLEEN,
    STOMACH,
    generate_dataset,
    main,
    make_case,
)

SEED = 11
SIZE = 48
# 3 training + 1 test case of 5..7 slices: case0001..case0003 train, case0004 test.
SMALL = dict(seed=SEED, size=SIZE, train_cases=3, test_cases=1, min_slices=5, max_slices=7)
ORGANS = (AORTA, GALLBLADDER, LEFT_KIDNEY, RIGHT_KIDNEY, LIVER, PANCREAS, SPLEEN, STOMACH)


def window(hu: float) -> float:
    """Where a CT number lands after the Synapse window [-125, 275] HU -> [0, 1]."""
    return (min(max(hu, -125.0), 275.0) + 125.0) / 400.0


def case_from_seed(seed: int, number: int, size: int, min_slices: int, max_slices: int):
    """Case ``number`` (1-based) as the documented seeding contract defines it."""
    rng = np.random.default_rng(seed).spawn(number)[number - 1]
    num_slices = int(rng.integers(min_slices, max_slices + 1))
    return make_case(rng, size, num_slices)


def read_training_case(train_dir, case: str) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted(train_dir.glob(f"{case}_slice*.npz"))
    slices = [np.load(path) for path in paths]
    return (np.stack([s["image"] for s in slices]), np.stack([s["label"] for s in slices]))


def read_volume(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as file:
        return file["image"][:], file["label"][:], np.asarray(file.attrs["spacing"])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    return generate_dataset(tmp_path_factory.mktemp("small"), **SMALL)


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Four 64 x 64 cases of 24 slices, for anatomy statistics."""
    return [make_case(np.random.default_rng(seed), 64, 24) for seed in range(4)]


# ----------------------------------------------------------------------------------------------
# Layout


def test_layout_file_names_and_summary(small):
    out = small["out_dir"]
    assert sorted(p.name for p in out.iterdir()) == [".synthetic-dataset", "lists", "test_vol_h5", "train_npz"]
    assert small["train_case_ids"] == ["case0001", "case0002", "case0003"]
    assert small["test_case_ids"] == ["case0004"]
    names = sorted(p.name for p in (out / "train_npz").iterdir())
    assert all(re.fullmatch(r"case000[123]_slice\d{3}\.npz", name) for name in names)
    assert len(names) == small["num_train_slices"]
    for case in small["train_case_ids"]:
        count = sum(name.startswith(case) for name in names)
        assert 5 <= count <= 7
        # Every slice, 0-based and without gaps.
        assert [n for n in names if n.startswith(case)] == [f"{case}_slice{k:03d}.npz" for k in range(count)]
    assert sorted(p.name for p in (out / "test_vol_h5").iterdir()) == ["case0004.npy.h5"]


def test_lists_match_the_files(small):
    out = small["out_dir"]
    assert small["train_list"] == out / "lists" / "train.txt"
    assert small["test_list"] == out / "lists" / "test_vol.txt"
    train = small["train_list"].read_text().splitlines()
    assert train == sorted(p.name[: -len(".npz")] for p in (out / "train_npz").iterdir())
    assert small["test_list"].read_text().splitlines() == ["case0004"]


def test_training_slices_hold_image_and_label_as_float32(small):
    for path in sorted(small["train_dir"].glob("case0002_slice*.npz")):
        with np.load(path) as data:
            assert sorted(data.files) == ["image", "label"]
            image, label = data["image"], data["label"]
        assert image.dtype == np.float32 and image.shape == (SIZE, SIZE)
        assert label.dtype == np.float32 and label.shape == (SIZE, SIZE)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert np.array_equal(label, np.round(label))
        assert set(np.unique(label)) <= set(range(9))


def test_test_volume_datasets_and_spacing(small):
    image, label, spacing = read_volume(small["test_dir"] / "case0004.npy.h5")
    depth = image.shape[0]
    assert 5 <= depth <= 7 and small["num_test_slices"] == depth
    assert image.dtype == np.float32 and image.shape == (depth, SIZE, SIZE)
    assert label.dtype == np.float32 and label.shape == (depth, SIZE, SIZE)
    assert image.min() == 0.0 and image.max() == 1.0  # air and bone reach the window ends
    assert set(np.unique(label)) <= set(range(9))
    # (z, y, x) in mm: 200 mm of abdomen over the slices, a 409.6 mm field of view in-plane.
    np.testing.assert_allclose(spacing, [200.0 / depth, 409.6 / SIZE, 409.6 / SIZE])


def test_files_hold_exactly_the_cases_the_seed_defines(small):
    for number, case in enumerate(small["train_case_ids"], start=1):
        image, label = case_from_seed(SEED, number, SIZE, 5, 7)
        got_image, got_label = read_training_case(small["train_dir"], case)
        assert np.array_equal(got_image, image)
        assert np.array_equal(got_label, label.astype(np.float32))
    image, label = case_from_seed(SEED, 4, SIZE, 5, 7)
    got_image, got_label, _ = read_volume(small["test_dir"] / "case0004.npy.h5")
    assert np.array_equal(got_image, image) and np.array_equal(got_label, label)


# ----------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path, small):
    again = generate_dataset(tmp_path / "again", **SMALL)
    for name in small["train_list"].read_text().split():
        with np.load(small["train_dir"] / f"{name}.npz") as a:
            with np.load(again["train_dir"] / f"{name}.npz") as b:
                assert a["image"].tobytes() == b["image"].tobytes()
                assert a["label"].tobytes() == b["label"].tobytes()
    first = read_volume(small["test_dir"] / "case0004.npy.h5")
    second = read_volume(again["test_dir"] / "case0004.npy.h5")
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first, second))

    image_a, label_a = make_case(np.random.default_rng(0), SIZE, 6)
    image_b, label_b = make_case(np.random.default_rng(1), SIZE, 6)
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(label_a, label_b)


def test_case_k_does_not_depend_on_how_many_cases_are_asked(tmp_path):
    args = dict(seed=5, size=32, min_slices=4, max_slices=6)
    few = generate_dataset(tmp_path / "few", train_cases=1, test_cases=1, **args)
    many = generate_dataset(tmp_path / "many", train_cases=2, test_cases=2, **args)
    a = read_training_case(few["train_dir"], "case0001")
    b = read_training_case(many["train_dir"], "case0001")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # case0002: the test volume of the first set, a training case of the second.
    image, label, _ = read_volume(few["test_dir"] / "case0002.npy.h5")
    image_b, label_b = read_training_case(many["train_dir"], "case0002")
    assert np.array_equal(image, image_b) and np.array_equal(label, label_b)


# ----------------------------------------------------------------------------------------------
# Anatomy and intensities


def test_make_case_types_and_all_classes(cases):
    for image, label in cases:
        assert image.dtype == np.float32 and image.shape == (24, 64, 64)
        assert label.dtype == np.uint8 and label.shape == (24, 64, 64)
        assert image.min() == 0.0 and image.max() == 1.0
        assert set(np.unique(label)) == set(range(NUM_CLASSES))


@pytest.mark.parametrize("size", [32, 64])
def test_aorta_is_in_every_slice_of_every_case(size):
    for seed in range(6):
        _, label = make_case(np.random.default_rng(seed), size, 12)
        assert (label == AORTA).any(axis=(1, 2)).all(), f"seed {seed}"


def test_relative_organ_sizes(cases):
    for _, label in cases:
        voxels = np.bincount(label.ravel(), minlength=9)
        assert voxels[LIVER] == max(voxels[c] for c in ORGANS)
        for bigger in (LEFT_KIDNEY, RIGHT_KIDNEY, SPLEEN):
            assert voxels[GALLBLADDER] < voxels[bigger]
        # A 2.5 cm aorta in a 409.6 mm field: pi * (12.5 / 6.4)^2 ~ 12 px per 64 x 64 slice.
        assert 8 <= voxels[AORTA] / label.shape[0] <= 17


def test_organs_span_only_part_of_the_volume(cases):
    for _, label in cases:
        present = {c: np.nonzero((label == c).any(axis=(1, 2)))[0] for c in ORGANS}
        for organ in (GALLBLADDER, PANCREAS, LEFT_KIDNEY, RIGHT_KIDNEY):
            assert 0 < present[organ].size < label.shape[0]
        # Cranio-caudal order: liver and spleen from the top, the kidneys start lower,
        # the gallbladder and pancreas sit in the middle.
        assert present[LIVER][0] == 0
        assert present[SPLEEN][0] <= 2
        assert present[LEFT_KIDNEY][0] > present[LIVER][0] + 4
        assert present[RIGHT_KIDNEY][0] > present[LIVER][0] + 4
        for organ in (GALLBLADDER, PANCREAS):
            assert present[organ][0] > 2 and present[organ][-1] < label.shape[0] - 3


def test_organs_sit_on_their_anatomical_sides(cases):
    """Radiological convention: the patient's right (liver, right kidney) on the image's left."""
    for _, label in cases:
        column = {c: np.nonzero(label == c)[2].mean() for c in ORGANS}
        row = {c: np.nonzero(label == c)[1].mean() for c in ORGANS}
        assert column[LIVER] < column[AORTA] < column[SPLEEN]
        assert column[RIGHT_KIDNEY] < column[AORTA] < column[LEFT_KIDNEY]
        assert column[GALLBLADDER] < column[AORTA] < column[STOMACH]
        assert row[STOMACH] < row[AORTA] < row[LEFT_KIDNEY]  # anterior = up in the image
        assert row[PANCREAS] < row[AORTA]


def test_organ_intensities_follow_contrast_enhanced_ct(cases):
    # In-plane erosion keeps away from the partial-volume blur at organ borders.
    cross = ndimage.generate_binary_structure(2, 1)[None]
    means = []
    for image, label in cases:
        mean = {c: float(image[ndimage.binary_erosion(label == c, cross)].mean()) for c in ORGANS}
        assert mean[GALLBLADDER] < mean[PANCREAS] < mean[LEFT_KIDNEY] < mean[AORTA]
        assert mean[GALLBLADDER] < mean[LIVER] < mean[AORTA]
        # Liver and spleen differ in place and shape, hardly in HU.
        assert abs(mean[LIVER] - mean[SPLEEN]) < 40 / 400
        means.append(mean)
    # Enhancement varies case to case; over the cases the textbook values hold within 25 HU.
    for organ, hu in ((AORTA, 200.0), (LIVER, 100.0), (SPLEEN, 110.0), (PANCREAS, 90.0), (GALLBLADDER, 10.0)):
        assert abs(np.mean([m[organ] for m in means]) - window(hu)) < 25 / 400, organ


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "change, flag",
    [
        (dict(size=16), "--size"),
        (dict(train_cases=0), "--train_cases"),
        (dict(test_cases=-1), "--test_cases"),
        (dict(min_slices=0), "--min_slices"),
        (dict(min_slices=9, max_slices=8), "--max_slices"),
        (dict(max_slices=1001), "--max_slices"),
        (dict(seed=-1), "--seed"),
    ],
)
def test_bad_arguments_raise_one_line_errors_naming_the_flag(tmp_path, change, flag):
    with pytest.raises(ValueError, match=re.escape(flag)) as error:
        generate_dataset(tmp_path, **{**SMALL, **change})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "train_npz").exists()


def test_cli_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--min_slices", "10", "--max_slices", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: --min_slices (10) must not exceed --max_slices (4)" in err


def test_make_case_rejects_a_small_size():
    with pytest.raises(ValueError, match="size"):
        make_case(np.random.default_rng(0), 31, 4)


def test_old_files_need_overwrite_which_removes_them(tmp_path):
    args = dict(seed=2, size=32, test_cases=1, min_slices=3, max_slices=3)
    generate_dataset(tmp_path, train_cases=2, **args)
    with pytest.raises(ValueError, match="--overwrite"):
        generate_dataset(tmp_path, train_cases=1, **args)
    summary = generate_dataset(tmp_path, train_cases=1, overwrite=True, **args)
    assert sorted(p.name for p in (tmp_path / "train_npz").iterdir()) == [
        "case0001_slice000.npz",
        "case0001_slice001.npz",
        "case0001_slice002.npz",
    ]
    assert sorted(p.name for p in (tmp_path / "test_vol_h5").iterdir()) == ["case0002.npy.h5"]
    assert summary["train_list"].read_text().split() == ["case0001_slice000", "case0001_slice001", "case0001_slice002"]


def test_cli_writes_a_data_set(tmp_path):
    summary = main(
        [
            "--out",
            str(tmp_path),
            "--size",
            "32",
            "--train_cases",
            "1",
            "--test_cases",
            "1",
            "--min_slices",
            "3",
            "--max_slices",
            "3",
            "--seed",
            "4",
        ]
    )
    assert summary["num_train_slices"] == 3 and summary["num_test_slices"] == 3
    image, label = case_from_seed(4, 1, 32, 3, 3)
    got_image, _ = read_training_case(tmp_path / "train_npz", "case0001")
    assert np.array_equal(got_image, image)
    assert phantom.DEFAULT_SIZE == 128 and phantom.DEFAULT_TRAIN_CASES == 10
