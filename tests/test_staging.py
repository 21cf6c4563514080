"""Conversions that complete or leave nothing (datasets.prepare.staging): every converter stages
its output and renames it when complete, so a conversion stopped half-way into a folder an
earlier one filled leaves that one intact; the data doctor reports a conversion that never
finished and lists that are not those the conversion wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import datasets.prepare.acdc as acdc
import datasets.prepare.images as images
import datasets.prepare.nifti as nifti
import datasets.prepare.synapse as synapse
from datasets.check import main as doctor_main
from datasets.common import DataError
from datasets.prepare.staging import CONVERSION_MARKER, staged_output

SHAPE = (3, 8, 8)


def write_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(path))


def volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-300, 400, SHAPE).astype(np.float32)


def label(seed: int, top: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top + 1, SHAPE).astype(np.uint8)


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def nifti_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    for k in range(5):
        write_nifti(raw / "images" / f"case{k}.nii.gz", volume(k))
        write_nifti(raw / "labels" / f"case{k}.nii.gz", label(k, 2))
    (raw / "classes.json").write_text(json.dumps({"1": "a", "2": "b"}))
    return raw


def convert_nifti(raw: Path, out: Path, clip=None):
    return nifti.convert(raw / "images", raw / "labels", raw / "classes.json", out, 0.2, clip)


def test_a_nifti_conversion_that_fails_half_way_leaves_the_earlier_one_intact(nifti_raw, tmp_path):
    out = tmp_path / "data"
    convert_nifti(nifti_raw, out)
    before = tree(out)
    assert "dataset.json" in before and "conversion.json" in before and len(before) == 4 * 3 + 1 + 2 + 2
    write_nifti(nifti_raw / "labels" / "case3.nii.gz", label(3, 2) + 5)  # a bad label in the 4th case
    with pytest.raises(DataError, match="case3.nii.gz: label values span"):
        convert_nifti(nifti_raw, out, clip=(-100.0, 200.0))  # new settings: would have rewritten slices
    assert tree(out) == before and leftovers(out) == []


def test_ctrl_c_during_a_conversion_leaves_the_earlier_one_intact(nifti_raw, tmp_path, monkeypatch):
    out = tmp_path / "data"
    convert_nifti(nifti_raw, out)
    before = tree(out)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_slices(*args, **kwargs)

    write_slices = nifti.write_training_slices
    monkeypatch.setattr(nifti, "write_training_slices", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_nifti(nifti_raw, out, clip=(-100.0, 200.0))
    assert tree(out) == before and leftovers(out) == []


def test_a_complete_conversion_replaces_the_earlier_one_as_a_whole(nifti_raw, tmp_path):
    out = tmp_path / "data"
    convert_nifti(nifti_raw, out)
    (out / "train_npz" / "case9_slice000.npz").write_bytes(b"from an older conversion")
    info = convert_nifti(nifti_raw, out, clip=(-100.0, 200.0))
    assert info.intensity_clip == (-100.0, 200.0) and not (out / "train_npz" / "case9_slice000.npz").exists()
    marker = json.loads((out / CONVERSION_MARKER).read_text())
    assert marker["converter"] == "datasets.prepare.nifti" and sorted(marker["lists"]) == [
        "lists/test_vol.txt",
        "lists/train.txt",
    ]
    assert leftovers(out) == []


def test_a_folder_holding_other_files_is_never_replaced(nifti_raw, tmp_path):
    out = tmp_path / "data"
    (out / "train_npz").mkdir(parents=True)
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(
        DataError, match=r"--out .*data holds my_notes.txt, which no conversion writes; choose a new or empty folder"
    ):
        convert_nifti(nifti_raw, out)
    assert (out / "my_notes.txt").read_text() == "mine" and leftovers(out) == []


def btcv_raw(raw: Path, bad_second: bool = False) -> Path:
    for number in (1, 5):  # case0001: a standard test case, case0005: training
        # another scan in the second conversion: what the failed one writes first differs
        write_nifti(raw / f"img{number:04d}.nii.gz", volume(number + 50 * bad_second).astype(np.int16))
        write_nifti(raw / f"label{number:04d}.nii.gz", label(number, 13 + 10 * (bad_second and number == 5)))
    return raw


def test_a_btcv_conversion_that_fails_leaves_the_earlier_one_and_its_lists_intact(tmp_path):
    out, lists = tmp_path / "Synapse", tmp_path / "lists"
    synapse.convert(btcv_raw(tmp_path / "raw"), out, lists)
    before, lists_before = tree(out), tree(lists)
    assert (lists / "test_vol.txt").read_text() == "case0001\n" and len(lists_before) == 2
    with pytest.raises(DataError, match="label0005.nii.gz: label values span"):
        synapse.convert(btcv_raw(tmp_path / "raw2", bad_second=True), out, lists)
    assert tree(out) == before and tree(lists) == lists_before and leftovers(out) == []


def acdc_raw(raw: Path, bad_patient: int | None = None) -> Path:
    for patient in range(1, 6):
        folder = raw / f"patient{patient:03d}"
        write_nifti(
            folder / f"patient{patient:03d}_frame01.nii.gz", volume(patient + 50 * (bad_patient is not None)).astype(np.int16)
        )
        write_nifti(folder / f"patient{patient:03d}_frame01_gt.nii.gz", label(patient, 3 + 5 * (patient == bad_patient)))
    return raw


def test_an_acdc_conversion_that_fails_leaves_the_earlier_one_and_its_lists_intact(tmp_path):
    out, lists = tmp_path / "ACDC", tmp_path / "lists"
    acdc.convert(acdc_raw(tmp_path / "raw"), out, lists)
    before, lists_before = tree(out), tree(lists)
    with pytest.raises(DataError, match="patient004_frame01_gt.nii.gz: label values span"):
        acdc.convert(acdc_raw(tmp_path / "raw2", bad_patient=4), out, lists)
    assert tree(out) == before and tree(lists) == lists_before and leftovers(out) == []


def test_the_image_converter_uses_the_same_staging_and_refuses_a_non_empty_folder(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for k in range(5):
        Image.fromarray(np.full((6, 6), 40 * k, np.uint8)).save(tmp_path / "img" / f"i{k}.png")
        Image.fromarray((np.arange(36).reshape(6, 6) % 2).astype(np.uint8)).save(tmp_path / "msk" / f"i{k}.png")
    images.convert(tmp_path / "img", tmp_path / "msk", tmp_path / "out")
    assert json.loads((tmp_path / "out" / CONVERSION_MARKER).read_text())["converter"] == "datasets.prepare.images"
    with pytest.raises(DataError, match="is not empty; choose a new folder"):
        images.convert(tmp_path / "img", tmp_path / "msk", tmp_path / "out")


def doctor(root: Path, capsys) -> tuple[int, list[str]]:
    code = doctor_main(["--root", str(root), "--dataset", str(root / "dataset.json")])
    return code, [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]


def test_the_doctor_reports_a_conversion_that_never_finished(nifti_raw, tmp_path, capsys):
    out = tmp_path / "data"
    convert_nifti(nifti_raw, out)
    assert doctor(out, capsys) == (0, [])
    killed = tmp_path / ".data.staging-k1ll3d"  # what a SIGKILL half-way through leaves
    (killed / "train_npz").mkdir(parents=True)
    code, found = doctor(out, capsys)
    assert code == 1 and found == [
        f"PROBLEM {killed}: a conversion into {out} stopped before it completed ({out} still holds the previous "
        "complete one, if any); delete .data.staging-k1ll3d, or run the converter again"
    ]


def test_the_doctor_reports_lists_another_conversion_rewrote(tmp_path, capsys):
    out, lists = tmp_path / "Synapse", tmp_path / "lists"
    synapse.convert(btcv_raw(tmp_path / "raw"), out, lists)
    (lists / "test_vol.txt").write_text("case0008\n")  # the lists of another conversion
    (lists / "train.txt").unlink()  # or a conversion stopped before it wrote them
    code = doctor_main(["--root", str(out), "--list_dir", str(lists)])
    found = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM") and "conversion" in line]
    assert code == 1 and found == [
        f"PROBLEM {lists / 'train.txt'}: is missing, but the conversion in {out} (datasets.prepare.synapse) wrote it: it "
        f"stopped before its lists were written; run the converter again (if you edited the list on purpose, delete "
        f"{out / CONVERSION_MARKER})",
        f"PROBLEM {lists / 'test_vol.txt'}: is not the list the conversion in {out} (datasets.prepare.synapse) wrote: "
        "another conversion or an edit replaced it, so the lists and the data may not match; run the converter again (if "
        f"you edited the list on purpose, delete {out / CONVERSION_MARKER})",
    ]


def test_the_helper_removes_its_staging_folder_on_any_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), staged_output(tmp_path / "out", "test") as stage:
        (stage.folder / "dataset.json").write_text("{}")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="--out .*file is a file; pass a folder"), staged_output(tmp_path / "file", "test"):
        pass
