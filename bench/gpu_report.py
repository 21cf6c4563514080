"""One prepared report of the project's pace on a GPU: a person with a GPU runs it once.

    python -m bench.gpu_report                           # one CUDA GPU, the published sizes, about 5 minutes
    python -m bench.gpu_report --device cpu --small      # a minute on a CPU: the test suite runs this

No downloads: it writes a phantom data set in the Synapse layout (512x512 slices, 12 test
volumes of 85-198 slices) into a temporary folder, then measures, in this order:

1. ``utils.training.train_step`` (what train.py runs each iteration) for DAE-Former at 224,
   batch 24: fp32, bf16, bf16 + torch.compile; seconds per step and peak memory, each in a
   fresh process (``bench.train_speed``);
2. ``train.py`` itself on the 512x512 slices with its real loader and default augmentation,
   ``--amp bf16 --compile``, for ``--iterations`` iterations: seconds per iteration (epochs after
   the first, which holds the compilation), its ratio to the step of item 1, and the projected
   time of the published 400-epoch recipe (37,200 iterations);
3. ``test.py`` on the 12 volumes (the checkpoint of item 2; bf16), wall time end to end;
4. the same evaluation inside ``train.py`` (its periodic evaluation of the same volumes, from
   its log).

It needs torch, numpy, scipy, h5py, einops, tqdm and tensorboard -- not SimpleITK or medpy.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from bench.common import cpu_name, machine_description, markdown_table, measure_step, run_in_fresh_process
from bench.train_speed import make_train_step
from datasets.synthetic.synapse import generate_dataset
from utils.loader import DAEFORMER

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_ITERATIONS = 37_200  # 400 epochs of 2,211 slices in batches of 24 (the published recipe; README "Reproduce the paper")
PACE = re.compile(r"epoch (\d+) \(\d+ of \d+\): iteration \d+, .*, ([\d.]+) s/iteration")
EVAL_TIME = re.compile(r"test evaluation took ([\d.]+) s")
PEAK = re.compile(r"peak GPU memory ([\d.]+) GiB")
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What the report measures."""

    module: str
    model_kwargs: dict
    img_size: int
    batch: int
    slice_size: int  # the phantom's slices, as stored
    train_cases: int
    test_cases: int
    min_slices: int
    max_slices: int
    variants: tuple[str, ...]  # of bench.train_speed's step
    amp: str  # of the train.py loop and test.py
    compile: bool
    iterations: int
    workers: int

    @property
    def loop_variant(self) -> str:
        """The train.py loop's precision and compilation, named as bench.train_speed's variants."""
        return ("fp32" if self.amp == "off" else self.amp) + ("+compile" if self.compile else "")


# The published sizes, on one GPU.
FULL = Plan(DAEFORMER, {}, 224, 24, 512, 4, 12, 85, 198, ("fp32", "bf16", "bf16+compile"), "bf16", True, 300, 12)
# A tiny U-Net on small slices: every stage in about a minute on a CPU (the test suite's run).
SMALL = Plan("networks.UNet.UNet", {"base_channels": 4, "depth": 2}, 32, 4, 64, 2, 2, 6, 8, ("fp32",), "off", False, 12, 0)


def flags(**values: object) -> list[str]:
    """``--name value`` pairs for a script's command line."""
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def run_script(script: str, argv: list[str]) -> float:
    """Run ``script`` (train.py, test.py) as a user does; returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{script} exited with {result.returncode}: {tail[0]}")
    return time.perf_counter() - start


def progress(message: str) -> None:
    """A line on stderr as each measurement ends: a run cut short still shows what it measured."""
    print(f"bench.gpu_report: {message}", file=sys.stderr, flush=True)


def attempt(name: str, measure: Callable[[], T], failures: dict[str, str]) -> T | None:
    """``measure()``, or None with its error kept in ``failures``: one stage that fails on some
    GPU (a compiler error, say) must not cost the numbers of the others."""
    try:
        value = measure()
    except Exception as error:  # any failure of a stage is reported, not raised
        failures[name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        progress(f"{name} failed: {failures[name]}")
        return None
    progress(f"{name}: {value}")
    return value


def step_time(plan: Plan, variant: str, device: torch.device, threads: int) -> dict:
    kwargs = dict(
        module=plan.module,
        kwargs={"num_classes": 9, **plan.model_kwargs},
        batch=plan.batch,
        img_size=plan.img_size,
        variant=variant,
    )
    measured = run_in_fresh_process(measure_step, make_train_step, kwargs, str(device), threads, 3, 10)
    return {
        "variant": variant,
        "s_per_step": measured.median_s,
        "peak_gib": measured.peak_bytes / 2**30,
        "memory_kind": measured.memory_kind,
    }


def train_loop(plan: Plan, data: dict, run: Path, device: torch.device) -> dict:
    """train.py for ``plan.iterations`` iterations, evaluating the test volumes once at the end
    (train.py always evaluates after its last epoch)."""
    per_epoch = -(-data["num_train_slices"] // plan.batch)  # the loader keeps the last, smaller batch
    argv = flags(
        root_path=data["train_dir"],
        test_path=data["test_dir"],
        list_dir=data["train_list"].parent,
        output_dir=run,
        module=plan.module,
        model_kwargs=json.dumps(plan.model_kwargs),
        img_size=plan.img_size,
        batch_size=plan.batch,
        max_iterations=plan.iterations,
        max_epochs=-(-plan.iterations // per_epoch),
        num_workers=plan.workers,
        device=device.type,
        amp=plan.amp,
        lr_batch_rule="off",
    )
    wall = run_script("train.py", argv + (["--compile"] if plan.compile else []))
    log = (run / "log.txt").read_text()
    paces = [float(p) for e, p in PACE.findall(log) if int(e) > 0] or [float(p) for _, p in PACE.findall(log)]
    return {
        "s_per_iteration": sorted(paces)[len(paces) // 2],
        "wall_s": wall,
        "eval_s": float(EVAL_TIME.findall(log)[-1]),
        "peak_gib": float(PEAK.findall(log)[-1]) if PEAK.findall(log) else None,
    }


def time_test_py(plan: Plan, data: dict, run: Path) -> float:
    return run_script(
        "test.py",
        flags(
            output_dir=run, volume_path=data["out_dir"], list_dir=data["train_list"].parent, amp=plan.amp, ckpt=run / "last.pth"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny U-Net on small slices (a CPU smoke run)")
    parser.add_argument("--iterations", type=int, help="train.py iterations (default 300; --small 12)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the CPU step measurements")
    parser.add_argument("--workdir", help="where the phantom and the runs go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    return parser


def report_rows(
    plan: Plan, test_slices: int, steps: list[dict], loop: dict | None, test_s: float | None, failures: dict[str, str]
) -> list[list[str]]:
    """The table's rows; a stage that failed shows its error where its number would be."""

    def failed(name: str) -> list[str]:
        return [f"failed: {failures.get(name, 'an earlier stage failed')}", "", ""]

    rows = [
        [
            f"train_step, {s['variant']}",
            f"{s['s_per_step']:.4f} s/step",
            f"{plan.batch / s['s_per_step']:.0f} slices/s",
            f"{s['peak_gib']:.1f} GiB ({s['memory_kind']})",
        ]
        for s in steps
    ]
    rows += [
        [f"train_step, {variant}", *failed(f"train_step {variant}")]
        for variant in plan.variants
        if f"train_step {variant}" in failures
    ]
    # The step variant the train.py loop ran, to compare the loop with.
    same = next((s for s in steps if s["variant"] == plan.loop_variant), steps[0] if steps else None)
    loop_name = f"train.py loop, {plan.loop_variant}, {plan.slice_size}px slices"
    if loop is None:
        rows += [[loop_name, *failed("train.py")], ["published recipe, projected", *failed("train.py")]]
    else:
        rows += [
            [
                loop_name,
                f"{loop['s_per_iteration']:.4f} s/iteration",
                f"{loop['s_per_iteration'] / same['s_per_step']:.2f}x the step" if same else "",
                "" if loop["peak_gib"] is None else f"{loop['peak_gib']:.1f} GiB",
            ],
            [
                "published recipe, projected",
                f"{PUBLISHED_ITERATIONS * loop['s_per_iteration'] / 60:.1f} min",
                f"{PUBLISHED_ITERATIONS:,} iterations",
                "",
            ],
        ]
    test_name = f"test.py, {plan.test_cases} volumes of {test_slices} slices"
    rows.append([test_name, f"{test_s:.1f} s", "", ""] if test_s is not None else [test_name, *failed("test.py")])
    eval_name = f"train.py's evaluation of the same {plan.test_cases} volumes"
    rows.append([eval_name, f"{loop['eval_s']:.1f} s", "", ""] if loop is not None else [eval_name, *failed("train.py")])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_report: error: no CUDA GPU is visible; use --device cpu --small for a smoke run", file=sys.stderr)
        return 2
    plan = SMALL if args.small else FULL
    if args.iterations:
        plan = replace(plan, iterations=args.iterations)
    device = torch.device(args.device)
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        data = generate_dataset(
            work / "phantom",
            seed=5,
            size=plan.slice_size,
            train_cases=plan.train_cases,
            test_cases=plan.test_cases,
            min_slices=plan.min_slices,
            max_slices=plan.max_slices,
            overwrite=True,
        )
        progress(f"phantom written: {data['num_train_slices']} training slices, {data['num_test_slices']} test slices")
        steps = []
        for variant in plan.variants:
            step = attempt(f"train_step {variant}", lambda v=variant: step_time(plan, v, device, args.threads), failures)
            steps += [step] if step else []
        loop = attempt("train.py", lambda: train_loop(plan, data, work / "run", device), failures)
        test_s = attempt("test.py", lambda: time_test_py(plan, data, work / "run"), failures) if loop else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {args.threads} threads"
    print(machine_description())
    print(f"{plan.module} at {plan.img_size}, batch {plan.batch}, on {where}, torch {torch.__version__}")
    rows = report_rows(plan, data["num_test_slices"], steps, loop, test_s, failures)
    print(markdown_table(["what", "time", "rate / ratio", "peak memory"], rows))
    if args.json:
        report = {
            "device": where,
            "machine": machine_description(),
            "plan": asdict(plan),
            "steps": steps,
            "loop": loop,
            "test_s": test_s,
            "failures": failures,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
