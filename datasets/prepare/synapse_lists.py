"""Write the list files of a Synapse-format data folder (``train_npz/`` + ``test_vol_h5/``), or
regenerate the committed standard split (``datasets.lists`` holds the functions).

Usage::

    python -m datasets.prepare.synapse_lists --root data/Synapse --out lists/my_lists
    python -m datasets.prepare.synapse_lists --standard --out lists/lists_Synapse
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.lists import write_standard_lists, write_synapse_lists

PROG = "python -m datasets.prepare.synapse_lists"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write train.txt and test_vol.txt for a Synapse-format data folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="data folder holding train_npz/ and test_vol_h5/: list its files")
    source.add_argument(
        "--standard", action="store_true", help="write the standard Synapse split (train.txt, test_vol.txt, all.lst)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the lists into")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.standard:
            written = write_standard_lists(args.out)
        else:
            written = write_synapse_lists(args.root, args.out)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
