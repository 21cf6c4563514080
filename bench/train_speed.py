"""Training-step throughput: slices per second and peak memory of one optimisation step.

    python -m bench.train_speed                                   # DAE-Former, 224x224, batch 8, CPU: fp32 and bf16
    python -m bench.train_speed --device cuda --batch_size 24 --variants fp32 bf16 bf16+compile
    python -m bench.train_speed --module networks.UNet.UNet --model_kwargs '{"base_channels": 8}' \
        --img_size 128 --variants fp32+nchw fp32                 # the demo's U-Net: what channels_last gives
    python -m bench.train_speed --batch_size 24 --variants fp32+glibc fp32   # what reusing freed memory gives

One step is ``utils.training.train_step``, the function train.py calls each iteration: forward
(under autocast for an AMP variant), 0.4 * CE + 0.6 * Dice on random labels, backward (through
a GradScaler for fp16), SGD step, poly schedule step. Every variant runs in a fresh process (its own memory peak) and is
reported as a ratio against the first variant, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.common import (
    cpu_name,
    machine_description,
    markdown_table,
    measure_step,
    run_in_fresh_process,
)
from utils import build_network, load_network_class, network_arguments, to_device
from utils.devices import keep_freed_memory, select_device
from utils.loader import DAEFORMER, parse_model_kwargs
from utils.losses import CEDiceLoss
from utils.training import build_optimizer, build_scheduler, train_step

# precision, then optional "+compile" (torch.compile), "+ckpt" (activation checkpointing,
# train.py's --use-checkpoint), "+nchw" (the network placed with a plain .to(device), without
# the channels_last layout utils.loader.to_device gives an opted-in network on a CPU) and
# "+glibc" (host memory as glibc hands it out, without the reuse the scripts turn on with
# utils.devices.keep_freed_memory)
VARIANTS = (
    "fp32",
    "bf16",
    "fp16",
    "fp32+compile",
    "bf16+compile",
    "fp32+ckpt",
    "bf16+ckpt",
    "bf16+compile+ckpt",
    "fp32+nchw",
    "fp32+glibc",
    "bf16+glibc",
)
NUM_CLASSES = 9


def make_train_step(
    device: torch.device, module: str, kwargs: dict[str, Any], batch: int, img_size: int, variant: str
) -> Callable[[], None]:
    """Step factory for bench.common.measure_step: ``utils.training.train_step``, the very
    function train.py runs each iteration, on a fixed random batch."""
    amp, *options = variant.split("+")
    amp = "off" if amp == "fp32" else amp
    if "glibc" not in options:
        keep_freed_memory()  # as train.py does
    compiled = "compile" in options
    model = build_network(module, kwargs)
    model = (model.to(device) if "nchw" in options else to_device(model, device)).train()
    if "ckpt" in options:
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, lr=0.01)
    scheduler = build_scheduler(optimizer, total_iterations=10**6)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    criterion = CEDiceLoss()
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch, 1, img_size, img_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch, img_size, img_size), device=device)

    def step() -> None:
        train_step(forward, [(images, labels)], criterion, optimizer, scheduler, scaler, amp)

    return step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", default=DAEFORMER)
    parser.add_argument("--model_kwargs", default="{}", help="constructor arguments as JSON")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "bf16"],
        choices=VARIANTS,
        help="precision / compile variants; the first is the baseline of the ratios",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compile happens here)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--json", help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = select_device(args.device or "auto")
        kwargs = network_arguments(
            load_network_class(args.module), NUM_CLASSES, args.img_size, **parse_model_kwargs(args.model_kwargs)
        )
    except ValueError as error:
        print(f"bench.train_speed: error: {error}", file=sys.stderr)
        return 2
    rows, results = [], []
    for variant in args.variants:
        step_kwargs = dict(module=args.module, kwargs=kwargs, batch=args.batch_size, img_size=args.img_size, variant=variant)
        measured = run_in_fresh_process(
            measure_step, make_train_step, step_kwargs, str(device), args.threads, args.warmup, args.repeats
        )
        results.append(
            {
                "variant": variant,
                "seconds": measured.seconds,
                "median_s": measured.median_s,
                "slices_per_s": args.batch_size / measured.median_s,
                "peak_mib": measured.peak_bytes / 2**20,
                "memory_kind": measured.memory_kind,
            }
        )
    base = results[0]
    for result in results:
        rows.append(
            [
                result["variant"],
                f"{result['median_s']:.3f}",
                f"{result['slices_per_s']:.2f}",
                f"{base['median_s'] / result['median_s']:.2f}x",
                f"{result['peak_mib']:.0f}",
                f"{result['peak_mib'] / base['peak_mib']:.2f}x",
            ]
        )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {args.threads} threads"
    print(machine_description())
    print(
        f"{args.module} training step, batch {args.batch_size}, {args.img_size}x{args.img_size}, {where}; "
        f"median of {args.repeats}; ratios against {base['variant']} in this run; memory: {base['memory_kind']}"
    )
    print(markdown_table(["variant", "s / step", "slices / s", "speed-up", "peak MiB", "memory ratio"], rows))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(
                {"args": vars(args), "device": where, "machine": machine_description(), "results": results}, stream, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
