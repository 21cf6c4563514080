"""prepare.nifti refuses a label that lies on another voxel grid than its image (same shape, but
other spacing, origin or direction): exit 2 with one line naming both files and the property."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from datasets.prepare.nifti import main

SPACING = (0.8, 0.8, 3.0)
ORIGIN = (-150.0, -170.0, 40.0)
FLIPPED_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write(path, array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=IDENTITY) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def folders(tmp_path, **label_geometry) -> list[str]:
    """Two cases; case a's label is written with ``label_geometry``. Returns the CLI arguments."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        write(tmp_path / "images" / f"{case}.nii.gz", rng.uniform(-100, 200, (3, 8, 8)).astype(np.float32))
        write(
            tmp_path / "labels" / f"{case}.nii.gz",
            rng.integers(0, 2, (3, 8, 8)).astype(np.uint8),
            **(label_geometry if case == "a" else {}),
        )
    (tmp_path / "classes.json").write_text(json.dumps({"1": "organ"}))
    return [
        "--images",
        str(tmp_path / "images"),
        "--labels",
        str(tmp_path / "labels"),
        "--classes",
        str(tmp_path / "classes.json"),
        "--out",
        str(tmp_path / "out"),
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"spacing": (0.8, 0.8, 2.5)}, "spacing (x, y, z) mm: (0.8, 0.8, 3) vs (0.8, 0.8, 2.5)"),
        ({"origin": (-150.0, -168.0, 40.0)}, "origin (x, y, z) mm: (-150, -170, 40) vs (-150, -168, 40)"),
        ({"direction": FLIPPED_X}, "direction cosines: (1, 0, 0, 0, 1, 0, 0, 0, 1) vs (-1, 0, 0, 0, 1, 0, 0, 0, 1)"),
    ],
)
def test_a_label_on_another_grid_exits_2_naming_both_files_and_the_property(change, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(folders(tmp_path, **change))
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    image, label = tmp_path / "images" / "a.nii.gz", tmp_path / "labels" / "a.nii.gz"
    assert err.startswith(f"error: {image} and {label} differ in {named}; ")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_header_rounding_below_the_tolerance_is_accepted(tmp_path):
    # 2e-6 mm of origin and 1e-6 of a direction cosine: what float32 headers and converters produce.
    tilted = (1.0, 1e-6, 0.0, -1e-6, 1.0, 0.0, 0.0, 0.0, 1.0)
    main(folders(tmp_path, origin=(-150.0, -170.000002, 40.0), direction=tilted))
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["class_names"] == ["organ"]
