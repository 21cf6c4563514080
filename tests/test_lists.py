"""The standard Synapse split and the list writer for a user's data folder."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets.lists import (
    parse_slice_name,
    sort_slice_names,
    standard_synapse_split,
    write_synapse_lists,
)
from datasets.prepare.synapse_lists import main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "lists" / "lists_Synapse"

# Written out again here (from the published split) so that a typo in the module is caught.
EXPECTED_TEST_ORDER = [
    "case0008",
    "case0022",
    "case0038",
    "case0036",
    "case0032",
    "case0002",
    "case0029",
    "case0003",
    "case0001",
    "case0004",
    "case0025",
    "case0035",
]
EXPECTED_COUNTS = {
    "case0005": 117,
    "case0006": 131,
    "case0007": 163,
    "case0009": 149,
    "case0010": 148,
    "case0021": 143,
    "case0023": 96,
    "case0024": 124,
    "case0026": 131,
    "case0027": 88,
    "case0028": 89,
    "case0030": 153,
    "case0031": 93,
    "case0033": 104,
    "case0034": 98,
    "case0037": 99,
    "case0039": 90,
    "case0040": 195,
}


def test_standard_split_matches_published_facts():
    split = standard_synapse_split()
    assert len(split["train"]) == 2211
    assert Counter(parse_slice_name(n)[0] for n in split["train"]) == EXPECTED_COUNTS
    assert split["train"][0] == "case0005_slice000"
    assert split["train"][116] == "case0005_slice116"
    assert split["train"][117] == "case0006_slice000"
    assert split["train"][-1] == "case0040_slice194"
    assert len(set(split["train"])) == 2211
    assert split["test"] == EXPECTED_TEST_ORDER
    assert len(split["all"]) == 30
    assert split["all"][0] == "case0001.npy.h5" and split["all"][-1] == "case0040.npy.h5"
    all_cases = {name.removesuffix(".npy.h5") for name in split["all"]}
    assert all_cases == set(EXPECTED_TEST_ORDER) | set(EXPECTED_COUNTS)
    assert not set(EXPECTED_TEST_ORDER) & set(EXPECTED_COUNTS)


def test_committed_lists_equal_generated():
    split = standard_synapse_split()
    assert (COMMITTED / "train.txt").read_text().splitlines() == split["train"]
    assert (COMMITTED / "test_vol.txt").read_text().splitlines() == split["test"]
    assert (COMMITTED / "all.lst").read_text().splitlines() == split["all"]


def test_standard_cli_reproduces_committed_files(tmp_path):
    main(["--standard", "--out", str(tmp_path)])
    for name in ("train.txt", "test_vol.txt", "all.lst"):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes()


def test_parse_and_sort_slice_names():
    assert parse_slice_name("case0005_slice007") == ("case0005", 7)
    names = ["case0002_slice010", "case0001_slice1000", "case0002_slice002", "case0001_slice999"]
    assert sort_slice_names(names) == [
        "case0001_slice999",
        "case0001_slice1000",
        "case0002_slice002",
        "case0002_slice010",
    ]
    with pytest.raises(ValueError, match="case0005.npz"):
        parse_slice_name("case0005.npz")


def _touch_data(root: Path, slices: list[str], volumes: list[str]) -> None:
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir(parents=True)
    for name in slices:
        np.savez(root / "train_npz" / f"{name}.npz", image=np.zeros((2, 2)))
    for name in volumes:
        (root / "test_vol_h5" / f"{name}.npy.h5").write_bytes(b"")


def test_write_synapse_lists_sorts_by_case_then_slice(tmp_path):
    _touch_data(
        tmp_path / "data",
        ["case0010_slice001", "case0002_slice010", "case0002_slice002", "case0010_slice000"],
        ["case0022", "case0008"],
    )
    (tmp_path / "data" / "train_npz" / "notes.txt").write_text("ignored")
    train, test = write_synapse_lists(tmp_path / "data", tmp_path / "lists")
    assert train == tmp_path / "lists" / "train.txt"
    assert test == tmp_path / "lists" / "test_vol.txt"
    assert train.read_text() == ("case0002_slice002\ncase0002_slice010\ncase0010_slice000\ncase0010_slice001\n")
    assert test.read_text() == "case0008\ncase0022\n"


def test_write_synapse_lists_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_npz does not exist"):
        write_synapse_lists(tmp_path, tmp_path / "lists")
    _touch_data(tmp_path / "data", ["case0001_slice000"], [])
    with pytest.raises(FileNotFoundError, match=r"test_vol_h5 holds no \*\.npy\.h5 files"):
        write_synapse_lists(tmp_path / "data", tmp_path / "lists")
    (tmp_path / "data" / "train_npz" / "case0001_slice000.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_npz holds no \*\.npz files"):
        write_synapse_lists(tmp_path / "data", tmp_path / "lists")


def test_cli_writes_lists_and_reports_errors(tmp_path, capsys):
    _touch_data(tmp_path / "data", ["case0001_slice000"], ["case0002"])
    main(["--root", str(tmp_path / "data"), "--out", str(tmp_path / "lists")])
    assert (tmp_path / "lists" / "train.txt").read_text() == "case0001_slice000\n"
    assert (tmp_path / "lists" / "test_vol.txt").read_text() == "case0002\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "lists")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_old_command_forwards_to_datasets_prepare_synapse_lists(tmp_path):
    import datasets.lists

    datasets.lists.main(["--standard", "--out", str(tmp_path)])  # python -m datasets.lists, as the README had it
    assert (tmp_path / "test_vol.txt").read_text().splitlines() == EXPECTED_TEST_ORDER


def test_a_repeated_name_is_an_error_naming_it_and_both_entries(tmp_path):
    from datasets.common import DataError
    from datasets.lists import read_list

    listed = tmp_path / "test_vol.txt"
    listed.write_text("case0008\ncase0022\n\ncase0008\n")
    with pytest.raises(DataError, match=r"test_vol.txt names case0008 twice \(entries 1 and 3\); .* remove the repeat"):
        read_list(listed)


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    from datasets.common import DataError
    from datasets.lists import read_list

    listed = tmp_path / "test_vol.txt"
    listed.write_bytes(b"\xef\xbb\xbfcase0008\r\ncase0022\r\n")  # as Notepad saves "UTF-8 with BOM"
    assert read_list(listed) == ["case0008", "case0022"]
    listed.write_bytes(b"case0008\n\xff\xfe\n")
    with pytest.raises(DataError, match="test_vol.txt is not UTF-8 text"):
        read_list(listed)
