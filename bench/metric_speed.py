"""Time Dice + HD95 of one Synapse-sized case: medpy (the published protocol) against utils.metrics.

Builds a deterministic synthetic label pair -- a D x H x W reference with the 8 Synapse organs as
irregular ellipsoids of realistic sizes, and a prediction that shifts, erodes, dilates or trims
each organ and adds a few false positives -- then scores it both ways in the same run, checks
that the numbers agree to a relative 1e-9, and prints the seconds and their ratio.

    python -m bench.metric_speed                      # full Synapse size 148 x 512 x 512
    python -m bench.metric_speed --depth 40 --size 256 --repeats 3

medpy takes 15-20 s per organ at full size (two whole-volume distance transforms each), so the
default run takes 2-3 minutes on an idle machine; shrink --depth / --size for a quick look.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from medpy.metric.binary import dc, hd95
from scipy import ndimage

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_description  # noqa: E402
from utils.metrics import metrics_for_classes  # noqa: E402

SYNAPSE_DEPTH = 148  # slices of a typical Synapse test volume
SYNAPSE_SIZE = 512  # in-plane size of a Synapse slice
NUM_CLASSES = 9  # background + 8 organs
RELATIVE_TOLERANCE = 1e-9
DEFAULT_SEED = 0
# Amplitude of the low-frequency wobble that makes an ellipsoid organ-like rather than exact.
WOBBLE = 0.15
# Margin (voxels) around an organ's box so that a shifted or dilated copy still fits.
EDIT_MARGIN = 6


@dataclass(frozen=True)
class Organ:
    """An organ as an ellipsoid in a 148 x 512 x 512 volume, and how the fake prediction errs.

    centre, radii and shift are (z, y, x) voxels at full Synapse size and scale with the
    volume. shift moves the predicted copy, grow > 0 dilates and < 0 erodes it (iterations of the
    6-neighbour cross), and trim_slices drops that many slices at its top (a partial miss).
    """

    label: int
    name: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    shift: tuple[int, int, int] = (0, 0, 0)
    grow: int = 0
    trim_slices: int = 0


# Sizes from typical Synapse cases (0.7-0.8 mm in-plane, ~3 mm slices); the liver covers about
# a third of the slice at its widest. Painted in this order, so small organs lie on top.
ORGANS: tuple[Organ, ...] = (
    Organ(5, "liver", (60, 230, 170), (30, 170, 140), shift=(1, 3, -2), grow=1),
    Organ(8, "stomach", (55, 180, 320), (20, 80, 60), shift=(0, -4, 3), grow=-1),
    Organ(7, "spleen", (60, 220, 390), (15, 55, 40), shift=(1, 0, 2)),
    Organ(3, "kidney_l", (80, 300, 370), (18, 35, 30), grow=1, trim_slices=3),
    Organ(4, "kidney_r", (80, 300, 150), (18, 35, 30), shift=(0, 2, 2), grow=-1),
    Organ(6, "pancreas", (78, 260, 280), (10, 70, 20), shift=(2, -3, 4), grow=-1),
    Organ(1, "aorta", (74, 290, 256), (50, 14, 14), shift=(0, 1, 0), grow=1),
    Organ(2, "gallbladder", (75, 280, 215), (8, 22, 16), shift=(1, 2, -1), trim_slices=2),
)
# False positives of the prediction, far from the organ itself: (label, corner, size), corner
# and size (z, y, x) in voxels at full size. The gallbladder's is big enough to dominate its
# HD95, as stray blobs do in real predictions; the others are specks.
SPECKS: tuple[tuple[int, tuple[int, int, int], tuple[int, int, int]], ...] = (
    (2, (20, 100, 100), (4, 12, 12)),
    (6, (130, 420, 200), (3, 6, 6)),
    (1, (10, 256, 256), (3, 3, 3)),
    (7, (100, 400, 100), (5, 10, 10)),
)


def make_case(depth: int = SYNAPSE_DEPTH, size: int = SYNAPSE_SIZE, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic (prediction, reference) label pair, uint8 arrays of shape (depth, size, size)."""
    if depth < 16 or size < 32:
        raise ValueError(f"depth must be >= 16 and size >= 32, got depth={depth}, size={size}")
    rng = np.random.default_rng(seed)
    scale = np.array([depth / SYNAPSE_DEPTH, size / SYNAPSE_SIZE, size / SYNAPSE_SIZE])
    shape = (depth, size, size)
    reference = np.zeros(shape, dtype=np.uint8)
    for organ in ORGANS:
        box, mask = _organ_mask(organ, scale, shape, rng)
        reference[box][mask] = organ.label

    prediction = np.zeros(shape, dtype=np.uint8)
    organ_boxes = ndimage.find_objects(reference, max_label=NUM_CLASSES - 1)
    for organ in ORGANS:
        if organ_boxes[organ.label - 1] is None:  # painted over by smaller organs
            continue
        box = _grown_box(organ_boxes[organ.label - 1], shape)
        shift = tuple(int(round(d * s)) for d, s in zip(organ.shift, scale))
        mask = _perturbed(reference[box] == organ.label, shift, organ.grow, organ.trim_slices)
        prediction[box][mask] = organ.label
    for label, corner, size in SPECKS:
        extent = [max(int(round(e * s)), 1) for e, s in zip(size, scale)]
        start = [min(int(c * s), n - e) for c, s, n, e in zip(corner, scale, shape, extent)]
        prediction[tuple(slice(b, b + e) for b, e in zip(start, extent))] = label
    return prediction, reference


def _organ_mask(
    organ: Organ, scale: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The organ's box in the volume and its irregular-ellipsoid mask inside the box."""
    centre = np.asarray(organ.centre) * scale
    radii = np.maximum(np.asarray(organ.radii) * scale, 1.0)
    reach = radii * (1.0 + WOBBLE) + 1
    box = tuple(slice(max(int(c - r), 0), min(int(c + r) + 1, n)) for c, r, n in zip(centre, reach, shape))
    grids = np.ogrid[box]
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(grids))
    frequencies = rng.uniform(1.5, 3.0, size=len(grids))
    radius_sq = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    wobble = sum(np.sin(f * (g - c) / r + p) for g, c, r, f, p in zip(grids, centre, radii, frequencies, phases))
    return box, radius_sq + WOBBLE * wobble / len(grids) <= 1.0


def _grown_box(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - EDIT_MARGIN, 0), min(s.stop + EDIT_MARGIN, n)) for s, n in zip(box, shape))


def _perturbed(mask: np.ndarray, shift: tuple[int, ...], grow: int, trim_slices: int) -> np.ndarray:
    """A predicted copy of an organ mask: shifted, dilated or eroded, and trimmed (see Organ)."""
    moved = np.zeros_like(mask)
    source = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(shift, mask.shape))
    target = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip(shift, mask.shape))
    moved[target] = mask[source]
    if grow > 0:
        moved = ndimage.binary_dilation(moved, iterations=grow)
    elif grow < 0:
        moved = ndimage.binary_erosion(moved, iterations=-grow)
    occupied = np.flatnonzero(moved.any(axis=(1, 2)))
    if trim_slices and len(occupied):
        moved[occupied[-1] - trim_slices + 1 :] = False
    return moved


def medpy_metrics(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """The published per-case protocol with medpy: (dc, hd95) per class, (num_classes-1, 2)."""
    scores = np.zeros((num_classes - 1, 2))
    for label in range(1, num_classes):
        pred, gt = prediction == label, reference == label
        if pred.sum() > 0 and gt.sum() > 0:
            scores[label - 1] = dc(pred, gt), hd95(pred, gt)
        elif pred.sum() > 0:
            scores[label - 1] = 1.0, 0.0
    return scores


def _best_time(function, repeats: int) -> tuple[float, float, np.ndarray]:
    """Fastest wall time and fastest CPU time (s) of ``repeats`` calls, and the last result.

    CPU time is reported too because on a shared machine other processes stretch wall time;
    both implementations run on one thread, so on an idle machine the two agree.
    """
    best_wall = best_cpu = np.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_wall, best_cpu, result


def time_metrics(
    depth: int = SYNAPSE_DEPTH,
    size: int = SYNAPSE_SIZE,
    repeats: int = 1,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Score one synthetic case with medpy and with utils.metrics; time both.

    Args:
        depth: slices of the synthetic volume.
        size: in-plane size (size x size).
        repeats: timed runs of each implementation; the fastest is kept.
        seed: seed of the organ shapes.

    Returns:
        dict with ``shape``, ``medpy_s`` and ``ours_s`` (wall seconds, best of ``repeats``),
        ``speedup`` (medpy_s / ours_s), the same three for CPU time (``medpy_cpu_s``,
        ``ours_cpu_s``, ``cpu_speedup``), ``max_relative_difference``, ``agree`` (within 1e-9),
        and ``medpy`` / ``ours``: the (num_classes - 1, 2) arrays of (dice, hd95) per organ.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    prediction, reference = make_case(depth, size, seed)
    medpy_s, medpy_cpu_s, medpy_scores = _best_time(lambda: medpy_metrics(prediction, reference, NUM_CLASSES), repeats)
    ours_s, ours_cpu_s, our_scores = _best_time(lambda: metrics_for_classes(prediction, reference, NUM_CLASSES), repeats)
    difference = np.abs(our_scores - medpy_scores)
    relative = difference / np.maximum(np.abs(medpy_scores), np.finfo(np.float64).tiny)
    return {
        "shape": prediction.shape,
        "medpy_s": medpy_s,
        "ours_s": ours_s,
        "speedup": medpy_s / ours_s,
        "medpy_cpu_s": medpy_cpu_s,
        "ours_cpu_s": ours_cpu_s,
        "cpu_speedup": medpy_cpu_s / ours_cpu_s,
        "max_relative_difference": float(np.where(difference == 0, 0.0, relative).max()),
        "agree": bool(np.allclose(our_scores, medpy_scores, rtol=RELATIVE_TOLERANCE, atol=0.0)),
        "medpy": medpy_scores,
        "ours": our_scores,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=SYNAPSE_DEPTH, help="slices (default 148)")
    parser.add_argument("--size", type=int, default=SYNAPSE_SIZE, help="in-plane size (512)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each implementation, best kept")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="organ-shape seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = time_metrics(args.depth, args.size, args.repeats, args.seed)
    except ValueError as error:
        build_parser().error(str(error))
    names = {organ.label: organ.name for organ in ORGANS}
    print(machine_description())
    print(f"volume {'x'.join(map(str, result['shape']))}, {NUM_CLASSES - 1} organs")
    print(f"{'organ':<12} {'dice':>8} {'hd95':>8}")
    for label, (dice_value, hd95_value) in enumerate(result["ours"], start=1):
        print(f"{names[label]:<12} {dice_value:>8.4f} {hd95_value:>8.3f}")
    print(f"{'':<14}{'wall s':>10}{'cpu s':>10}")
    print(f"{'medpy':<14}{result['medpy_s']:>10.3f}{result['medpy_cpu_s']:>10.3f}")
    print(f"{'utils.metrics':<14}{result['ours_s']:>10.3f}{result['ours_cpu_s']:>10.3f}")
    print(f"{'ratio':<14}{result['speedup']:>9.1f}x{result['cpu_speedup']:>9.1f}x")
    print(f"max relative difference {result['max_relative_difference']:.2e}")
    if not result["agree"]:
        print(f"values differ from medpy by more than {RELATIVE_TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
