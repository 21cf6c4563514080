"""Size, cost, speed and memory of a segmentation network against a baseline timed in the same run.

Both networks are built through the ``--module`` loader with num_classes=9 (the network in
its default -- for DAE-Former the published -- configuration unless --model_kwargs says
otherwise; the baseline always in its defaults). For each it reports

- parameters: all of them, and those that receive a gradient in one forward/backward;
- GMACs of one forward pass on a (1, 1, img_size, img_size) slice (FlopCounterMode FLOPs / 2);
- seconds per slice of a forward pass (inference mode) and of a forward+backward pass
  (loss = logits.mean(), backward, gradients zeroed), median of --repeats after warm-up;
- the peak memory each of those steps adds on top of the built model and its input batch.

Every (network, batch size, step) is measured in its own fresh process. The markdown table
gives the network / baseline ratios, the way this project reports speed and memory.

    python -m bench.model                                   # DAE-Former vs U-Net, batches 1 and 8
    python -m bench.model --batch_sizes 1 --repeats 1       # a quick look
    python -m bench.model --device cuda --amp bf16 --batch_sizes 1 8 24 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BYTES_PER_MIB,
    DEVICES,
    cpu_name,
    logical_cpus,
    machine_description,
    markdown_table,
    measure_step,
    run_in_fresh_process,
)
from networks.blocks import MixFFN  # noqa: E402
from utils import UserError, build_network, load_network_class, network_arguments, to_device  # noqa: E402
from utils.devices import AMP_DTYPES, autocast, select_device  # noqa: E402
from utils.loader import DAEFORMER, parse_model_kwargs  # noqa: E402
from utils.profile import GIGA, forward_macs, train_mode  # noqa: E402

NUM_CLASSES = 9  # Synapse: background + 8 organs
DEFAULT_MODULE = DAEFORMER
DEFAULT_BASELINE = "networks.UNet.UNet"
NO_BASELINE = "none"
DEFAULT_IMG_SIZE = 224
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_REPEATS = 3
DEFAULT_THREADS = 2  # the project's reference CPU machine has 2 cores
# CUDA needs a few untimed steps for cuBLAS/cuDNN set-up and kernel selection; one is enough on a CPU.
DEFAULT_WARMUP = {"cpu": 1, "cuda": 3}
SEED = 0
FORWARD, FORWARD_BACKWARD = "forward", "forward_backward"
MODES = (FORWARD, FORWARD_BACKWARD)
MEGA = 1e6

# DAE-Former's published cost of one 224 x 224 slice, counted with fvcore (one unit per MAC).
PUBLISHED_MODULE = DEFAULT_MODULE
PUBLISHED_IMG_SIZE = 224
PUBLISHED_GMACS = 27.886
# Load average above the CPUs left free by --threads, plus this margin, marks CPU timings unreliable.
BUSY_CPU_MARGIN = 0.5
# fvcore's rough cost of a LayerNorm with affine parameters: 5 per input element.
FVCORE_LAYER_NORM_COST = 5


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass: ``total`` and per aten operator."""

    total: int
    by_operator: dict[str, int]

    @property
    def gmacs(self) -> float:
        return self.total / GIGA


@dataclass(frozen=True)
class ParameterCount:
    """Parameter elements: all, those with requires_grad, and those that got a gradient in one
    forward/backward; ``without_gradient`` names the trainable tensors that did not."""

    total: int
    trainable: int
    with_gradient: int
    without_gradient: tuple[str, ...]


def count_macs(model: nn.Module, example: torch.Tensor) -> MacCount:
    """Multiply-accumulates of ``model(example)`` in eval mode, counted by
    :func:`utils.profile.forward_macs` -- the count a run records and ``utils.compare`` shows.

    Args:
        model: any module.
        example: its input, e.g. a (1, 1, H, W) slice.
    """
    return MacCount(*forward_macs(model, example))


def count_parameters(model: nn.Module, example: torch.Tensor) -> ParameterCount:
    """Count parameter elements, running one training-mode forward/backward of
    ``logits.float().mean()`` on ``example`` to find the ones that receive a gradient.

    The model comes back as it was: gradients cleared, buffers (BatchNorm statistics) restored.
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.zero_grad(set_to_none=True)
    with train_mode(model, training=True):
        model(example).float().mean().backward()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    named = list(model.named_parameters())
    trainable = [(name, p) for name, p in named if p.requires_grad]
    missing = tuple(name for name, p in trainable if p.grad is None)
    count = ParameterCount(
        total=sum(p.numel() for _, p in named),
        trainable=sum(p.numel() for _, p in trainable),
        with_gradient=sum(p.numel() for _, p in trainable if p.grad is not None),
        without_gradient=missing,
    )
    model.zero_grad(set_to_none=True)
    return count


def fvcore_reference_terms(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs in the published fvcore figure of DAE-Former that :func:`count_macs` does not see.

    - ``layer_norm``: fvcore charges 5 per element entering a LayerNorm with affine parameters.
    - ``mixffn_fc1_again``: the reference Mix-FFN evaluates ``fc1(x)`` twice (once into the
      depth-wise convolution, once for the skip); networks.blocks.MixFFN evaluates it once.

    Softmax, GELU, the L2 normalisation and element-wise additions are counted by neither.
    """
    terms = {"layer_norm": 0, "mixffn_fc1_again": 0}

    def on_layer_norm(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        terms["layer_norm"] += FVCORE_LAYER_NORM_COST * inputs[0].numel()

    def on_fc1(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        terms["mixffn_fc1_again"] += inputs[0].numel() * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            handles.append(module.register_forward_hook(on_layer_norm))
        if isinstance(module, MixFFN):
            handles.append(module.fc1.register_forward_hook(on_fc1))
    try:
        with train_mode(model, training=False), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return terms


def make_network_step(
    device: torch.device,
    module: str,
    kwargs: dict[str, Any],
    batch: int,
    img_size: int,
    mode: str,
    amp: str,
) -> Callable[[], None]:
    """Step factory for :func:`bench.common.measure_step`: build the network and a random
    (batch, 1, img_size, img_size) batch on ``device``; the step is one inference-mode forward
    (``mode="forward"``, eval mode) or one forward + backward of ``logits.float().mean()`` with
    the gradients then released (``mode="forward_backward"``, train mode)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    model = to_device(build_network(module, kwargs), device)
    images = torch.randn(batch, 1, img_size, img_size, device=device)
    if mode == FORWARD:
        model.eval()

        def forward() -> None:
            with torch.inference_mode(), autocast(device, amp):
                model(images)

        return forward

    model.train()

    def forward_backward() -> None:
        with autocast(device, amp):
            loss = model(images).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return forward_backward


@dataclass(frozen=True)
class Network:
    """A network to benchmark: display name, ``--module`` path and constructor arguments."""

    name: str
    module: str
    kwargs: dict[str, Any]


def resolve_networks(module: str, baseline: str, img_size: int, model_kwargs: dict[str, Any]) -> list[Network]:
    """The network (with ``model_kwargs``) and, unless ``baseline`` is "none", the baseline in
    its defaults; both with num_classes=9 and img_size where the constructor takes it."""
    paths = [(module, model_kwargs)] + ([] if baseline.lower() == NO_BASELINE else [(baseline, {})])
    networks = []
    for index, (path, extra) in enumerate(paths):
        try:
            cls = load_network_class(path)
        except UserError as error:
            raise UserError(f"{error} (given as --baseline_module)" if index else str(error)) from None
        networks.append(Network(cls.__name__, path, network_arguments(cls, NUM_CLASSES, img_size=img_size, **extra)))
    if len(networks) == 2 and networks[0].name == networks[1].name:  # rows and ratios are keyed by name
        networks[1] = Network(f"{networks[1].name} (baseline)", networks[1].module, networks[1].kwargs)
    return networks


def benchmark(
    networks: Sequence[Network],
    device: torch.device,
    img_size: int = DEFAULT_IMG_SIZE,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    amp: str = "off",
    warmup: int = DEFAULT_WARMUP["cpu"],
    repeats: int = DEFAULT_REPEATS,
    threads: int = DEFAULT_THREADS,
    published: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Count and time every network; each (network, batch, step) runs in a fresh process.

    Parameters, MACs and (with ``published``, for the first network) the fvcore reference
    terms are computed on the CPU in this process. A measurement that runs out of memory or
    whose process dies is recorded with an ``error`` instead of numbers.

    Returns:
        A JSON-ready dict: ``settings``, ``networks`` (per network: module, kwargs, parameters,
        macs, gmacs), ``measurements`` (network, batch, mode, seconds, median_s, per_slice_s,
        peak_bytes, peak_mib, memory_kind or error), ``ratios`` (first network / second, per
        batch and mode: time and memory) and ``published`` (or None).
    """
    report = progress or (lambda message: None)
    settings = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": threads,
        "logical_cpus": logical_cpus(),
        "machine": machine_description(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "amp": amp,
        "img_size": img_size,
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
    }
    example = torch.zeros(1, 1, img_size, img_size)
    summaries = []
    published_entry = None
    for index, network in enumerate(networks):
        report(f"counting {network.name}")
        torch.manual_seed(SEED)
        model = build_network(network.module, network.kwargs)
        parameters = count_parameters(model, example)
        macs = count_macs(model, example)
        summaries.append(
            {
                "name": network.name,
                "module": network.module,
                "kwargs": network.kwargs,
                "parameters": asdict(parameters),
                "macs": asdict(macs),
                "gmacs": macs.gmacs,
            }
        )
        if published and index == 0:
            terms = fvcore_reference_terms(model, example)
            published_entry = {
                "gmacs": PUBLISHED_GMACS,
                "counter": "fvcore",
                "ours_gmacs": macs.gmacs,
                "terms_gmacs": {name: value / GIGA for name, value in terms.items()},
                "reconstructed_gmacs": (macs.total + sum(terms.values())) / GIGA,
            }
        del model

    measurements = []
    for batch in batch_sizes:
        for mode in MODES:
            for network in networks:
                report(f"timing {network.name}, batch {batch}, {mode.replace('_', '+')}")
                entry: dict[str, Any] = {"network": network.name, "batch": batch, "mode": mode}
                step_kwargs = {
                    "module": network.module,
                    "kwargs": network.kwargs,
                    "batch": batch,
                    "img_size": img_size,
                    "mode": mode,
                    "amp": amp,
                }
                try:
                    result = run_in_fresh_process(
                        measure_step, make_network_step, step_kwargs, str(device), threads, warmup, repeats, SEED
                    )
                except torch.OutOfMemoryError:
                    entry["error"] = "out of memory"
                except BrokenProcessPool:
                    entry["error"] = "process died (out of memory?)"
                else:
                    entry.update(asdict(result))
                    entry["seconds"] = list(result.seconds)
                    entry["per_slice_s"] = result.median_s / batch
                    entry["peak_mib"] = result.peak_bytes / BYTES_PER_MIB
                measurements.append(entry)

    return {
        "settings": settings,
        "networks": summaries,
        "measurements": measurements,
        "ratios": baseline_ratios(networks, measurements),
        "published": published_entry,
    }


def baseline_ratios(networks: Sequence[Network], measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (batch, mode): ``time`` = median step time of ``networks[0]`` / that of ``networks[1]``,
    ``memory`` = their peak-memory ratio (None when the baseline's peak is 0); failed cells are
    skipped, and with fewer than two networks there are no ratios."""
    if len(networks) < 2:
        return []
    found = {(m["network"], m["batch"], m["mode"]): m for m in measurements if "error" not in m}
    ratios = []
    for key in sorted({(m["batch"], m["mode"]) for m in measurements}):
        top, bottom = (found.get((n.name, *key)) for n in networks[:2])
        if top is None or bottom is None:
            continue
        memory = top["peak_bytes"] / bottom["peak_bytes"] if bottom["peak_bytes"] else None
        ratios.append({"batch": key[0], "mode": key[1], "time": top["median_s"] / bottom["median_s"], "memory": memory})
    return ratios


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_report(result: dict[str, Any]) -> str:
    """The human-readable report: settings, two markdown tables and what the numbers mean."""
    settings = result["settings"]
    networks = result["networks"]
    threads = ""
    if settings["device"] == "cpu":
        threads = f", threads {settings['threads']} of {settings['logical_cpus']} CPUs"
    lines = [
        settings["machine"],
        f"device: {settings['device']} ({settings['device_name']}{threads}), amp {settings['amp']}, "
        f"torch {settings['torch']}, slices {settings['img_size']}x{settings['img_size']}, "
        f"{settings['warmup']} warm-up + median of {settings['repeats']} timed steps",
        "",
    ]
    rows = [
        [
            net["name"],
            f"{net['parameters']['total'] / MEGA:.2f} M",
            f"{net['parameters']['with_gradient'] / MEGA:.2f} M",
            f"{net['gmacs']:.3f}",
        ]
        for net in networks
    ]
    if len(networks) >= 2:
        top, bottom = networks[:2]
        rows.append(
            [
                f"{top['name']} / {bottom['name']}",
                _ratio_text(top["parameters"]["total"] / bottom["parameters"]["total"]),
                "",
                _ratio_text(top["macs"]["total"] / bottom["macs"]["total"] if bottom["macs"]["total"] else None),
            ]
        )
    lines.append(markdown_table(["network", "parameters", "with gradient", "GMACs / slice"], rows))
    lines.append("")

    cells = {(m["network"], m["batch"], m["mode"]): m for m in result["measurements"]}
    ratios = {(r["batch"], r["mode"]): r for r in result["ratios"]}
    rows = []
    for batch in settings["batch_sizes"]:
        for net in networks:
            row: list[str] = [net["name"], str(batch)]
            times, peaks = [], []
            for mode in MODES:
                entry = cells[(net["name"], batch, mode)]
                times.append(entry.get("error") or f"{entry['per_slice_s']:.3g}")
                peaks.append("" if "error" in entry else f"{entry['peak_mib']:.0f}")
            rows.append(row + times + peaks)
        if len(networks) >= 2:
            row = [f"{networks[0]['name']} / {networks[1]['name']}", str(batch)]
            pair = [ratios.get((batch, mode)) for mode in MODES]
            row += [_ratio_text(r["time"]) if r else "n/a" for r in pair]
            row += [_ratio_text(r["memory"]) if r else "n/a" for r in pair]
            rows.append(row)
    headers = ["network", "batch", "forward s / slice", "fwd+bwd s / slice", "forward peak MiB", "fwd+bwd peak MiB"]
    lines.append(markdown_table(headers, rows))
    lines.append("")

    kinds = sorted({m["memory_kind"] for m in result["measurements"] if "memory_kind" in m})
    lines += [
        f"GMACs: multiply-accumulates of one forward pass on a 1x1x{settings['img_size']}x"
        f"{settings['img_size']} slice = FlopCounterMode FLOPs / 2; it counts convolutions and matrix "
        "products (mm, addmm, bmm), not softmax, normalisation, activations or element-wise ops, nor biases.",
        "with gradient: parameter elements that receive a gradient in one forward/backward of logits.mean().",
        "time: seconds per slice = median step time / batch; forward runs in inference mode (eval), "
        "fwd+bwd is forward, logits.mean(), backward and zeroing the gradients (train mode).",
        f"memory: peak memory a step adds on top of the built model and its input batch ({', '.join(kinds) or 'n/a'}), "
        "warm-up included; for fwd+bwd it includes the parameter gradients. Each cell ran in a fresh process.",
    ]
    published = result["published"]
    if published is not None:
        terms = published["terms_gmacs"]
        lines.append(
            f"published DAE-Former figure: {published['gmacs']:.3f} GMACs (fvcore); "
            f"ours {published['ours_gmacs']:.3f}. "
            f"# difference: the reference Mix-FFN evaluates fc1 twice (+{terms['mixffn_fc1_again']:.3f}) and fvcore "
            f"charges 5 per LayerNorm element (+{terms['layer_norm']:.3f}): "
            f"{published['ours_gmacs']:.3f} + {terms['mixffn_fc1_again']:.3f} + {terms['layer_norm']:.3f} "
            f"= {published['reconstructed_gmacs']:.3f}"
        )
    load, cpus = settings["load_average"], settings["logical_cpus"]
    if settings["device"] == "cpu" and load is not None and load > cpus - settings["threads"] + BUSY_CPU_MARGIN:
        advice = "; threads that share cores with other work wait on each other: try --threads 1"
        lines.append(
            f"warning: the CPU was busy before the run (1-minute load average {load:.1f} on {cpus} CPUs), so these "
            f"timings are unreliable{advice if settings['threads'] > 1 else ''}"
        )
    for net in networks:
        missing = net["parameters"]["without_gradient"]
        if missing:
            lines.append(f"{net['name']}: {len(missing)} trainable tensors got no gradient, e.g. {', '.join(missing[:3])}")
    return "\n".join(lines)


def _integer_at_least(flag: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {value}")
        return value

    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        return parse_model_kwargs(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=DEFAULT_MODULE, help=f"network to measure (default {DEFAULT_MODULE})")
    parser.add_argument(
        "--model_kwargs", type=_json_object, default={}, help="JSON constructor arguments of --module (default: none)"
    )
    parser.add_argument(
        "--baseline_module",
        default=DEFAULT_BASELINE,
        help=f"baseline measured in the same run, in its defaults, or {NO_BASELINE!r} (default {DEFAULT_BASELINE})",
    )
    parser.add_argument(
        "--img_size", type=_integer_at_least("--img_size"), default=DEFAULT_IMG_SIZE, help="slice size (default 224)"
    )
    parser.add_argument(
        "--batch_sizes",
        type=_integer_at_least("--batch_sizes"),
        nargs="+",
        default=list(DEFAULT_BATCH_SIZES),
        help="batch sizes to time (default 1 8)",
    )
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off", help="autocast dtype of the timed steps (default off)")
    parser.add_argument("--repeats", type=_integer_at_least("--repeats"), default=DEFAULT_REPEATS, help="timed steps (default 3)")
    parser.add_argument(
        "--warmup",
        type=_integer_at_least("--warmup", minimum=0),
        default=None,
        help="untimed steps first (default 1 on cpu, 3 on cuda)",
    )
    parser.add_argument("--threads", type=_integer_at_least("--threads"), default=DEFAULT_THREADS, help="CPU threads (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = select_device(args.device or "auto")
        networks = resolve_networks(args.module, args.baseline_module, args.img_size, args.model_kwargs)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        parser.error(str(error))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    published = args.module == PUBLISHED_MODULE and args.img_size == PUBLISHED_IMG_SIZE and not args.model_kwargs
    warmup = DEFAULT_WARMUP[device.type] if args.warmup is None else args.warmup
    try:
        result = benchmark(
            networks,
            device,
            img_size=args.img_size,
            batch_sizes=list(dict.fromkeys(args.batch_sizes)),
            amp=args.amp,
            warmup=warmup,
            repeats=args.repeats,
            threads=args.threads,
            published=published,
            progress=lambda message: print(f"... {message}", file=sys.stderr, flush=True),
        )
    except ValueError as error:  # the network contract: a size it cannot take is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as error:
            print(f"error: --json {args.json}: cannot write it ({error}); pick a writable path", file=sys.stderr)
            return 2
    failed = [m for m in result["measurements"] if "error" in m]
    if failed:
        print(f"{len(failed)} measurement(s) failed; see the table", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
