"""Measurement helpers shared by the benchmarks: one step timed and its peak memory taken in a
fresh process, and a markdown table.

A benchmark describes its workload as a *step factory*: a module-level function
``make_step(device, **kwargs)`` that builds its model and inputs and returns a zero-argument
``step()``. :func:`measure_step` times that step and takes its peak memory;
:func:`run_in_fresh_process` runs it in a new interpreter, so that every measurement starts
from an empty allocator and a clean resident-memory peak.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

DEVICES = ("cpu", "cuda")
BYTES_PER_MIB = 2**20
# ru_maxrss is reported in KiB on Linux and in bytes on macOS.
RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024
PROC_STATUS = "/proc/self/status"
# Writing "5" here resets the process's peak resident size (VmHWM) to its current size (Linux >= 4.0).
PROC_CLEAR_REFS = "/proc/self/clear_refs"
RESET_PEAK_RSS = "5"
KIB = 1024

T = TypeVar("T")


def _status_kib(field: str) -> int | None:
    try:
        with open(PROC_STATUS) as status:
            match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        with open(PROC_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write(RESET_PEAK_RSS)
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak memory a stretch of work adds on top of what was held when :meth:`start` ran.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated at start (tensors only,
    not the caching allocator's reserve or the CUDA context). CPU: the process's peak resident
    set size minus its resident size at start. On Linux the peak is reset at start
    (``/proc/self/clear_refs``), so the figure is exact up to page granularity; elsewhere it
    falls back to ``ru_maxrss``, a lifetime peak, which overstates the growth when something
    before start (e.g. building the model) peaked higher than the measured work.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS"
        self._base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif _reset_peak_rss():
            self.kind = "peak RSS (VmHWM, reset at start)"
            self._base = _status_kib("VmRSS") * KIB
        else:
            self.kind = "peak RSS (ru_maxrss, lifetime peak: an upper bound)"
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_BYTES

    def peak_bytes(self) -> int:
        """Bytes of the peak above the state at :meth:`start`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        peak_kib = _status_kib("VmHWM")
        if peak_kib is None or "ru_maxrss" in self.kind:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_BYTES
        else:
            peak = peak_kib * KIB
        return max(peak - self._base, 0)


def time_step(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns:
        ``repeats`` durations in seconds: CUDA-event time between launch and completion on a
        GPU (the device is synchronised before and after), wall time on the CPU.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warm-up must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        step()
    seconds = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            begin = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - begin)
    return seconds


@dataclass(frozen=True)
class StepMeasurement:
    """Timings of one step and the peak memory it adds.

    seconds: each timed repetition, seconds. median_s: their median. peak_bytes: peak memory
    above the state after the step factory returned (model, inputs), warm-up included.
    memory_kind: what peak_bytes measures (see :class:`PeakMemory`).
    """

    seconds: tuple[float, ...]
    median_s: float
    peak_bytes: int
    memory_kind: str


def measure_step(
    make_step: Callable[..., Callable[[], Any]],
    step_kwargs: dict[str, Any],
    device: str,
    threads: int,
    warmup: int,
    repeats: int,
    seed: int = 0,
) -> StepMeasurement:
    """Build a step with ``make_step(torch.device(device), **step_kwargs)``, then time it and take
    its peak memory. Meant to run in a fresh process (:func:`run_in_fresh_process`)."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    target = torch.device(device)
    step = make_step(target, **step_kwargs)
    memory = PeakMemory(target)
    memory.start()
    seconds = time_step(step, target, warmup, repeats)
    return StepMeasurement(tuple(seconds), statistics.median(seconds), memory.peak_bytes(), memory.kind)


def run_in_fresh_process(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in a new interpreter (multiprocessing "spawn"), so that its
    memory peak and allocator state are its own. ``function`` and its arguments must pickle
    (module-level functions, plain data); its exceptions are raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args, **kwargs).result()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    widths = [len(str(h)) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row has {len(row)} cells for {len(headers)} headers")
        widths = [max(w, len(str(cell))) for w, cell in zip(widths, row)]

    def line(cells: Sequence[Any]) -> str:
        padded = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _cpuinfo_field(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(rf"^{field}\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or the platform's processor string."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_vendor() -> str:
    """The CPU vendor id (``GenuineIntel``, ``AuthenticAMD``, ...), or the machine type."""
    return _cpuinfo_field("vendor_id") or platform.machine() or "unknown vendor"


def blas_name() -> str:
    """The BLAS torch was built with, and its version when the build says (``mkl 2024.2``)."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    name = blas.group(1) if blas else "unknown BLAS"
    version = re.search(r"Math Kernel Library Version ([\d.]+)", config) if name == "mkl" else None
    return f"{name} {version.group(1)}" if version else name


def machine_description() -> str:
    """One line naming the machine a benchmark ran on, for its output: CPU model and vendor,
    logical CPUs and the vector unit torch uses, torch version and BLAS, torch threads, the GPU
    (name, count) when one is visible, and the 1-minute load average (on a shared machine the
    timings depend on it).

    Why: the same code can be several times faster or slower on another CPU (subnormal
    operands, for one, cost microcode assists on some CPUs and nothing on others), so a figure
    means little without the machine behind it.
    """
    threads = torch.get_num_threads()
    parts = [
        f"{cpu_name()} ({cpu_vendor()}, {logical_cpus()} logical CPUs, {torch.backends.cpu.get_cpu_capability()})",
        f"torch {torch.__version__}, BLAS {blas_name()}, {threads} torch thread{'s' if threads != 1 else ''}",
    ]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        parts.append(f"GPU {torch.cuda.get_device_name(0)}" + (f" (x{count})" if count > 1 else ""))
    else:
        parts.append("no GPU")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.2f}")
    return "machine: " + "; ".join(parts)


def logical_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
