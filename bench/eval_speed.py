"""Evaluation of one Synapse-sized volume: the naive path against test.py's, in the same run.

    python -m bench.eval_speed                     # 148 x 512 x 512, DAE-Former at 224, CPU, 2 threads
    python -m bench.eval_speed --depth 30          # a quick look

Naive = the published code's loop: one slice at a time through the network, then medpy's dc and
hd95 per organ. Ours = test.py: slices in batches under inference_mode, then utils.metrics.
Stages: inference (the two label volumes are compared; they differ only where float32
rounding decides a near-tie between two classes), metrics (on the realistic
synthetic prediction/reference pair of bench.metric_speed; values checked equal), end to end =
their sum. Inference uses an untrained network: its speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from bench.common import cpu_name, machine_description, markdown_table
from bench.metric_speed import SYNAPSE_DEPTH, SYNAPSE_SIZE, make_case, time_metrics
from datasets.preprocess import preprocess_slice, resize_label
from utils import build_network, load_network_class, network_arguments, to_device
from utils.inference import predict_volume
from utils.loader import DAEFORMER

NUM_CLASSES = 9


@torch.inference_mode()
def predict_one_slice_at_a_time(model: torch.nn.Module, image: np.ndarray, img_size: int) -> np.ndarray:
    """The published loop: each slice resized, normalised, predicted and resized back alone."""
    prediction = np.zeros(image.shape, dtype=np.uint8)
    for z, section in enumerate(image):
        x = torch.from_numpy(preprocess_slice(section, (img_size, img_size)))[None, None]
        prediction[z] = resize_label(model(x).argmax(dim=1)[0].to(torch.uint8).numpy(), section.shape)
    return prediction


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", default=DAEFORMER)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16, help="slices per forward pass on our path")
    parser.add_argument("--depth", type=int, default=SYNAPSE_DEPTH)
    parser.add_argument("--size", type=int, default=SYNAPSE_SIZE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = network_arguments(load_network_class(args.module), NUM_CLASSES, args.img_size)
    model = to_device(build_network(args.module, kwargs), "cpu").eval()  # as test.py places it
    _, reference = make_case(args.depth, args.size)
    image = np.clip(reference / NUM_CLASSES + np.random.default_rng(0).normal(0, 0.05, reference.shape), 0, 1).astype(np.float32)

    naive_inference_s, naive = timed(lambda: predict_one_slice_at_a_time(model, image, args.img_size))
    ours_inference_s, ours = timed(lambda: predict_volume(model, image, (args.img_size, args.img_size), args.batch_size))
    differing = int((naive != ours).sum())
    metrics = time_metrics(args.depth, args.size)

    stages = [
        ("inference", naive_inference_s, ours_inference_s),
        ("metrics (8 organs)", metrics["medpy_s"], metrics["ours_s"]),
        ("end to end", naive_inference_s + metrics["medpy_s"], ours_inference_s + metrics["ours_s"]),
    ]
    print(machine_description())
    print(
        f"one {args.depth}x{args.size}x{args.size} volume, {args.module} at {args.img_size}, "
        f"{cpu_name()}, {args.threads} threads; naive = 1 slice at a time + medpy, ours = batch {args.batch_size} + utils.metrics"
    )
    print(
        markdown_table(
            ["stage", "naive s", "ours s", "speed-up"], [[name, f"{a:.2f}", f"{b:.2f}", f"{a / b:.1f}x"] for name, a, b in stages]
        )
    )
    # Batched float32 products round differently from single-slice ones (~1e-6 in the logits),
    # which can flip the argmax where two classes are tied to that precision.
    print(
        f"voxels labelled differently by the two paths: {differing} of {naive.size}; "
        f"metric values equal to 1e-9: {metrics['agree']}"
    )
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(
                {
                    "args": vars(args),
                    "differing_voxels": differing,
                    "metrics_agree": metrics["agree"],
                    "stages": [{"stage": n, "naive_s": a, "ours_s": b} for n, a, b in stages],
                },
                stream,
                indent=2,
            )
    return 0 if metrics["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
