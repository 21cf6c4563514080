"""Synthetic short-axis cardiac cine MRI in the ACDC layout of this repository: demo data that
needs no download.

Each case is a stack of short-axis slices from the base of the heart to the apex, as bright-blood
(SSFP) cine MRI shows it: a chest of soft tissue with dark lungs on both sides, the left-ventricle
blood pool (bright) inside a ring of myocardium (dark), and the right ventricle (bright) as a
crescent beside the septum, on the image's left and towards the top (the patient's right and
anterior, radiological convention). Towards the apex the left ventricle narrows and the right
ventricle ends. Labels are ACDC's: 0 background, 1 right ventricle, 2 myocardium, 3 left
ventricle. Intensities get smooth bias, noise and a slight blur, then min-max scaling to [0, 1]
per volume, as ``datasets.prepare.acdc`` does.

Files (as ``datasets.prepare.acdc`` writes them)::

    OUT/train_npz/patientNNN_frame01_sliceKKK.npz   image, label: float32 (S, S)
    OUT/test_vol_h5/patientNNN_frame01.npy.h5       image, label: float32 (D, S, S); spacing
    OUT/lists/train.txt, OUT/lists/val_vol.txt, OUT/lists/test_vol.txt
    OUT/.synthetic-dataset                          the marker: only a folder with it is ever overwritten

Patients 1..T train, then the validation patients, then the test patients. A case depends only
on (seed, its patient number, size, min/max slices).

CLI::

    python -m datasets.synthetic.acdc --out data/acdc_phantom [--seed 1234] [--size 128]
        [--train_cases 12] [--val_cases 2] [--test_cases 4] [--min_slices 8] [--max_slices 12]
        [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.catalog import DATASETS
from datasets.common import normalise_volume
from datasets.lists import LIST_DIR, TEST_DIR, TRAIN_DIR, write_list
from datasets.synthetic.output import prepare_output
from datasets.writing import write_training_slices, write_volume

logger = logging.getLogger(__name__)

ACDC = DATASETS["ACDC"]
BACKGROUND, RIGHT_VENTRICLE, MYOCARDIUM, LEFT_VENTRICLE = range(4)

DEFAULT_SEED = 1234
DEFAULT_SIZE = 128
DEFAULT_TRAIN_CASES = 12
DEFAULT_VAL_CASES = 2
DEFAULT_TEST_CASES = 4
DEFAULT_MIN_SLICES = 8
DEFAULT_MAX_SLICES = 12
MIN_SIZE = 32  # below this the myocardium is under two pixels thick
MAX_CASES = 999  # patient numbers have 3 digits
GENERATOR = "datasets.synthetic.acdc"  # the name in the output folder's marker

# Geometry in normalised in-plane coordinates over [-1, 1] (x to the image's right, y down).
FOV_MM = 350.0  # a typical cardiac field of view
SLICE_MM = 10.0  # ACDC's usual slice spacing (5 mm slices with 5 mm gaps)
LV_RADIUS = (0.16, 0.22)  # at the base; uniform range per case
APEX_FRACTION = 0.35  # the LV radius at the last (apical) slice, relative to the base
MYO_THICKNESS = (0.05, 0.07)
RV_REACH = (0.55, 0.8)  # fraction of the stack (from the base) in which the RV is seen
RV_SHIFT = 0.55  # RV centre offset from the LV centre, in LV-plus-wall radii
RV_RADII = (1.25, 0.95)  # RV ellipse half axes (x, y) in LV-plus-wall radii
BODY_RADII = (0.85, 0.65)
LUNG_CENTRES = ((-0.55, 0.05), (0.55, 0.05))
LUNG_RADII = (0.22, 0.4)

# Signal of each tissue in arbitrary MRI units; spread across cases keeps contrasts honest.
BLOOD, MUSCLE, SOFT_TISSUE, LUNG, AIR = 230.0, 70.0, 120.0, 25.0, 5.0
SIGNAL_SPREAD = 0.1
NOISE = 8.0
BIAS = 0.15  # peak fractional change of a smooth coil-sensitivity bias
BLUR_PX = 0.7


def _ellipse(x: np.ndarray, y: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1.0


def make_case(rng: np.random.Generator, size: int, num_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic short-axis stack.

    Returns:
        image float32 (D, S, S) in [0, 1] and label uint8 (D, S, S) with ACDC's class ids.
    """
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    centre = (rng.uniform(-0.08, 0.12), rng.uniform(-0.1, 0.1))
    base_radius = rng.uniform(*LV_RADIUS)
    wall = rng.uniform(*MYO_THICKNESS)
    rv_slices = max(1, int(round(rng.uniform(*RV_REACH) * num_slices)))
    tilt = rng.uniform(-0.3, 0.3)  # RV direction around the image's upper left
    signal = {
        name: value * (1 + rng.uniform(-SIGNAL_SPREAD, SIGNAL_SPREAD))
        for name, value in (("blood", BLOOD), ("muscle", MUSCLE), ("soft", SOFT_TISSUE), ("lung", LUNG))
    }

    label = np.zeros((num_slices, size, size), np.uint8)
    image = np.full((num_slices, size, size), AIR, np.float64)
    for z in range(num_slices):
        depth = z / max(1, num_slices - 1)  # 0 at the base, 1 at the apex
        radius = base_radius * (1 - (1 - APEX_FRACTION) * depth)
        outer = radius + wall
        body = _ellipse(x, y, (0, 0), BODY_RADII)
        image[z][body] = signal["soft"]
        for lung_centre in LUNG_CENTRES:
            image[z][body & _ellipse(x, y, lung_centre, LUNG_RADII)] = signal["lung"]
        distance = np.hypot(x - centre[0], y - centre[1])
        heart = distance <= outer
        if z < rv_slices:
            direction = np.pi + np.pi / 4 + tilt  # towards the image's upper left
            rv_centre = (
                centre[0] + RV_SHIFT * 2 * outer * np.cos(direction) * 0.9,
                centre[1] + RV_SHIFT * 2 * outer * np.sin(direction) * 0.6,
            )
            taper = 1 - 0.5 * z / rv_slices
            rv = _ellipse(x, y, rv_centre, (RV_RADII[0] * outer * taper, RV_RADII[1] * outer * taper))
            # The septum keeps the RV cavity off the LV: the RV begins a wall's width outside it.
            rv &= distance > outer + wall * 0.5
            label[z][rv] = RIGHT_VENTRICLE
            image[z][rv] = signal["blood"]
        label[z][heart] = MYOCARDIUM
        image[z][heart] = signal["muscle"]
        pool = distance <= radius
        label[z][pool] = LEFT_VENTRICLE
        image[z][pool] = signal["blood"]

    bias = 1 + BIAS * np.sin(np.pi * (x * rng.uniform(0.3, 0.8) + y * rng.uniform(0.3, 0.8) + rng.uniform(0, 2)))
    image = ndimage.gaussian_filter(image * bias, sigma=(0, BLUR_PX, BLUR_PX))
    image = np.abs(image + rng.normal(0, NOISE, image.shape))  # magnitude images are non-negative
    return normalise_volume(image), label


def case_name(number: int) -> str:
    """``patientNNN_frame01`` of patient ``number`` (1-based)."""
    return f"patient{number:03d}_frame01"


def generate_dataset(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    size: int = DEFAULT_SIZE,
    train_cases: int = DEFAULT_TRAIN_CASES,
    val_cases: int = DEFAULT_VAL_CASES,
    test_cases: int = DEFAULT_TEST_CASES,
    min_slices: int = DEFAULT_MIN_SLICES,
    max_slices: int = DEFAULT_MAX_SLICES,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic ACDC-like data set (see the module docstring).

    Patient ``n`` is drawn from the n-th child of ``np.random.default_rng(seed)``, its slice
    count first. ``overwrite`` replaces the data an earlier run of this generator left in
    ``out_dir``; a folder that is not empty and not marked as this generator's is never touched.

    Returns:
        ``out_dir``, ``train_dir``, ``test_dir``, ``list_dir`` (Paths), ``train``, ``val``,
        ``test`` (case names), ``num_train_slices``.

    Raises:
        ValueError: a bad argument (the message names its CLI flag), or an ``out_dir`` that is
            not empty and not this generator's, or holds its data without ``overwrite``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"--size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    if not 1 <= min_slices <= max_slices:
        raise ValueError(f"--min_slices {min_slices} and --max_slices {max_slices} must satisfy 1 <= min <= max")
    counts = {"--train_cases": train_cases, "--val_cases": val_cases, "--test_cases": test_cases}
    if any(value < 1 for value in counts.values()) or sum(counts.values()) > MAX_CASES:
        raise ValueError(
            f"{', '.join(counts)} must each be at least 1 and together at most {MAX_CASES}, got "
            f"{train_cases}, {val_cases}, {test_cases}"
        )
    out_dir = prepare_output(out_dir, GENERATOR, (TRAIN_DIR, TEST_DIR, LIST_DIR), overwrite)
    total = train_cases + val_cases + test_cases
    rngs = np.random.default_rng(seed).spawn(total)
    roles = ["train"] * train_cases + ["val"] * val_cases + ["test"] * test_cases
    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    slices: list[str] = []
    spacing = (SLICE_MM, FOV_MM / size, FOV_MM / size)
    for number, (role, rng) in enumerate(zip(roles, rngs), 1):
        image, label = make_case(rng, size, int(rng.integers(min_slices, max_slices + 1)))
        name = case_name(number)
        if role == "train":
            slices += write_training_slices(out_dir / TRAIN_DIR, name, image, label)
        else:
            write_volume(out_dir / TEST_DIR, name, image, label, spacing)
        names[role].append(name)
    list_dir = out_dir / LIST_DIR
    write_list(list_dir / ACDC.train_list, slices)
    write_list(list_dir / ACDC.val_list, names["val"])
    write_list(list_dir / ACDC.test_list, names["test"])
    logger.info("wrote %d training slices, %d validation and %d test volumes to %s", len(slices), val_cases, test_cases, out_dir)
    return {
        "out_dir": out_dir,
        "train_dir": out_dir / TRAIN_DIR,
        "test_dir": out_dir / TEST_DIR,
        "list_dir": list_dir,
        **names,
        "num_train_slices": len(slices),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic.acdc", description="Write synthetic short-axis cardiac MRI in the ACDC layout."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="in-plane size in pixels")
    parser.add_argument("--train_cases", type=int, default=DEFAULT_TRAIN_CASES)
    parser.add_argument("--val_cases", type=int, default=DEFAULT_VAL_CASES)
    parser.add_argument("--test_cases", type=int, default=DEFAULT_TEST_CASES)
    parser.add_argument("--min_slices", type=int, default=DEFAULT_MIN_SLICES)
    parser.add_argument("--max_slices", type=int, default=DEFAULT_MAX_SLICES)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the data an earlier run of this generator left in --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate_dataset(
            args.out,
            args.seed,
            args.size,
            args.train_cases,
            args.val_cases,
            args.test_cases,
            args.min_slices,
            args.max_slices,
            args.overwrite,
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
