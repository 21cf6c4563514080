"""The evaluation's resizes alone: scipy one slice at a time against the batched torch resizes.

    python -m bench.resize_speed                      # 100 x 512 x 512 phantom at 224, CPU, 2 threads
    python -m bench.resize_speed --depth 20 --repeats 1

Per slice the protocol resizes the image in (``zoom`` order 3), runs the network, and resizes
the argmax back (``zoom`` order 0). Here the network is a fixed per-pixel projection to 9
class scores -- it costs next to nothing, so the figures are the resizes' -- and its input is
a phantom CT volume (``datasets.synthetic.synapse``), so the labels are realistic enough to
show near-ties. Both paths run in the same process on the same volume:

- scipy: ``preprocess_slice`` -> network -> ``resize_label``, one slice at a time (the
  reference, and the published loop);
- the evaluation itself, ``utils.inference.predict_volume``: the network at ``--batch_size``,
  the resizes in chunks of max(``--batch_size``, 32) slices, float64 products (scipy's own
  precision);
- torch with float32 products (an option not taken): ``preprocess_batch``-style resize ->
  network -> ``resize_labels`` on ``--batch_size`` slices at a time, resizes included (so at
  ``--batch_size 1`` it differs from the row above in chunking as well as in precision).

Printed: seconds per volume (median of ``--repeats`` after one warm-up that also builds the
cached operators), the ratio to scipy, and how many voxels' labels differ from scipy's.

    python -m bench.resize_speed --subnormals          # the operators' products, subnormals kept vs flushed

``--subnormals`` checks the machine at hand for the cost of subnormal operands: for every
precomputed operator the scripts build (the order-3 matrices of 512 -> 224 and 224 -> 512 in
float32 and float64, on the CPU and on the GPU when there is one) it times the product the
resize computes, ``(A @ x) @ A.T`` on ``--depth`` phantom slices, with the operator as cached
(no subnormal entry, ``datasets.resize.flush_subnormals``) and with the same matrix rounded to
its dtype with its subnormal entries kept, alternating the two ``--repeats`` times. Printed per
operator: its subnormal count before the flush, both medians, their ratio (kept / flushed; about
1 on a CPU that handles subnormal operands at full speed, 10 or more on one that takes a
microcode assist for each), and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_name, logical_cpus, machine_description, markdown_table, time_step  # noqa: E402
from datasets.common import IMAGE_MEAN, IMAGE_STD  # noqa: E402
from datasets.preprocess import preprocess_slice, resize_label, resize_labels  # noqa: E402
from datasets.resize import spline_operator, spline_zoom_matrix, subnormal_count, zoom_images  # noqa: E402
from datasets.synthetic.synapse import make_case  # noqa: E402
from utils.inference import predict_volume  # noqa: E402

NUM_CLASSES = 9
DEFAULT_DEPTH = 100  # slices; Synapse test volumes hold 85-198
DEFAULT_SIZE = 512
DEFAULT_IMG_SIZE = 224
DEFAULT_BATCH = 16  # the evaluation engine's GPU batch; a 100-slice float64 batch outgrows the caches
DEFAULT_SEED = 0
# The resizes the scripts run: Synapse's stored 512x512 slices to the network's 224 and back.
OPERATOR_PAIRS = ((512, 224), (224, 512))
OPERATOR_DTYPES = (torch.float32, torch.float64)


class FixedNetwork(torch.nn.Module):
    """Class scores ``weight[c] * x + bias[c]`` with seeded random weights: (B, 1, h, w) ->
    (B, C, h, w). Stands in for the network at 9 multiply-adds per pixel; its argmax is a
    piecewise-constant function of intensity, so every class boundary is a potential near-tie."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(1, NUM_CLASSES, 1, 1, generator=generator))
        self.register_buffer("bias", torch.randn(1, NUM_CLASSES, 1, 1, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


@torch.inference_mode()
def scipy_path(model: torch.nn.Module, volume: np.ndarray, img_size: int) -> np.ndarray:
    """The reference: (D, H, W) float32 -> (D, H, W) int64 labels, one slice at a time."""
    labels = np.empty(volume.shape, dtype=np.int64)
    for z, section in enumerate(volume):
        x = torch.from_numpy(preprocess_slice(section, (img_size, img_size)))[None, None]
        labels[z] = resize_label(model(x).argmax(dim=1)[0].numpy(), section.shape)
    return labels


@torch.inference_mode()
def torch_path(
    model: torch.nn.Module, volume: np.ndarray, img_size: int, batch_size: int, compute_dtype: torch.dtype
) -> np.ndarray:
    """The batched path with the zoom products in ``compute_dtype``: (D, H, W) float32 -> (D, H, W)
    int64 labels, ``batch_size`` at a time -- float32 shows what the cheaper arithmetic would
    change; the evaluation itself (``predict_volume``, timed beside it) keeps float64."""
    stack = torch.from_numpy(volume)
    labels = torch.empty(volume.shape, dtype=torch.int64)
    for start in range(0, len(stack), batch_size):
        chunk = stack[start : start + batch_size]
        x = (zoom_images(chunk, (img_size, img_size), compute_dtype) - IMAGE_MEAN) / IMAGE_STD
        prediction = model(x.unsqueeze(1)).argmax(dim=1)
        labels[start : start + batch_size] = resize_labels(prediction, volume.shape[1:])
    return labels.numpy()


def median_seconds(function: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """One untimed warm-up, then the median of ``repeats`` timed calls, and the last result."""
    result = function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def operator_product_seconds(
    operator: torch.Tensor, slices: torch.Tensor, device: torch.device, repeats: int, other: torch.Tensor
) -> tuple[list[float], list[float], float]:
    """``(A @ x) @ A.T`` timed with ``operator`` and with ``other`` (same shape and dtype),
    alternating, one untimed warm-up each: (seconds with operator, seconds with other, largest
    absolute difference of the two products)."""
    first, second = [], []
    for _ in range(repeats):
        for matrix, seconds in ((operator, first), (other, second)):
            seconds += time_step(lambda m=matrix: (m @ slices) @ m.T, device, warmup=1, repeats=1)
    difference = float(((operator @ slices) @ operator.T - (other @ slices) @ other.T).abs().max())
    return first, second, difference


def subnormal_rows(depth: int, repeats: int, seed: int, devices: Sequence[str]) -> list[dict]:
    """One dict per (device, size pair, dtype): the cached operator's product against the same
    matrix with its subnormal entries kept (see the module docstring)."""
    rows = []
    for name in devices:
        device = torch.device(name)
        for n_in, n_out in OPERATOR_PAIRS:
            volume, _ = make_case(np.random.default_rng(seed), n_in, depth)
            for dtype in OPERATOR_DTYPES:
                flushed = spline_operator(n_in, n_out, device, dtype)
                # The matrix as it was before the flush: rounded to dtype, subnormals and all.
                kept = torch.from_numpy(spline_zoom_matrix(n_in, n_out)).to(dtype=dtype).to(device)
                slices = torch.from_numpy(volume).to(device=device, dtype=dtype)
                kept_s, flushed_s, difference = operator_product_seconds(kept, slices, device, repeats, flushed)
                rows.append(
                    {
                        "device": name,
                        "operator": f"{n_in} -> {n_out}",
                        "dtype": str(dtype).removeprefix("torch."),
                        "subnormals": subnormal_count(kept),
                        "kept_s": statistics.median(kept_s),
                        "flushed_s": statistics.median(flushed_s),
                        "max_difference": difference,
                    }
                )
    return rows


def print_subnormal_table(rows: Sequence[dict], depth: int, repeats: int) -> None:
    print(f"(A @ x) @ A.T on {depth} phantom slices, median of {repeats} alternating runs of each")
    print(
        markdown_table(
            ["operator", "device", "dtype", "subnormal entries", "kept s", "flushed s", "kept / flushed", "max |difference|"],
            [
                [
                    row["operator"],
                    row["device"],
                    row["dtype"],
                    row["subnormals"],
                    f"{row['kept_s']:.4f}",
                    f"{row['flushed_s']:.4f}",
                    f"{row['kept_s'] / row['flushed_s']:.2f}x",
                    f"{row['max_difference']:.1e}",
                ]
                for row in rows
            ],
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="slices (default 100)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="in-plane size (512)")
    parser.add_argument("--img_size", type=int, default=DEFAULT_IMG_SIZE, help="network size")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH, help="slices per batch on the torch path (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (median)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="phantom and weights seed")
    parser.add_argument(
        "--subnormals",
        action="store_true",
        help="instead: time each precomputed resize operator's product with its subnormal entries kept and flushed",
    )
    return parser


def run(depth: int, size: int, img_size: int, batch_size: int, repeats: int, seed: int) -> list[dict]:
    """Time both paths on one phantom volume; one dict per row of the printed table."""
    for flag, value in (
        ("--depth", depth),
        ("--size", size),
        ("--img_size", img_size),
        ("--batch_size", batch_size),
        ("--repeats", repeats),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    volume, _ = make_case(np.random.default_rng(seed), size, depth)
    model = FixedNetwork(seed).eval()
    scipy_s, reference = median_seconds(lambda: scipy_path(model, volume, img_size), repeats)
    rows = [{"path": "scipy, one slice at a time", "seconds": scipy_s, "differing": 0}]
    seconds, labels = median_seconds(lambda: predict_volume(model, volume, (img_size, img_size), batch_size, "cpu"), repeats)
    rows.append(
        {
            "path": f"utils.inference.predict_volume (the evaluation), batch {batch_size}, float64 products",
            "seconds": seconds,
            "differing": int((labels != reference).sum()),
        }
    )
    seconds, labels = median_seconds(lambda: torch_path(model, volume, img_size, batch_size, torch.float32), repeats)
    rows.append(
        {
            "path": f"torch, batch {batch_size}, float32 products (not used: an option)",
            "seconds": seconds,
            "differing": int((labels != reference).sum()),
        }
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.subnormals:
        if args.depth < 1 or args.repeats < 1:
            raise SystemExit(f"--depth and --repeats must be >= 1, got {args.depth} and {args.repeats}")
        rows = subnormal_rows(args.depth, args.repeats, args.seed, ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
        print(machine_description())
        print_subnormal_table(rows, args.depth, args.repeats)
        return 0
    try:
        rows = run(args.depth, args.size, args.img_size, args.batch_size, args.repeats, args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print(machine_description())
    baseline = rows[0]["seconds"]
    voxels = args.depth * args.size * args.size
    print(
        f"{args.depth} x {args.size} x {args.size} phantom -> {args.img_size} -> back; "
        f"{cpu_name()}, {args.threads} torch threads of {logical_cpus()} CPUs; "
        f"median of {args.repeats}"
    )
    print(
        markdown_table(
            ["path", "s / volume", "speed-up", f"labels differing (of {voxels})"],
            [[row["path"], f"{row['seconds']:.3f}", f"{baseline / row['seconds']:.2f}x", row["differing"]] for row in rows],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
