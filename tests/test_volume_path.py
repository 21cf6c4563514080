"""utils.scans.classify_volume_path and the same-name rule of find_nifti / find_images: what a
--volume_path is, or one line saying it is none of the things test.py reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.catalog import IMAGES, VOLUMES
from utils.errors import UserError
from utils.scans import (
    IMAGE_FOLDER,
    IMAGE_LAYOUT,
    SCAN,
    SCAN_FOLDER,
    VOLUME_FOLDER,
    classify_volume_path,
    find_images,
    find_nifti,
)

CHOICES = "a NIfTI scan (.nii / .nii.gz), a folder of scans, a folder of one DICOM series, or a Synapse-layout folder"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def refused(path: Path, kind: str = VOLUMES) -> str:
    with pytest.raises(UserError) as info:
        classify_volume_path(path, kind)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--volume_path {path} ")
    return message


def test_each_thing_test_py_reads_is_recognised(tmp_path):
    scan = touch(tmp_path / "scans" / "a.nii.gz")
    touch(tmp_path / "scans" / "b.nii")
    touch(tmp_path / "scans" / "a_pred.nii.gz")  # an earlier prediction is not a scan
    found = classify_volume_path(scan, VOLUMES)
    assert (found.kind, found.folder, found.files) == (SCAN, scan, (scan,))
    folder = classify_volume_path(tmp_path / "scans", VOLUMES)
    assert folder.kind == SCAN_FOLDER and [p.name for p in folder.files] == ["a.nii.gz", "b.nii"]
    touch(tmp_path / "Synapse" / "test_vol_h5" / "case0008.npy.h5")
    assert classify_volume_path(tmp_path / "Synapse", VOLUMES).folder == tmp_path / "Synapse" / "test_vol_h5"
    flat = classify_volume_path(tmp_path / "Synapse" / "test_vol_h5", VOLUMES)
    assert (flat.kind, flat.folder, flat.files) == (VOLUME_FOLDER, tmp_path / "Synapse" / "test_vol_h5", ())


def test_images_folders_and_the_layout_are_recognised(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(touch(tmp_path / "loose" / "x.png"))
    assert classify_volume_path(tmp_path / "loose", IMAGES).kind == IMAGE_FOLDER
    (tmp_path / "isic" / "images").mkdir(parents=True)
    layout = classify_volume_path(tmp_path / "isic", IMAGES)
    assert (layout.kind, layout.folder, layout.files) == (IMAGE_LAYOUT, tmp_path / "isic", ())
    assert "is an empty folder; pass a folder of 2D images" in refused(tmp_path / "isic" / "images", IMAGES)


def test_a_missing_scan_names_what_test_py_reads(tmp_path):
    assert (
        refused(tmp_path / "scan.nii.gz")
        == f"--volume_path {tmp_path / 'scan.nii.gz'} does not exist; pass {CHOICES} (NAME.npy.h5 volumes, or a folder holding test_vol_h5/)"
    )
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert f"is a link to {tmp_path / 'gone'}, which does not exist" in refused(tmp_path / "link")


def test_an_upper_case_suffix_a_mha_and_an_empty_folder_each_say_so(tmp_path):
    upper = touch(tmp_path / "one" / "SCAN.NII.GZ")
    assert "has an upper-case suffix; rename it to end in .nii.gz or .nii (lower case)" in refused(upper)
    assert "holds SCAN.NII.GZ with an upper-case suffix; rename them" in refused(tmp_path / "one")
    mha = touch(tmp_path / "scan.mha")
    assert refused(mha).startswith(f"--volume_path {mha} is a .mha file, not a NIfTI scan; convert it to .nii.gz")
    (tmp_path / "empty").mkdir()
    assert (
        refused(tmp_path / "empty")
        == f"--volume_path {tmp_path / 'empty'} is an empty folder; pass {CHOICES} (NAME.npy.h5 volumes, or a folder holding test_vol_h5/)"
    )
    touch(tmp_path / "other" / "notes.txt")
    assert "is none of a NIfTI scan" in refused(tmp_path / "other") and refused(tmp_path / "other").endswith("it holds notes.txt")


def test_two_scans_with_one_stem_are_an_error_naming_both(tmp_path):
    first, second = touch(tmp_path / "scan.nii"), touch(tmp_path / "scan.nii.gz")
    with pytest.raises(UserError) as info:
        find_nifti(tmp_path)
    assert str(info.value) == (
        f"{first} and {second} have the same name 'scan': both predictions would be written to one prediction file; "
        "rename or move one of them"
    )
    with pytest.raises(UserError, match="same name 'scan'"):
        classify_volume_path(tmp_path, VOLUMES)
    a_png, a_jpg = touch(tmp_path / "img" / "a.jpg"), touch(tmp_path / "img" / "a.png")
    with pytest.raises(UserError, match=f"{a_png} and {a_jpg} have the same name 'a'"):
        find_images(tmp_path / "img")


def test_find_nifti_refuses_a_file_that_is_not_a_scan(tmp_path):
    # test.py calls find_nifti first: a .mha used to fall through to an error about case0008.npy.h5
    with pytest.raises(UserError, match=r"scan.mha is a .mha file, not a NIfTI scan"):
        find_nifti(touch(tmp_path / "scan.mha"))
    assert find_nifti(tmp_path / "absent") == [] and find_nifti(touch(tmp_path / "b.nii.gz")) == [tmp_path / "b.nii.gz"]
