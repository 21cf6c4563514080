"""Raw BTCV-like abdomen CT: the phantom's cases written as ``imgNNNN.nii.gz`` (HU, int16) and
``labelNNNN.nii.gz`` with all 13 BTCV organ ids, as the raw BTCV download holds them.

The phantom (``datasets.synthetic.synapse``) paints the 8 organs of the Synapse benchmark; the
other five BTCV organs (esophagus, inferior vena cava, portal and splenic vein, the two adrenal
glands) are added here as small ellipsoids with their own CT numbers, painted over background
and the liver only (the portal vein and the right adrenal gland lie at or in it), so every other
organ stays the phantom's. It exists to test a converter that keeps
a chosen set of organs (``datasets.prepare.synapse --organs``), not as anatomy.

CLI::

    python -m datasets.synthetic.btcv --out raw_btcv [--cases 5,6,8,22] [--size 64] [--seed 1234]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from datasets.common import CT_WINDOW
from datasets.prepare.synapse import BTCV_TO_SYNAPSE
from datasets.synthetic.synapse import make_case, spacing_mm

# The five organs the phantom lacks: BTCV id -> (centre x, centre y in [-1, 1] of the field of
# view, radii x, y as fractions of it, cranio-caudal extent as fractions of the slices, HU).
# Image x runs to the patient's left, y to posterior (the radiological convention).
EXTRA_ORGANS = {
    5: (0.1, 0.0, 0.07, 0.07, (0.0, 0.35), 40.0),  # esophagus, upper slices beside the aorta
    9: (-0.15, 0.05, 0.08, 0.07, (0.0, 0.9), 160.0),  # inferior vena cava, right of the aorta
    10: (-0.25, -0.1, 0.1, 0.06, (0.3, 0.6), 180.0),  # portal and splenic vein
    12: (-0.3, 0.1, 0.07, 0.06, (0.05, 0.35), 30.0),  # right adrenal gland, above the kidney
    13: (0.3, 0.1, 0.07, 0.06, (0.05, 0.35), 30.0),  # left adrenal gland
}
SYNAPSE_TO_BTCV = {synapse_id: btcv_id for btcv_id, synapse_id in BTCV_TO_SYNAPSE.items()}
BTCV_LIVER = 6


def btcv_case(rng: np.random.Generator, size: int, num_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """One case: int16 HU (D, S, S) and uint8 BTCV ids 0..13 (D, S, S)."""
    image, synapse_label = make_case(rng, size, num_slices)
    low, high = CT_WINDOW
    hu = image * (high - low) + low
    table = np.zeros(max(SYNAPSE_TO_BTCV) + 1, np.uint8)
    for synapse_id, btcv_id in SYNAPSE_TO_BTCV.items():
        table[synapse_id] = btcv_id
    label = table[synapse_label]
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    for btcv_id, (cx, cy, rx, ry, (z0, z1), value) in EXTRA_ORGANS.items():
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        for z in range(int(z0 * num_slices), max(int(z0 * num_slices) + 1, int(z1 * num_slices))):
            free = inside & ((label[z] == 0) | (label[z] == BTCV_LIVER))
            label[z][free] = btcv_id
            hu[z][free] = value
    return np.round(hu).astype(np.int16), label


def write_raw_btcv(
    out_dir: str | Path, numbers: Sequence[int], seed: int = 1234, size: int = 64, slices: tuple[int, int] = (8, 12)
) -> list[Path]:
    """Write case ``N`` of ``numbers`` as ``out_dir/imgNNNN.nii.gz`` and ``labelNNNN.nii.gz``
    (case N drawn from the N-th child of ``seed``); returns the image paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rngs = np.random.default_rng(seed).spawn(max(numbers))
    written = []
    for number in numbers:
        rng = rngs[number - 1]
        num_slices = int(rng.integers(slices[0], slices[1] + 1))
        hu, label = btcv_case(rng, size, num_slices)
        spacing_xyz = tuple(reversed(spacing_mm(size, num_slices)))
        for array, name in ((hu, f"img{number:04d}.nii.gz"), (label, f"label{number:04d}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(spacing_xyz)
            sitk.WriteImage(volume, str(out_dir / name))
        written.append(out_dir / f"img{number:04d}.nii.gz")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic.btcv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for imgNNNN.nii.gz and labelNNNN.nii.gz")
    parser.add_argument(
        "--cases", default="5,6,8,22", help="case numbers (8, 22, 25, 29, ... are standard test cases, 5 and 6 training ones)"
    )
    parser.add_argument("--size", type=int, default=64, help="in-plane size in pixels (at least 32)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    try:
        numbers = [int(n) for n in args.cases.split(",")]
    except ValueError:
        parser.exit(2, f"error: --cases {args.cases!r} must be comma-separated case numbers, e.g. 5,6,8,22\n")
    write_raw_btcv(args.out, numbers, args.seed, args.size)


if __name__ == "__main__":
    main()
