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
import re
import shutil
import signal
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from utils.checkpoint import BEST, LAST
from utils.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".train.lock"
# What train.py writes into a run's folder, by these names; --overwrite removes exactly these,
# and the run's checkpoints (CHECKPOINT_NAMES and {model_name}_epoch_N.pth). A new output belongs here.
ARGS_FILE = "args.json"
LOG_FILE = "log.txt"
SPLIT_FILE = "train_split.txt"  # --val_cases: the training cases kept
VAL_CASES_FILE = "val_cases.txt"  # --val_cases: the cases held out
TENSORBOARD_FOLDER = "tensorboard"
EVAL_FOLDER = "eval"  # eval/epoch_N/metrics.json
TEST_FOLDER = "test"  # test.py's default --test_save_dir for the run
RUN_FILES = (ARGS_FILE, LOG_FILE, SPLIT_FILE, VAL_CASES_FILE)
RUN_FOLDERS = (TENSORBOARD_FOLDER, EVAL_FOLDER, TEST_FOLDER)
CHECKPOINT_NAMES = (LAST, BEST)
EPOCH_CHECKPOINT = re.compile(r"^(?P<model_name>.+)_epoch_\d+\.pth$")  # utils.checkpoint.epoch_checkpoint_name
TEMPORARY_GLOB = ".*.pth.*.tmp"  # utils.checkpoint.save_checkpoint's temporary files


def new_run_id() -> str:
    """A run's id: UTC start time and a random suffix, e.g. ``20261130-131500-3f9a1c``."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _recorded_args(output_dir: Path) -> dict:
    try:
        recorded = json.loads((output_dir / ARGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def latest_run_id(output_dir: Path) -> str | None:
    """The id of the run that last started in ``output_dir`` (from its args.json), if any."""
    return _recorded_args(output_dir).get("run_id")


def run_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints train.py wrote into ``output_dir``: last.pth, best.pth and the periodic
    ``{model_name}_epoch_N.pth`` of the model name args.json records (any model name when
    args.json is gone). Another ``*.pth`` kept in the folder -- the published weights, say -- is
    not the run's."""
    model_name = _recorded_args(output_dir).get("model_name")
    found = [output_dir / name for name in CHECKPOINT_NAMES if (output_dir / name).is_file()]
    for path in sorted(output_dir.glob("*.pth")):
        match = EPOCH_CHECKPOINT.match(path.name)
        if match and model_name in (None, match["model_name"]):
            found.append(path)
    return found


def holds_run(output_dir: Path) -> bool:
    return (output_dir / ARGS_FILE).is_file() or bool(run_checkpoints(output_dir))


def make_folder(path: Path, flag: str) -> None:
    """Create the output folder ``path`` of ``flag``, or say in one line why it cannot be."""
    if path.is_symlink() and not path.exists():
        raise UserError(f"{flag} {path} is a link to {os.readlink(path)}, which does not exist; create it or give another {flag}")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path} cannot be created ({error.strerror}); give a {flag} where you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} is not writable by you; give a {flag} where you can write")


def prepare_folder(output_dir: Path, resume: str | None, overwrite: bool) -> list[str]:
    """Make ``output_dir`` ready for a run: refuse, or clear, a folder that already holds one.

    - A folder whose run wrote no checkpoint (it died in its first epoch) starts fresh under
      ``--resume auto``: the files it wrote before its first checkpoint are removed.
    - Otherwise a folder holding a run is refused unless the run is resumed or ``overwrite``
      replaces it; replacing removes the run's files and nothing else.
    Leftover temporary checkpoint files are removed first, whatever follows.

    Returns:
        Lines for the log (it is not set up yet).

    Raises:
        UserError: the folder holds a run and neither resuming nor ``overwrite`` was asked for.
    """
    for leftover in output_dir.glob(TEMPORARY_GLOB):
        leftover.unlink(missing_ok=True)
    if not holds_run(output_dir):
        return []
    previous = latest_run_id(output_dir) or "of unknown id"
    started_only = not run_checkpoints(output_dir)
    if resume == "auto" and started_only:
        _remove_run(output_dir, keep_log=True)
        return [
            f"--resume auto: run {previous} in {output_dir} wrote no checkpoint (it stopped in its first epoch); starting fresh"
        ]
    if resume is not None and not overwrite:
        return []
    if not overwrite:
        hint = "--resume auto to continue it" if not started_only else "--resume auto to start it afresh"
        raise UserError(
            f"--output_dir {output_dir} already holds a run (run {previous}); give another --output_dir, {hint}, "
            "or --overwrite to replace it"
        )
    removed = _remove_run(output_dir, keep_log=False)
    return [f"--overwrite: removed run {previous} from {output_dir} ({', '.join(removed)})"]


def _remove_run(output_dir: Path, keep_log: bool) -> list[str]:
    """Remove what a run wrote into ``output_dir``; returns the names removed."""
    removed = []
    for path in [*run_checkpoints(output_dir), *(output_dir / name for name in RUN_FILES if not (keep_log and name == LOG_FILE))]:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    for name in RUN_FOLDERS:
        if (output_dir / name).is_dir():
            shutil.rmtree(output_dir / name)
            removed.append(name + "/")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by someone else
    return True


class RunLock:
    """``OUTPUT_DIR/.train.lock`` for as long as the run lives (a context manager).

    The lock file names the host and pid of its owner, and appears complete: it is written
    under a private name and linked into place, which fails if a lock exists -- so a second run
    never reads a half-written lock and takes it for stale. Taking it fails when another live
    process on this host, or any process on another host, holds it; a lock of a dead process on
    this host is stale and taken over. (Across hosts liveness cannot be checked: the message
    says which file to remove if that run is gone.)
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> RunLock:
        mine = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            mine.write_text(self.owner + "\n")
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
        except OSError as error:
            raise UserError(
                f"cannot write the lock {self.path} ({error.strerror}); give an --output_dir where you can write"
            ) from None
        finally:
            mine.unlink(missing_ok=True)
        raise UserError(f"could not take the lock {self.path}; remove it if no run is using the folder")

    def _take_over_if_stale(self) -> None:
        try:
            host, pid = self.path.read_text().split()
            number = int(pid)
        except FileNotFoundError:
            return  # its owner just released it: try again
        except (OSError, ValueError):
            raise UserError(
                f"the lock {self.path} is not one this program writes (host and pid); remove it if no run is using "
                f"{self.path.parent}"
            ) from None
        if host == socket.gethostname() and not _alive(number):
            logger.info("removing the stale lock %s of process %s on %s, which is gone", self.path, pid, host)
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
