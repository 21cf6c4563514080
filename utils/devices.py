"""Where a network runs and in which precision: the device of ``--device``, the process group of
a ``torchrun`` launch, ``--amp`` autocast, the slices per forward pass that pay on each device,
and how a script's process keeps the host memory it frees. Every script and engine takes these
decisions from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Slices per forward pass when none is given: batching pays on a GPU; on a CPU it does not
# (python -m bench.eval_speed --depth 32 --batch_size 1, then 16).
GPU_BATCH_SIZE = 16
CPU_BATCH_SIZE = 1
# Minutes a process waits in a collective under torchrun. The evaluation is shared by all
# processes, so none waits for another much longer than a step; the timeout covers slow disks.
DIST_TIMEOUT_MIN = 60.0
# glibc's mallopt parameters (malloc.h) and the most freed memory a process keeps for reuse:
# mallopt takes an int, so 2 GiB - 1 is the largest value it accepts.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEPT_FREE_BYTES = 2**31 - 1
MALLOC_LIMITS = ("mmap_max", "mmap_threshold", "trim_threshold")


def select_device(choice: str, index: int = 0) -> torch.device:
    """The device of ``--device auto|cpu|cuda`` (auto: a CUDA GPU when one is visible);
    ``index`` picks the GPU (a torchrun process's LOCAL_RANK)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


def default_batch_size(device: torch.device) -> int:
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--amp bf16|fp16``, a no-op for ``off``."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Placement:
    """This process's device and its share of a torchrun launch (rank 0 of 1 without one)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def place_process(choice: str, timeout_min: float = DIST_TIMEOUT_MIN) -> Placement:
    """The device of this process; joins the process group when started by torchrun (NCCL on
    GPUs, gloo on CPU). ``leave_process_group`` ends it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(choice, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return Placement(device, dist.get_rank() if world_size > 1 else 0, world_size)


def keep_freed_memory() -> bool:
    """Let this process reuse the host memory it frees instead of returning it to the system.

    glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on ``free``, so
    each large temporary tensor -- the 24x9x224x224 float32 logits of one training step are
    43 MB -- page-faults once per 4 KiB page, every step: 13 ms of faults for a 1.8 ms
    multiplication. With ``mmap`` off and up to ``KEPT_FREE_BYTES`` kept at the top of the heap, a
    freed block is reused once the heap has grown to a step's peak, a few steps in (``python -m
    bench.train_speed --variants fp32 fp32+glibc``). Numbers are unchanged; the process's resident
    memory stays at its peak plus what fragments.

    Process-wide, so the scripts call it and the library does not. Nothing is changed where
    the C library is not glibc, or where the user sets these limits already (``MALLOC_MMAP_MAX_``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or their ``GLIBC_TUNABLES``).

    Returns:
        Whether the setting took effect.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    tuned = any(f"MALLOC_{name.upper()}_" in os.environ or f"glibc.malloc.{name}" in tunables for name in MALLOC_LIMITS)
    if not sys.platform.startswith("linux") or tuned:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl)
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES) == 1


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
