"""The synthetic generators delete only what they wrote: --overwrite replaces a folder marked as
the generator's own and refuses (exit 2, nothing deleted) any other folder that is not empty."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from datasets.synthetic.output import MARKER

# generator -> (small CLI arguments, a file of the real data set's layout, its count of data files)
GENERATORS = {
    "datasets.synthetic.synapse": (
        ["--size", "32", "--train_cases", "1", "--test_cases", "1", "--min_slices", "2", "--max_slices", "2"],
        "train_npz/case0005_slice000.npz",
    ),
    "datasets.synthetic.acdc": (
        ["--size", "32", "--train_cases", "1", "--val_cases", "1", "--test_cases", "1", "--min_slices", "2", "--max_slices", "2"],
        "train_npz/patient001_frame01_slice000.npz",
    ),
    "datasets.synthetic.isic": (
        ["--size", "32", "--train_images", "1", "--val_images", "1", "--test_images", "1"],
        "images/ISIC_0000001.jpg",
    ),
}


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(module: str, out, *extra: str) -> None:
    importlib.import_module(module).main([*GENERATORS[module][0], "--out", str(out), *extra])


@pytest.mark.parametrize("module", GENERATORS)
def test_overwrite_refuses_a_folder_without_the_marker_and_deletes_nothing(module, tmp_path, capsys):
    real = tmp_path / "data"
    (real / GENERATORS[module][1]).parent.mkdir(parents=True)
    (real / GENERATORS[module][1]).write_bytes(b"a real scan, irreplaceable")
    (real / "lists").mkdir()
    (real / "lists" / "train.txt").write_text("case0005_slice000\n")
    before = snapshot(real)
    with pytest.raises(SystemExit) as stop:
        run(module, real, "--overwrite")
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --out {real} is not empty and has no {MARKER} file, so it may hold "
        "real data; nothing was deleted -- choose an empty or new folder\n"
    )
    assert snapshot(real) == before  # not even a marker was added


@pytest.mark.parametrize("module", GENERATORS)
def test_a_generated_folder_is_regenerated_and_other_files_survive(module, tmp_path):
    fresh, reused = tmp_path / "fresh", tmp_path / "reused"
    run(module, fresh, "--seed", "5")
    more = "--test_images" if module == "datasets.synthetic.isic" else "--test_cases"
    run(module, reused, "--seed", "9", more, "2")  # one file more than the run that replaces it
    assert (reused / MARKER).read_text() == module + "\n"
    (reused / "notes.txt").write_text("mine")  # not the generator's: left alone
    with pytest.raises(SystemExit) as stop:  # its own data, but no --overwrite
        run(module, reused, "--seed", "5")
    assert stop.value.code == 2
    run(module, reused, "--seed", "5", "--overwrite")
    after = snapshot(reused)
    assert after.pop("notes.txt") == b"mine"
    assert set(after) == set(snapshot(fresh))  # no file of the seed-9 run is left over
    if module != "datasets.synthetic.isic":  # JPEG and PNG bytes may carry encoder details
        slices = sorted(name for name in after if name.endswith(".npz"))
        for name in slices:
            with np.load(reused / name) as ours, np.load(fresh / name) as theirs:
                np.testing.assert_array_equal(ours["image"], theirs["image"])


def test_a_folder_of_another_generator_is_refused(tmp_path, capsys):
    run("datasets.synthetic.acdc", tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run("datasets.synthetic.synapse", tmp_path, "--overwrite")
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: --out {tmp_path} holds a data set written by datasets.synthetic.acdc, "
        "not datasets.synthetic.synapse; nothing was deleted -- choose another folder\n"
    )
    assert snapshot(tmp_path) == before
