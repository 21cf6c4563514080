"""Split lists for Synapse-format data: the standard split, and lists for a user's own folder.

A data folder in the Synapse format holds ``train_npz/caseXXXX_sliceNNN.npz`` (one axial slice
per file) and ``test_vol_h5/caseXXXX.npy.h5`` (one volume per file). The readers in
``datasets.synapse`` read the names to use from list files, one name per line, without the
extension:

- ``train.txt``: slice names, e.g. ``case0005_slice000``, sorted by case, then by slice index.
- ``test_vol.txt``: case names, e.g. ``case0008``.

``standard_synapse_split`` is the split every Synapse paper uses (the TransUNet lists);
``write_synapse_lists`` writes lists for whatever a folder holds.

The command that writes lists for your own data folder, or regenerates the committed standard
lists, is ``python -m datasets.prepare.synapse_lists`` (``python -m datasets.lists`` forwards to
it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datasets.common import TEST, TRAIN, VAL, DataError

TRAIN_DIR = "train_npz"
TEST_DIR = "test_vol_h5"
LIST_DIR = "lists"  # beside them, in the folders the converters and generators write
TRAIN_LIST = "train.txt"
TEST_LIST = "test_vol.txt"
ALL_LIST = "all.lst"
SLICE_SUFFIX = ".npz"
VOLUME_SUFFIX = ".npy.h5"

_SLICE_NAME = re.compile(r"^(?P<case>.+)_slice(?P<index>\d+)$")
SLICE_DIGITS = 3  # slice numbers are written 3-digit, 0-based: case0005_slice007

# The standard split (TransUNet's lists/lists_Synapse), from the published list files.
# Test cases in the published order: metrics tables and logs list cases in this order.
STANDARD_TEST_CASES: tuple[str, ...] = (
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
)
# Training case -> number of axial slices; every slice of each case is in train.txt.
STANDARD_TRAIN_SLICE_COUNTS: dict[str, int] = {
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


# The split rule on 1-based numbers n: every 5th to test, n = 2 (mod 10) to validation, the rest
# to training. Any 20 consecutive numbers split 14 / 2 / 4, so ACDC's five pathology groups of
# 20 patients each are split alike.
TEST_EVERY = 5
VAL_EVERY, VAL_OFFSET = 10, 2


def split_role(number: int) -> str:
    """``TRAIN``, ``VAL`` or ``TEST`` for case number ``number`` (1-based) by the split rule."""
    if number % TEST_EVERY == 0:
        return TEST
    if number % VAL_EVERY == VAL_OFFSET:
        return VAL
    return TRAIN


def slice_name(case: str, index: int) -> str:
    """The file stem of slice ``index`` (0-based) of ``case``, e.g. ``case0005_slice007``."""
    return f"{case}_slice{index:0{SLICE_DIGITS}d}"


def parse_slice_name(name: str) -> tuple[str, int]:
    """Split a slice name ``caseXXXX_sliceNNN`` into ``(case, slice index)``.

    Raises:
        ValueError: the name does not end in ``_slice`` followed by digits.
    """
    match = _SLICE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"slice name {name!r} is not of the form CASE_sliceNNN (e.g. case0005_slice000); rename the file or fix the list"
        )
    return match.group("case"), int(match.group("index"))


def sort_slice_names(names: Sequence[str]) -> list[str]:
    """Sort slice names by case, then by numeric slice index (so slice 1000 follows 999)."""
    return sorted(names, key=parse_slice_name)


def standard_synapse_split() -> dict[str, list[str]]:
    """The standard Synapse split, as the published ``lists/lists_Synapse`` files hold it.

    Returns:
        ``{"train": [...], "test": [...], "all": [...]}`` where ``train`` holds the 2211 slice
        names of the 18 training cases (sorted by case, then slice), ``test`` the 12 test case
        names in the published order and ``all`` the 30 volume file names
        ``caseXXXX.npy.h5`` of both sets, sorted.
    """
    train = [
        slice_name(case, index)
        for case in sorted(STANDARD_TRAIN_SLICE_COUNTS)
        for index in range(STANDARD_TRAIN_SLICE_COUNTS[case])
    ]
    cases = sorted([*STANDARD_TRAIN_SLICE_COUNTS, *STANDARD_TEST_CASES])
    return {
        "train": train,
        "test": list(STANDARD_TEST_CASES),
        "all": [case + VOLUME_SUFFIX for case in cases],
    }


def read_list(list_file: str | Path) -> list[str]:
    """Non-empty, stripped lines of a list file, read as UTF-8 with or without a byte-order mark.

    Raises:
        DataError: the file is missing, not UTF-8, lists nothing, or lists a name twice (a
            repeated case would count twice in every mean).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(
            f"list file {list_file} does not exist; write one with python -m datasets.prepare.synapse_lists --root DATA --out LIST_DIR"
        )
    # utf-8-sig drops the byte-order mark some Windows editors write, which would otherwise
    # become an invisible character at the start of the first name.
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"list file {list_file} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"list file {list_file} is empty; it should name one file per line")
    first_line: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in first_line:
            raise DataError(
                f"list file {list_file} names {name} twice (entries {first_line[name]} and {number}); "
                "a repeated case counts twice in every mean -- remove the repeat"
            )
        first_line[name] = number
    return names


def write_list(path: str | Path, names: Sequence[str]) -> Path:
    """Write ``names`` to ``path``, one per line (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(name + "\n" for name in names))
    return path


def write_standard_lists(list_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write the standard split's train.txt, test_vol.txt and all.lst into ``list_dir``."""
    split = standard_synapse_split()
    list_dir = Path(list_dir)
    return (
        write_list(list_dir / TRAIN_LIST, split["train"]),
        write_list(list_dir / TEST_LIST, split["test"]),
        write_list(list_dir / ALL_LIST, split["all"]),
    )


def _stems(folder: Path, suffix: str) -> list[str]:
    """Names of the files ``folder/*suffix`` with the suffix removed; error if none."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {folder} does not exist; a Synapse-format root holds "
            f"{TRAIN_DIR}/ and {TEST_DIR}/ (convert raw BTCV data with "
            "python -m datasets.prepare.synapse)"
        )
    stems = [path.name[: -len(suffix)] for path in folder.glob("*" + suffix) if path.is_file()]
    if not stems:
        raise FileNotFoundError(f"data folder {folder} holds no *{suffix} files; check --root")
    return stems


def write_synapse_lists(data_root: str | Path, list_dir: str | Path) -> tuple[Path, Path]:
    """Write ``train.txt`` and ``test_vol.txt`` for the files a Synapse-format folder holds.

    Args:
        data_root: folder with ``train_npz/*.npz`` and ``test_vol_h5/*.npy.h5``.
        list_dir: folder to write the lists into (created if needed).

    Returns:
        The paths of ``train.txt`` (slice names, sorted by case then slice index) and
        ``test_vol.txt`` (case names, sorted).

    Raises:
        FileNotFoundError: a folder is missing or holds no files of its kind.
        ValueError: a training file name is not ``CASE_sliceNNN.npz``.
    """
    data_root = Path(data_root)
    train = sort_slice_names(_stems(data_root / TRAIN_DIR, SLICE_SUFFIX))
    test = sorted(_stems(data_root / TEST_DIR, VOLUME_SUFFIX))
    list_dir = Path(list_dir)
    return write_list(list_dir / TRAIN_LIST, train), write_list(list_dir / TEST_LIST, test)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m datasets.lists`` as the README showed it: forwards to
    ``python -m datasets.prepare.synapse_lists``, the home of list writing since it moved under
    ``datasets.prepare`` (imported on call: that module imports this one)."""
    from datasets.prepare.synapse_lists import main as lists_main

    lists_main(argv)


if __name__ == "__main__":
    main()
