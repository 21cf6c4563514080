"""Write the train / val / test lists of a 2D image folder (``images/`` + ``masks/``, the layout
``datasets.isic`` reads): 70 / 10 / 20 by ``datasets.lists.split_role`` on the 1-based position
in sorted name order.

Usage::

    python -m datasets.prepare.isic_lists --root data/ISIC2018 --out lists/lists_ISIC2018
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.common import TEST, TRAIN, VAL, DataError
from datasets.isic import IMAGE_DIR, IMAGE_SUFFIX, IMAGE_SUFFIXES, LIST_NAMES, MASK_DIR, MASK_SUFFIX, mask_path
from datasets.lists import split_role, write_list

PROG = "python -m datasets.prepare.isic_lists"


def image_split(root: str | Path) -> dict[str, list[str]]:
    """The train / val / test names of every image of ``root/images`` that has a mask.

    Raises:
        DataError: no image with a mask in ``root``.
    """
    folder = Path(root) / IMAGE_DIR
    found = {p.name[: -len(s)] for s in IMAGE_SUFFIXES for p in folder.glob("*" + s)} if folder.is_dir() else set()
    names = sorted(found)
    names = [name for name in names if mask_path(root, name).is_file()]
    if not names:
        raise DataError(f"{folder} holds no NAME{IMAGE_SUFFIX} with a {MASK_DIR}/NAME{MASK_SUFFIX}; check --root")
    split: dict[str, list[str]] = {TRAIN: [], VAL: [], TEST: []}
    for position, name in enumerate(names, 1):
        split[split_role(position)].append(name)
    return split


def write_isic_lists(root: str | Path, list_dir: str | Path) -> dict[str, list[str]]:
    """Write train / val / test lists for every image of ``root/images`` that has a mask.

    Returns:
        The names of each split.

    Raises:
        DataError: no image with a mask in ``root``.
    """
    split = image_split(root)
    for role, file_name in LIST_NAMES.items():
        write_list(Path(list_dir) / file_name, split[role])
    return split


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Write 70/10/20 train/val/test lists for an images/ + masks/ folder.")
    parser.add_argument("--root", required=True, type=Path, help="folder holding images/ and masks/")
    parser.add_argument("--out", required=True, type=Path, help="folder to write train.txt, val.txt, test.txt into")
    args = parser.parse_args(argv)
    try:
        split = write_isic_lists(args.root, args.out)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    print(", ".join(f"{len(names)} {role}" for role, names in split.items()) + f" images; lists in {args.out}")


if __name__ == "__main__":
    main()
