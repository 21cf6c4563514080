"""A training run's folder on a shared cluster: never silently reused, locked while a run writes
into it, every run named by an id, and a stop signal that every process obeys together.

- A folder that already holds a run (``args.json`` or checkpoints) is refused unless the run is
  resumed or ``--overwrite`` says to replace it; replacing removes the old run's files first, so
  an older ``best.pth`` can never be mistaken for the new run's.
- ``RunLock`` holds ``OUTPUT_DIR/.train.lock`` (host and pid) for the run's lifetime; a second
  run into the same folder is refused, and the lock of a process that died (SIGKILL, a node
  crash on the same host) is recognised as stale and taken over.
- ``StopSignal`` turns SIGTERM / SIGINT (a scheduler's preemption, Ctrl-C) into a flag that the
  training loop reads between steps, so a run stops at a step boundary and writes ``last.pth``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from utils.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".train.lock"
# What train.py writes into a run's folder, by these names; --overwrite removes exactly these
# (and the checkpoints). A new output belongs here.
ARGS_FILE = "args.json"
LOG_FILE = "log.txt"
SPLIT_FILE = "train_split.txt"  # --val_cases: the training cases kept
VAL_CASES_FILE = "val_cases.txt"  # --val_cases: the cases held out
TENSORBOARD_FOLDER = "tensorboard"
EVAL_FOLDER = "eval"  # eval/epoch_N/metrics.json
RUN_FILES = (ARGS_FILE, LOG_FILE, SPLIT_FILE, VAL_CASES_FILE)
RUN_FOLDERS = (TENSORBOARD_FOLDER, EVAL_FOLDER)
CHECKPOINT_GLOB = "*.pth"
TEMPORARY_GLOB = ".*.pth.*.tmp"  # utils.checkpoint.save_checkpoint's temporary files


def new_run_id() -> str:
    """A run's id: UTC start time and a random suffix, e.g. ``20261130-131500-3f9a1c``."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def holds_run(output_dir: Path) -> bool:
    return (output_dir / ARGS_FILE).is_file() or any(output_dir.glob(CHECKPOINT_GLOB))


def latest_run_id(output_dir: Path) -> str | None:
    """The id of the run that last started in ``output_dir`` (from its args.json), if any."""
    try:
        return json.loads((output_dir / ARGS_FILE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def prepare_folder(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse, or clear, a folder that already holds a run; remove leftover temporary files.

    Raises:
        UserError: the folder holds a run and neither resuming nor ``overwrite`` was asked for.
    """
    if holds_run(output_dir) and not resuming:
        if not overwrite:
            raise UserError(
                f"--output_dir {output_dir} already holds a run (run {latest_run_id(output_dir) or 'of unknown id'}); "
                "give another --output_dir, --resume auto to continue it, or --overwrite to replace it"
            )
        for name in RUN_FILES:
            (output_dir / name).unlink(missing_ok=True)
        for path in output_dir.glob(CHECKPOINT_GLOB):
            path.unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(output_dir / name, ignore_errors=True)
        logger.info("--overwrite: removed the previous run's files from %s", output_dir)
    for leftover in output_dir.glob(TEMPORARY_GLOB):
        leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by someone else
    return True


class RunLock:
    """``OUTPUT_DIR/.train.lock`` for as long as the run lives (a context manager).

    The lock file names the host and pid of its owner. Taking it fails when another live
    process on this host, or any process on another host, holds it; a lock of a dead process on
    this host is stale and taken over. (Across hosts liveness cannot be checked: the message
    says which file to remove if that run is gone.)
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(handle, "w") as stream:
                stream.write(self.owner + "\n")
            return self
        raise UserError(f"could not take the lock {self.path}; remove it if no run is using the folder")

    def _take_over_if_stale(self) -> None:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            host, pid = "", "0"  # unreadable or half-written: treat as stale
        if not host or (host == socket.gethostname() and not _alive(int(pid))):
            logger.info("removing the stale lock %s of process %s on %s, which is gone", self.path, pid, host or "?")
            self.path.unlink(missing_ok=True)
            return
        raise UserError(
            f"another run (process {pid} on {host}) is writing into {self.path.parent}; wait for it, use another "
            f"--output_dir, or remove {self.path} if that run is gone"
        )

    def __exit__(self, *_: object) -> None:
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass


class StopSignal:
    """SIGTERM and SIGINT as a flag the training loop reads between steps (a context manager
    that puts the previous handlers back). Under torchrun every process reads the flags of all:
    they stop at the same step, and none waits in a collective for one that left."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            logger.warning("received %s: stopping after the current step", signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> StopSignal:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self, device: torch.device) -> bool:
        """Whether any process received a stop signal (one small all-reduce under torchrun, after
        which a process that received none names the signal another one received)."""
        if not dist.is_initialized():
            return self.received is not None
        flag = torch.tensor([self.received or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.received = self.received or int(flag.item()) or None
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a stop signal"

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by a signal."""
        return 128 + (self.received or signal.SIGTERM)
