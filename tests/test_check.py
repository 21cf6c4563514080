"""The data doctor (python -m datasets.check): clean on the phantom, and every deliberate break of
a copy reported by one line that names the broken file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from datasets.catalog import dataset_info
from datasets.check import check_dataset, main
from datasets.lists import STANDARD_TRAIN_SLICE_COUNTS, slice_name, write_list
from datasets.synthetic.isic import generate_dataset as generate_isic
from tests.conftest import run_script


def doctor(root, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main(["--root", str(root), "--list_dir", str(root / "lists"), *extra])
    return code, capsys.readouterr().out.splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM")]


@pytest.fixture
def copy(phantom, tmp_path):
    """A private copy of the session phantom, to break."""
    return shutil.copytree(phantom["out_dir"], tmp_path / "copy")


def rewrite_slice(path, image=None, label=None) -> None:
    with np.load(path) as data:
        arrays = {"image": data["image"], "label": data["label"]}
    np.savez(
        path,
        image=arrays["image"] if image is None else image(arrays["image"]),
        label=arrays["label"] if label is None else label(arrays["label"]),
    )


def test_the_phantom_is_clean(phantom, capsys):
    code, lines = doctor(phantom["out_dir"], capsys)
    assert code == 0 and lines[-1] == "clean: no problems found"
    assert f"train: {phantom['num_train_slices']} slices of 3 cases listed in" in lines[1]
    assert "labels: ids [0, 1, 2, 3, 4, 5, 6, 7, 8] present in 5 cases" in lines
    assert "images: values in [0, 1]; training slices store images as float32, labels as float32" in lines


def test_images_in_0_255_are_reported_per_file_with_the_fix(copy, capsys):
    slices = sorted((copy / "train_npz").glob("*.npz"))
    for path in slices:
        rewrite_slice(path, image=lambda image: (image * 255).round())
    code, lines = doctor(copy, capsys)
    found = problems(lines)
    assert code == 1 and len(found) == 4  # 3 shown, then the count of the others
    assert found[0].startswith(f"PROBLEM {slices[0]}: image values span [0, 255]")
    assert "divide the images by 255" in found[0]
    assert found[3] == (f"PROBLEM ... and {len(slices) - 3} more files with the same image range problem (--all lists every one)")
    code, lines = doctor(copy, capsys, "--all")
    assert len(problems(lines)) == len(slices) and lines[-1] == f"{len(slices)} problems found ({len(slices)} image range)"


def test_raw_hounsfield_units_are_told_apart_from_pixel_values(copy, capsys):
    path = sorted((copy / "train_npz").glob("*.npz"))[0]
    rewrite_slice(path, image=lambda image: image * 400 - 125 - 900 * (image < 0.05))
    code, lines = doctor(copy, capsys)
    assert code == 1 and "raw Hounsfield units" in problems(lines)[0] and str(path) in problems(lines)[0]


def test_a_missing_slice_a_btcv_label_a_volume_without_spacing_and_a_truncated_npz(copy, capsys):
    case = "case0001"
    missing = copy / "train_npz" / f"{slice_name(case, 2)}.npz"
    missing.unlink()
    btcv = copy / "train_npz" / f"{slice_name(case, 3)}.npz"
    rewrite_slice(btcv, label=lambda label: np.where(np.arange(label.size).reshape(label.shape) < 5, 13.0, label))
    truncated = copy / "train_npz" / f"{slice_name('case0002', 0)}.npz"
    truncated.write_bytes(truncated.read_bytes()[:300])
    no_spacing = copy / "test_vol_h5" / "case0004.npy.h5"
    with h5py.File(no_spacing, "a") as file:
        del file.attrs["spacing"]
    code, lines = doctor(copy, capsys)
    found = problems(lines)
    assert code == 1 and len(found) == 4, lines
    by_file = {next(p for p in (missing, btcv, truncated, no_spacing) if str(p) in line): line for line in found}
    assert len(by_file) == 4
    assert "listed in train.txt but missing" in by_file[missing]
    assert "label holds ids [13], expected 0..8" in by_file[btcv] and "datasets.prepare.synapse" in by_file[btcv]
    assert "not a .npz (zip) archive" in by_file[truncated] or "not a readable .npz" in by_file[truncated]
    assert "no 'spacing' attribute" in by_file[no_spacing]
    assert lines[-1] == "4 problems found (1 missing file, 1 label ids, 1 unreadable file, 1 spacing)"


def test_a_copy_without_any_spacing_is_a_note_not_a_problem(copy, capsys):
    for path in (copy / "test_vol_h5").glob("*.npy.h5"):
        with h5py.File(path, "a") as file:
            del file.attrs["spacing"]
    code, lines = doctor(copy, capsys)
    assert code == 0 and any(line.startswith("spacing: no volume stores it") for line in lines)


def test_mismatched_shapes_and_implausible_spacing(copy, capsys):
    path = sorted((copy / "train_npz").glob("*.npz"))[0]
    rewrite_slice(path, label=lambda label: label[:-1])
    volume = copy / "test_vol_h5" / "case0005.npy.h5"
    with h5py.File(volume, "a") as file:
        file.attrs["spacing"] = np.array([0.0025, 0.0008, 0.0008])  # metres, not mm
    code, lines = doctor(copy, capsys)
    found = problems(lines)
    assert code == 1 and len(found) == 2
    assert f"{path}: label shape (31, 32) differs from image shape (32, 32)" in found[0]
    assert str(volume) in found[1] and "implausible" in found[1]


def test_the_standard_split_counts_are_checked(tmp_path, capsys):
    """A copy of the standard cases with one slice too few in the list and on disk."""
    root = tmp_path / "standard"
    names = []
    image, label = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    for case, count in STANDARD_TRAIN_SLICE_COUNTS.items():
        for index in range(count - (case == "case0007")):
            names.append(slice_name(case, index))
    (root / "train_npz").mkdir(parents=True)
    for name in names:
        np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
    write_list(root / "lists" / "train.txt", names)
    (root / "test_vol_h5").mkdir()
    with h5py.File(root / "test_vol_h5" / "case0008.npy.h5", "w") as file:
        file["image"], file["label"] = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32)
    write_list(root / "lists" / "test_vol.txt", ["case0008"])
    report = check_dataset(dataset_info("Synapse"), root, root / "lists")
    assert [p.message for p in report.problems] == ["case0007 has 162 slices, the standard split has 163"]
    assert "train: 2210 slices of 18 cases listed in" in report.facts[1]


def test_bad_flags_exit_2_and_the_cli_runs_as_a_module(phantom, tmp_path):
    result = run_script("-m", "datasets.check", "--root", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "--root" in result.stderr and str(tmp_path / "nowhere") in result.stderr
    result = run_script("-m", "datasets.check", "--root", str(phantom["out_dir"]), "--dataset", "Nope")
    assert result.returncode == 2 and "--dataset 'Nope' is not known" in result.stderr
    result = run_script(
        "-m", "datasets.check", "--root", str(phantom["out_dir"]), "--list_dir", str(phantom["out_dir"] / "lists")
    )
    assert result.returncode == 0 and result.stdout.endswith("clean: no problems found\n")


def test_2d_images_a_0_1_mask_and_a_missing_image(tmp_path, capsys):
    data = tmp_path / "isic"
    generate_isic(data, seed=2, size=40, train_images=4, val_images=2, test_images=2)
    args = ["--root", str(data), "--dataset", "ISIC2018", "--list_dir", str(data / "lists")]
    assert main(args) == 0 and "masks: class ids [0, 1] present; image sizes 40x30 to 40x30" in capsys.readouterr().out
    mask = data / "masks" / "ISIC_0000001_segmentation.png"
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8)).save(mask)
    (data / "images" / "ISIC_0000002.jpg").unlink()
    assert main(args) == 1
    found = problems(capsys.readouterr().out.splitlines())
    assert found == [
        f"PROBLEM {mask}: mask values reach only 1, below the 2-class threshold 128: it reads as all background; "
        "store the lesion as 255 (0 / 255 masks), or convert with python -m datasets.prepare.images",
        f"PROBLEM {data / 'images' / 'ISIC_0000002.jpg'} does not exist; check --root_path / --test_path and the list file",
    ]


def test_a_case_listed_twice_is_a_problem_naming_it(copy, capsys):
    listed = copy / "lists" / "test_vol.txt"
    first = listed.read_text().split()[0]
    listed.write_text(listed.read_text() + first + "\n")
    code, lines = doctor(copy, capsys)
    assert code == 1
    assert problems(lines) == [
        f"PROBLEM {listed}: names {first} twice (entries 1 and {len(listed.read_text().split())}); a repeated case "
        "counts twice in every mean -- remove the repeat; pass --list_dir, or write lists with python -m "
        "datasets.prepare.synapse_lists --root DATA --out LIST_DIR"
    ]


def test_a_test_volume_of_zero_slices_is_a_problem(copy, capsys):
    path = sorted((copy / "test_vol_h5").glob("*.npy.h5"))[0]
    with h5py.File(path, "w") as file:
        file["image"] = np.zeros((0, 32, 32), np.float32)
        file["label"] = np.zeros((0, 32, 32), np.float32)
    code, lines = doctor(copy, capsys)
    assert code == 1 and problems(lines) == [
        f"PROBLEM {path}: 'image' has shape (0, 32, 32), which holds no voxels; re-create the file from the raw data"
    ]
