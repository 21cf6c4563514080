"""Slices per second of the training input pipeline, per DataLoader worker: ours against the
published order, in the same run.

    python -m bench.data_speed                       # 40 phantom slices 512 -> 224, every --augment
    python -m bench.data_speed --slices 10 --augment daeformer

Writes ``--slices`` 512x512 phantom slices (``datasets.synthetic.synapse``) as .npz into a
temporary folder, then reads every one through ``NpzSlices`` -- load, check, resize,
augment, normalise, exactly what a DataLoader worker does -- in one process with one torch
thread, so the figure is per worker and comparable across machines:

- published: ``augment_first=True``, augment at 512, then scipy ``zoom`` to 224 (the reference);
- ours: resize to 224 with the torch zoom, then augment there (the default).

Printed per augmentation: slices / s of each (best of ``--repeats`` passes; the first item of
each pass set is a warm-up) and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_name, machine_description, markdown_table  # noqa: E402
from datasets.augment import AUGMENTATIONS  # noqa: E402
from datasets.synapse import NpzSlices  # noqa: E402
from datasets.synthetic.synapse import make_case  # noqa: E402

NUM_CLASSES = 9
DEFAULT_SLICES = 40
DEFAULT_SIZE = 512  # Synapse's stored slice size
DEFAULT_IMG_SIZE = 224
DEFAULT_SEED = 0
WORKER_THREADS = 1  # a DataLoader worker runs torch with one thread


def write_slices(folder: Path, count: int, size: int, seed: int) -> Path:
    """``count`` phantom slices ``case0001_sliceNNN.npz`` (image float32, label float32 as the
    common Synapse copies) in ``folder``, and their list file; returns the list file."""
    image, label = make_case(np.random.default_rng(seed), size, count)
    names = [f"case0001_slice{k:03d}" for k in range(count)]
    for name, section, labels in zip(names, image, label.astype(np.float32)):
        np.savez(folder / f"{name}.npz", image=section, label=labels)
    list_file = folder / "train.txt"
    list_file.write_text("".join(f"{name}\n" for name in names))
    return list_file


def time_pass(dataset: NpzSlices) -> tuple[int, float]:
    """Read every item once after one warm-up item; (items read, seconds)."""
    dataset[0]
    start = time.perf_counter()
    for index in range(len(dataset)):
        item = dataset[index]
    seconds = time.perf_counter() - start
    if item["image"].shape[1:] != dataset.img_size:
        raise RuntimeError(f"pipeline returned {tuple(item['image'].shape)}, not {dataset.img_size}")
    return len(dataset), seconds


def run(slices: int, size: int, img_size: int, augmentations: Sequence[str], repeats: int, seed: int) -> list[dict]:
    """Both pipelines per augmentation; one dict per augmentation with ``slices`` (read per
    pass) and the best ``published_s`` / ``ours_s`` seconds per pass."""
    for flag, value in (("--slices", slices), ("--size", size), ("--img_size", img_size), ("--repeats", repeats)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    unknown = [name for name in augmentations if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"--augment {unknown[0]!r} is unknown; choose from {', '.join(AUGMENTATIONS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="data_speed_") as folder:
        list_file = write_slices(Path(folder), slices, size, seed)
        for name in augmentations:
            row = {"augment": name}
            for key, augment_first in (("published", True), ("ours", False)):
                dataset = NpzSlices(
                    folder, list_file, NUM_CLASSES, (img_size, img_size), augment=name, augment_first=augment_first
                )
                torch.manual_seed(seed)
                passes = [time_pass(dataset) for _ in range(repeats)]
                row["slices"] = passes[0][0]
                row[f"{key}_s"] = min(seconds for _, seconds in passes)
            rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES, help="slices per pass (40)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="stored slice size (512)")
    parser.add_argument("--img_size", type=int, default=DEFAULT_IMG_SIZE, help="network size")
    parser.add_argument(
        "--augment",
        nargs="+",
        default=list(AUGMENTATIONS),
        help=f"augmentations to time (default all: {' '.join(AUGMENTATIONS)})",
    )
    parser.add_argument("--repeats", type=int, default=2, help="passes per pipeline (best of)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="phantom and draws seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(WORKER_THREADS)
    try:
        rows = run(args.slices, args.size, args.img_size, args.augment, args.repeats, args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print(machine_description())
    print(
        f"{args.slices} phantom slices {args.size} -> {args.img_size}, one process, "
        f"{WORKER_THREADS} torch thread, {cpu_name()}; best of {args.repeats}"
    )
    print(
        markdown_table(
            ["--augment", "published slices / s", "ours slices / s", "speed-up"],
            [
                [
                    row["augment"],
                    f"{row['slices'] / row['published_s']:.1f}",
                    f"{row['slices'] / row['ours_s']:.1f}",
                    f"{row['published_s'] / row['ours_s']:.2f}x",
                ]
                for row in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
