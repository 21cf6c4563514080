"""The data doctor: validate a downloaded or converted copy of a data set without training.

::

    python -m datasets.check --root DATA [--dataset Synapse|ACDC|ISIC2018|path/to/dataset.json]
                             [--list_dir DIR] [--num_classes N] [--all]

For the Synapse format (``DATA/train_npz``, ``DATA/test_vol_h5``) it checks that every listed
file is present and readable, each case's slice count against the lists (and against the
standard split's published counts when the lists are the standard ones), shapes and dtypes,
the image value range (a copy must hold [0, 1]), the label ids of each case (below
``num_classes``) and the test volumes' spacing attribute. For 2D images (``DATA/images``,
``DATA/masks``) it checks every listed image and mask as the reader reads them. Each file is
read by the readers' own loading code, so the doctor and training agree on what is broken (and
once, except a 2-class mask that reads as empty: it is opened again to see its raw values).
A conversion that never completed (a staging folder beside the data) and list files that are
not those the conversion wrote (its ``conversion.json`` marker) are reported too.

It prints one line per problem with what to do, then a summary. Exit status: 0 clean, 1 problems
found, 2 bad flags. The checkpoint check (``--weights`` of the issue) needs the network, which
``datasets`` must not import; it is ``python -m utils.check_weights FILE``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.catalog import IMAGES, DatasetInfo, dataset_info
from datasets.common import TEST, VAL, DataError, intensity_range_problem
from datasets.isic import MASK_THRESHOLD, image_path, mask_path, read_pair
from datasets.lists import (
    STANDARD_TEST_CASES,
    STANDARD_TRAIN_SLICE_COUNTS,
    TEST_DIR,
    TRAIN_DIR,
    VOLUME_SUFFIX,
    parse_slice_name,
    read_list,
)
from datasets.prepare.staging import conversion_problems
from datasets.synapse import H5Volumes, check_arrays, load_slice

# Voxel sizes outside this range (mm) are unit mistakes (metres, microns) or a placeholder.
# (A 32-pixel phantom has 12.8 mm pixels, a metre-valued spacing 0.001, a micron-valued 800.)
SPACING_MM = (0.01, 100.0)
# Raw BTCV label volumes hold 14 ids (0 background + 13 organs).
BTCV_NUM_CLASSES = 14
SHOWN_PER_KIND = 3  # problems of one kind printed before "... and N more" (unless --all)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or list): ``kind`` groups alike problems in the report."""

    kind: str
    path: Path
    message: str
    fix: str

    def line(self) -> str:
        # A reader's DataError already names the file and the fix; it is printed as it is.
        text = self.message if self.message.startswith(str(self.path)) else f"{self.path}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class Report:
    """What the doctor found: problems, and facts for the summary."""

    problems: list[Problem] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def add(self, kind: str, path: Path, message: str, fix: str) -> None:
        self.problems.append(Problem(kind, Path(path), message, fix))

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self, show_all: bool = False) -> list[str]:
        """The printed report: facts, then problems grouped by kind, then the verdict."""
        out = list(self.facts)
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        for kind, problems in by_kind.items():
            shown = problems if show_all else problems[:SHOWN_PER_KIND]
            out += [f"PROBLEM {problem.line()}" for problem in shown]
            if len(problems) > len(shown):
                out.append(
                    f"PROBLEM ... and {len(problems) - len(shown)} more files with the same {kind} "
                    "problem (--all lists every one)"
                )
        if self.clean:
            out.append("clean: no problems found")
        else:
            kinds = ", ".join(f"{len(problems)} {kind}" for kind, problems in by_kind.items())
            out.append(f"{len(self.problems)} problems found ({kinds})")
        return out


def _range(values: Sequence[float]) -> str:
    return f"{min(values):g}" if min(values) == max(values) else f"{min(values):g}-{max(values):g}"


def _span(values: list[tuple[float, float]]) -> str:
    return f"[{min(v[0] for v in values):g}, {max(v[1] for v in values):g}]"


class _Ranges:
    """Running image and label summaries across files (read once, summarised at the end)."""

    def __init__(self) -> None:
        self.image: list[tuple[float, float]] = []
        self.image_dtypes: set[str] = set()
        self.label_dtypes: set[str] = set()
        self.ids_by_case: dict[str, set[int]] = defaultdict(set)


def _check_image_range(report: Report, path: Path, image: np.ndarray) -> None:
    """Flag stored intensities outside [0, 1] and say which mistake it looks like."""
    problem = intensity_range_problem(float(image.min()), float(image.max()))
    if problem is not None:
        report.add("image range", path, *problem)


def _check_label_ids(report: Report, path: Path, label: np.ndarray, num_classes: int) -> set[int]:
    """Class ids present in ``label``; flag ids >= num_classes (a raw 14-class BTCV label)."""
    ids = {int(v) for v in np.unique(label)}
    bad = sorted(i for i in ids if i >= num_classes)  # (negative ids were refused by check_arrays)
    if bad:
        if max(ids) < BTCV_NUM_CLASSES and num_classes < BTCV_NUM_CLASSES:
            fix = (
                "it looks like a raw BTCV label (ids 0-13): convert the raw data with "
                "python -m datasets.prepare.synapse, which keeps the 8 organs and renumbers them"
            )
        else:
            fix = "check --num_classes / --dataset, or the label file"
        report.add("label ids", path, f"label holds ids {bad}, expected 0..{num_classes - 1}", fix)
    return ids


def _array_checks(
    report: Report, path: Path, image: np.ndarray, label: np.ndarray, ndim: int, num_classes: int, ranges: _Ranges, case: str
) -> None:
    """Shape, dtype, range and id checks of one item's arrays (image (H, W) or (D, H, W))."""
    try:
        # The reader's own structural check; ids are checked below, with a better hint.
        check_arrays(path, image, label, ndim=ndim, num_classes=None)
    except DataError as error:
        report.add("shape or values", path, str(error), "re-create the file from the raw data")
        return
    if image.size:
        ranges.image.append((float(image.min()), float(image.max())))
        _check_image_range(report, path, image)
    ranges.ids_by_case[case] |= _check_label_ids(report, path, label, num_classes)


def _report_missing(report: Report, path: Path, list_file: Path) -> None:
    report.add(
        "missing file",
        path,
        f"listed in {list_file.name} but missing",
        "re-download or re-convert the case, or regenerate the list",
    )


def _list(report: Report, list_file: Path) -> list[str]:
    try:
        return read_list(list_file)
    except DataError as error:
        report.add(
            "list",
            list_file,
            str(error).removeprefix(f"list file {list_file} "),
            "pass --list_dir, or write lists with python -m datasets.prepare.synapse_lists --root DATA --out LIST_DIR",
        )
        return []


def check_slices(report: Report, train_dir: Path, list_file: Path, num_classes: int, ranges: _Ranges) -> None:
    """Check the training slices ``train_dir/NAME.npz`` named by ``list_file``."""
    names = _list(report, list_file)
    if not names:
        return
    listed: dict[str, list[int]] = defaultdict(list)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        try:
            case, index = parse_slice_name(name)
        except ValueError as error:
            report.add("list", list_file, str(error), "fix the list")
            continue
        listed[case].append(index)
        path = train_dir / f"{name}.npz"
        if not path.is_file():
            _report_missing(report, path, list_file)
            continue
        try:
            image, label = load_slice(path)
        except DataError as error:
            report.add("unreadable file", path, str(error), "")
            continue
        ranges.image_dtypes.add(str(image.dtype))
        ranges.label_dtypes.add(str(label.dtype))
        if image.ndim in (2, 3) and shapes.setdefault(case, image.shape) != image.shape:
            report.add(
                "shape or values",
                path,
                f"slice shape {image.shape} differs from {shapes[case]} of the case's other slices",
                "re-convert the case",
            )
        _array_checks(report, path, image, label, 2, num_classes, ranges, case)
    for case, indices in listed.items():
        expected = set(range(max(indices) + 1))
        gaps = sorted(expected - set(indices))
        if gaps or len(indices) != len(set(indices)):
            report.add(
                "slice count",
                list_file,
                f"{case} lists {len(indices)} slices but numbers run 0..{max(indices)}"
                + (f" (missing {gaps[:5]})" if gaps else " (duplicates)"),
                "regenerate the list from the folder",
            )
    total = sum(len(v) for v in listed.values())
    report.facts.append(f"train: {total} slices of {len(listed)} cases listed in {list_file}")
    if set(listed) == set(STANDARD_TRAIN_SLICE_COUNTS):
        wrong = {
            case: (len(listed[case]), count) for case, count in STANDARD_TRAIN_SLICE_COUNTS.items() if len(listed[case]) != count
        }
        for case, (have, count) in sorted(wrong.items()):
            report.add(
                "slice count",
                list_file,
                f"{case} has {have} slices, the standard split has {count}",
                "use the standard lists (python -m datasets.prepare.synapse_lists --standard --out LIST_DIR) and a complete copy of the case",
            )
        if not wrong:
            report.facts.append("train: the 18 cases and 2211 slices of the standard split")


def check_volumes(report: Report, test_dir: Path, list_file: Path, num_classes: int, ranges: _Ranges, role: str = "test") -> None:
    """Check the volumes ``test_dir/NAME.npy.h5`` named by ``list_file``, spacing included."""
    names = _list(report, list_file)
    if not names:
        return
    # The reader without its checks (all-or-nothing at construction, per item on reading):
    # _array_checks runs the same structural check on each volume and reports what it finds.
    volumes = H5Volumes(test_dir, list_file, num_classes, check=False)
    spacings: dict[Path, tuple[float, float, float] | None] = {}
    depths = []
    for index, name in enumerate(volumes.names):
        path = test_dir / f"{name}{VOLUME_SUFFIX}"
        if not path.is_file():
            _report_missing(report, path, list_file)
            continue
        try:
            item = volumes[index]
        except DataError as error:
            report.add("unreadable file", path, str(error), "")
            continue
        spacings[path] = item["spacing"]
        depths.append(item["image"].shape[0] if item["image"].ndim else 0)
        _array_checks(report, path, item["image"], item["label"], 3, num_classes, ranges, name)
    report.facts.append(
        f"{role}: {len(names)} volumes listed in {list_file}" + (f", {_range(depths)} slices each" if depths else "")
    )
    if role == "test" and set(names) == set(STANDARD_TEST_CASES):
        report.facts.append("test: the 12 cases of the standard split")
    _check_spacing(report, spacings)


def _check_spacing(report: Report, spacings: dict[Path, tuple[float, float, float] | None]) -> None:
    """A copy either stores spacing in every volume or in none (TransUNet's copy has none)."""
    present = {path: s for path, s in spacings.items() if s is not None}
    if not present:
        if spacings:
            report.facts.append(
                "spacing: no volume stores it (as in TransUNet's copy): HD95 in voxels only, the "
                "published tables' unit; --spacing file needs a copy from datasets.prepare"
            )
        return
    for path, spacing in spacings.items():
        if spacing is None:
            report.add(
                "spacing",
                path,
                "has no 'spacing' attribute while other volumes of the copy have one",
                "re-convert the case (datasets.prepare) so --spacing file gives HD95 in mm for every case",
            )
        elif not all(SPACING_MM[0] <= s <= SPACING_MM[1] for s in spacing):
            report.add(
                "spacing",
                path,
                f"spacing {spacing} mm (z, y, x) is implausible, expected {SPACING_MM[0]}-{SPACING_MM[1]} mm",
                "re-convert the case; spacing is stored in mm",
            )
    values = np.array(list(present.values()))
    z, plane = [float(f"{v:.3g}") for v in values[:, 0]], [float(f"{v:.3g}") for v in values[:, 1:].ravel()]
    report.facts.append(f"spacing: z {_range(z)} mm, in-plane {_range(plane)} mm ({len(present)} volumes)")


def check_images(report: Report, root: Path, list_files: Sequence[Path], num_classes: int) -> None:
    """Check 2D images and masks (``root/images``, ``root/masks``) as ``datasets.isic`` reads them."""
    ids: set[int] = set()
    sizes: set[tuple[int, int]] = set()
    for list_file in list_files:
        names = _list(report, list_file)
        for name in names:
            try:
                rgb, label = read_pair(root, name, num_classes)
            except DataError as error:
                text = str(error)
                path = next(
                    (p for p in (image_path(root, name), mask_path(root, name)) if text.startswith(str(p))),
                    image_path(root, name),
                )
                report.add("image file", path, text, "")
                continue
            sizes.add(rgb.shape[:2])
            ids |= {int(v) for v in np.unique(label)}
            if num_classes == 2 and not label.any():
                _check_binary_mask(report, mask_path(root, name))
        if names:
            report.facts.append(f"{list_file.stem}: {len(names)} images listed in {list_file}")  # train, val, test
    if ids:
        report.facts.append(
            f"masks: class ids {sorted(ids)} present; image sizes "
            f"{min(sizes)[1]}x{min(sizes)[0]} to {max(sizes)[1]}x{max(sizes)[0]}"
        )


def _check_binary_mask(report: Report, path: Path) -> None:
    """A 2-class mask is read as 0 / 255 (threshold 128): a mask of ids 0 / 1 reads as empty."""
    try:
        with Image.open(path) as mask:
            high = int(np.asarray(mask.convert("L")).max())
    except (OSError, UnidentifiedImageError):
        return  # read_pair has already read it; nothing more to learn
    if 0 < high < MASK_THRESHOLD:
        report.add(
            "mask values",
            path,
            f"mask values reach only {high}, below the 2-class threshold {MASK_THRESHOLD}: it reads as all background",
            "store the lesion as 255 (0 / 255 masks), or convert with python -m datasets.prepare.images",
        )


def check_dataset(info: DatasetInfo, root: Path, list_dir: Path, num_classes: int | None = None) -> Report:
    """Run every check of the data set ``info`` on the copy in ``root`` with lists in ``list_dir``.

    Args:
        info: the data-set entry (``datasets.catalog.dataset_info``).
        root: for volumes the folder holding ``train_npz/`` and ``test_vol_h5/``; for images the
            folder holding ``images/`` and ``masks/``.
        list_dir: folder of the list files the entry names.
        num_classes: classes including background; None takes the entry's.

    Returns:
        The report; ``report.clean`` is True when nothing is wrong.
    """
    num_classes = num_classes or info.num_classes
    report = Report()
    report.facts.append(f"checking {root} (lists in {list_dir}, {num_classes} classes)")
    # A converter stopped half-way, or lists another conversion rewrote (datasets.prepare.staging).
    for kind, path, message, fix in conversion_problems(root):
        report.add(kind, path, message, fix)
    list_names = [info.train_list, *([info.val_list] if info.val_list else []), info.test_list]
    if info.kind == IMAGES:
        check_images(report, root, [list_dir / name for name in list_names], num_classes)
        return report
    ranges = _Ranges()
    check_slices(report, root / TRAIN_DIR, list_dir / info.train_list, num_classes, ranges)
    for role, name in ((VAL, info.val_list), (TEST, info.test_list)):
        if name:
            check_volumes(report, root / TEST_DIR, list_dir / name, num_classes, ranges, role)
    if ranges.image:
        report.facts.append(
            f"images: values in {_span(ranges.image)}; training slices store images as "
            f"{', '.join(sorted(ranges.image_dtypes))}, labels as {', '.join(sorted(ranges.label_dtypes))}"
        )
    if ranges.ids_by_case:
        everywhere = set.union(*ranges.ids_by_case.values())
        absent = sorted(set(range(num_classes)) - everywhere)
        report.facts.append(
            f"labels: ids {sorted(everywhere)} present in {len(ranges.ids_by_case)} cases"
            + (f"; classes {absent} appear in no case" if absent else "")
        )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.check",
        description="Validate a copy of a data set without training: files, slice counts, shapes, value range, "
        "label ids, spacing. Exit 0 clean, 1 problems found, 2 bad flags. Checkpoints: "
        "python -m utils.check_weights FILE.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="data folder: DATA with train_npz/ and test_vol_h5/ (volumes) or images/ and masks/ "
        "(2D images); default from --dataset",
    )
    parser.add_argument(
        "--dataset", default="Synapse", help="a name of the table in datasets/catalog.py or the path of a dataset.json"
    )
    parser.add_argument("--list_dir", type=Path, help="folder of the list files (default from --dataset)")
    parser.add_argument("--num_classes", type=int, help="classes including background (default from --dataset)")
    parser.add_argument("--all", action="store_true", help="print every problem, not the first few of each kind")
    return parser


def _default_root(info: DatasetInfo) -> Path:
    # The table names the training folder (DATA/train_npz) for volumes, the data folder for images.
    return Path(info.root_path) if info.kind == IMAGES else Path(info.root_path).parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        info = dataset_info(args.dataset)
    except ValueError as error:
        parser.error(str(error))
    if args.num_classes is not None and args.num_classes < 2:
        parser.error(f"--num_classes must be at least 2 (background and one class), got {args.num_classes}")
    root = args.root or _default_root(info)
    if not root.is_dir():
        parser.error(f"--root {root} is not a folder; pass the data folder (e.g. data/Synapse)")
    report = check_dataset(info, root, args.list_dir or Path(info.list_dir), args.num_classes)
    print("\n".join(report.lines(args.all)))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
