"""What a training run carries from step to step, and how it is saved and taken up again.

- :class:`TrainState`: the live network, optimiser, schedule and scaler, the counters, and the
  position inside an interrupted epoch.
- :class:`Checkpointer`: writes ``last.pth`` once per epoch (or at a stop inside one); ``best.pth``
  and the periodic ``{model_name}_epoch_{N}.pth`` are hard links to that one file, so an
  evaluated epoch writes its payload once. ``resume`` restores everything a checkpoint holds,
  after checking that it belongs to this run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from utils.checkpoint import (
    BEST,
    FORMAT,
    LAST,
    CheckpointError,
    epoch_checkpoint_name,
    is_self_describing,
    link_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    strip_wrapper_prefix,
)
from utils.config import AUTO, RunConfig, changed_settings
from utils.devices import Placement
from utils.errors import UserError
from utils.runs import latest_run_id
from utils.training import poly_lr, restore_rng_state, rng_state, unwrap

logger = logging.getLogger(__name__)

# The fields a training checkpoint must hold to be resumed.
RESUME_FIELDS = ("args", "module", "model_kwargs", "model", "optimizer", "scheduler", "scaler", "iteration", "epoch", "rng")


@dataclass
class TrainState:
    """What changes as the run goes.

    ``epoch`` is the epoch under way; ``batches_done`` the loader batches of it already used;
    ``epoch_rng`` this process's random streams as they were when the epoch began (shuffling and
    augmentation are drawn from them), so an interrupted epoch resumes on the very same batches.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    run_id: str
    epoch: int = 0
    iteration: int = 0
    best_dice: float = -1.0
    batches_done: int = 0
    epoch_rng: dict[str, Any] | None = None

    def begin_epoch(self, epoch: int) -> None:
        """Start (or, after a resume inside it, continue) ``epoch``."""
        self.epoch = epoch
        if self.batches_done == 0 or self.epoch_rng is None:
            self.epoch_rng = rng_state()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def streams(self, finished_epoch: bool = True) -> list[dict[str, Any]] | None:
        """Every process's random streams -- now, or as the epoch began when it is unfinished --
        on the main process (None on the others). Under torchrun a collective: every process
        calls it at the same point."""
        own = rng_state() if finished_epoch else self.epoch_rng
        if not dist.is_initialized():
            return [own]
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(own, gathered, dst=0)
        return gathered

    def payload(self, config: RunConfig, streams: list[dict[str, Any]], finished_epoch: bool = True) -> dict[str, Any]:
        """The self-describing checkpoint: after epoch ``self.epoch``, or -- ``finished_epoch``
        False -- inside it, after ``batches_done`` batches. ``rng`` holds the main process's
        streams, ``rank_rng`` every process's."""
        payload = {
            "format": FORMAT,
            "run_id": self.run_id,
            "module": config.module,
            "model_kwargs": config.model_kwargs,
            "model": unwrap(self.model).state_dict(),
            "args": config.to_json(),
            "epoch": self.epoch if finished_epoch else self.epoch - 1,
            "iteration": self.iteration,
            "best_dice": self.best_dice,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": streams[0],
        }
        if len(streams) > 1:
            payload["rank_rng"] = streams
        if not finished_epoch:
            payload["within_epoch"] = {"epoch": self.epoch, "batches_done": self.batches_done}
        return payload


class Checkpointer:
    """The run's checkpoints in ``--output_dir``: one write per epoch, links for the rest."""

    def __init__(self, config: RunConfig, placement: Placement) -> None:
        self.config = config
        self.placement = placement
        self.folder = Path(config.output_dir)

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def save(self, state: TrainState, *, finished_epoch: bool = True, best: bool = False, periodic: bool = False) -> None:
        """Write ``last.pth`` -- after the epoch, or inside it when ``finished_epoch`` is False --
        and link ``best.pth`` and the epoch's periodic checkpoint to it when asked. Under torchrun
        every process calls it (the random streams are gathered); the main process writes."""
        streams = state.streams(finished_epoch)
        if not self.placement.main:
            return
        # The payload is written once, to the first of its names; last.pth comes last, so a
        # run killed in between resumes from the previous epoch's complete set.
        names = [epoch_checkpoint_name(self.config.model_name, state.epoch)] if periodic else []
        names += [BEST] if best else []
        first, *others = [self.folder / name for name in [*names, LAST]]
        save_checkpoint(first, state.payload(self.config, streams, finished_epoch))
        for path in others:
            link_checkpoint(first, path)
        if best:
            logger.info("new best validation mean Dice %.4f: saved %s", state.best_dice, self.folder / BEST)

    def load(self, path: Path | None) -> dict[str, Any] | None:
        """The checkpoint to resume from, read and checked before the run writes anything: a
        training checkpoint of this repository, with every field a resume needs, of this run's
        settings (unless told to accept changes), and of the run its folder holds."""
        if path is None:
            return None
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            raise UserError(f"--resume {path} is not a training checkpoint of this repository (a plain state dict?)")
        missing = [name for name in RESUME_FIELDS if name not in payload]
        if missing:
            raise CheckpointError(f"--resume {path} lacks {', '.join(missing)}: it cannot be resumed; start a new run")
        folder_run, resumed_run = latest_run_id(self.folder), payload.get("run_id")
        if folder_run and resumed_run and folder_run != resumed_run:
            raise UserError(
                f"--resume {path} continues run {resumed_run}, but --output_dir {self.folder} holds run {folder_run}; "
                f"give another --output_dir, or --overwrite to replace run {folder_run}"
            )
        changes = changed_settings(payload, self.config)
        if changes and not self.config.resume_accept_changes:
            raise UserError(
                f"--resume {path} was trained with other settings: {'; '.join(changes)}; give the same flags, "
                "or --resume_accept_changes to continue anyway"
            )
        for change in changes:
            logger.warning("resuming with a changed setting (--resume_accept_changes): %s", change)
        workers = payload["args"].get("num_workers")
        if workers is not None and workers != self.config.num_workers:
            logger.warning(
                "--num_workers %d where the checkpoint ran with %d: each loader worker draws its own augmentation "
                "stream, so the run goes on, but not draw for draw as it would have",
                self.config.num_workers,
                workers,
            )
        return payload

    def resume(self, state: TrainState, path: Path, payload: dict[str, Any], max_iterations: int) -> None:
        """Continue from ``payload`` (:meth:`load` of ``path``): weights, optimiser, schedule,
        scaler, counters, random streams and the position inside an interrupted epoch. A new
        length re-plans the poly schedule as if the run had been planned so."""
        load_weights(unwrap(state.model), payload["model"], path)
        state.optimizer.load_state_dict(payload["optimizer"])
        state.scheduler.load_state_dict(payload["scheduler"])
        if payload["args"].get("amp") == self.config.amp:
            state.scaler.load_state_dict(payload["scaler"])
        else:
            logger.info(
                "--amp %s where the checkpoint trained with %s: a fresh gradient scaler",
                self.config.amp,
                payload["args"].get("amp"),
            )
        state.iteration, state.best_dice = payload["iteration"], payload.get("best_dice", -1.0)
        state.run_id = payload.get("run_id") or state.run_id
        within = payload.get("within_epoch")
        state.epoch, state.batches_done = (within["epoch"], within["batches_done"]) if within else (payload["epoch"] + 1, 0)
        own = self._restore_streams(payload, path, state.epoch)
        state.epoch_rng = own if within else None
        if state.scheduler.total_iters != max_iterations:
            replan(state, max_iterations, payload["scheduler"]["total_iters"])
        where = f"inside epoch {state.epoch} after {state.batches_done} batches" if within else f"at epoch {state.epoch}"
        logger.info("resumed run %s from %s %s, iteration %d", state.run_id, path, where, state.iteration)

    def _restore_streams(self, payload: dict[str, Any], path: Path, epoch: int) -> dict[str, Any]:
        """Restore this process's random streams; returns them."""
        rank, world_size = self.placement.rank, self.placement.world_size
        streams = payload.get("rank_rng") or [payload["rng"]]
        own = streams[rank] if len(streams) == world_size else streams[0]
        restore_rng_state(own)
        if len(streams) != world_size:
            if rank > 0:  # rank 0's streams were restored everywhere: the others draw their own
                torch.manual_seed(self.config.seed + rank + 1000 * epoch)
            logger.info(
                "%s holds the random streams of %d process(es) and this run has %d: process 0 continues its "
                "streams, the others draw fresh ones (the run goes on, but not draw for draw as it would have)",
                path,
                len(streams),
                world_size,
            )
        return own


def resume_path(config: RunConfig) -> Path | None:
    """The checkpoint to continue from: ``--resume PATH``, or with ``--resume auto`` the folder's
    ``last.pth`` if a run left one."""
    if config.resume is None:
        return None
    last = Path(config.output_dir) / LAST
    if config.resume == AUTO:
        return last if last.is_file() else None
    return Path(config.resume)


def replan(state: TrainState, max_iterations: int, planned: int) -> None:
    """Continue the poly schedule as if the run had been planned with ``max_iterations``."""
    state.scheduler.total_iters = max_iterations
    for group in state.optimizer.param_groups:
        group["lr"] = poly_lr(group["initial_lr"], state.iteration, max_iterations)
    logger.warning(
        "the run now has %d iterations in all (the checkpoint planned %d): the poly schedule continues "
        "as if planned so from the start, at lr %.3e",
        max_iterations,
        planned,
        state.lr,
    )


# --------------------------------------------------------------------------------------------
# Starting a new run from another run's weights (--init)

# How many tensor names a one-line --init error lists before "and N more".
NAMES_SHOWN = 5


@dataclass(frozen=True)
class InitReport:
    """What :func:`initialise_from` did: the source, the tensors it loaded and those it left
    freshly initialised because their shape differs (with both shapes)."""

    source: Path
    loaded: list[str]
    reinitialised: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def log(self, digest: str) -> None:
        """``digest``: the source's sha256, as the run's configuration recorded it."""
        logger.info("--init %s (sha256 %s): loaded %d tensors", self.source, digest[:12], len(self.loaded))
        for name, (theirs, ours) in self.reinitialised.items():
            logger.info("--init: re-initialised %s: the checkpoint's shape %s, this network's %s", name, theirs, ours)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def initialise_from(model: torch.nn.Module, path: str | Path) -> InitReport:
    """Load the weights of ``path`` -- a run's checkpoint or a plain state dict such as the
    published weights, ``module.`` prefixes stripped -- into ``model`` for a new run.

    Tensors whose shape differs (a head for another class count, a first layer for another
    channel count) keep their fresh initialisation; every other tensor must match by name and
    shape, else a one-line :class:`CheckpointError` names the first few that do not.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    weights = payload["model"] if is_self_describing(payload) else payload
    if not weights or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise CheckpointError(f"--init {path} is neither a checkpoint of this repository nor a plain state dict of tensors")
    weights = strip_wrapper_prefix(weights)
    network = unwrap(model)
    own = network.state_dict()
    reinitialised = {
        name: (tuple(tensor.shape), tuple(own[name].shape))
        for name, tensor in weights.items()
        if name in own and tensor.shape != own[name].shape
    }
    kept = {name: tensor for name, tensor in weights.items() if name not in reinitialised}
    # strict=False, then our own check: the network's load hooks still drop the published
    # checkpoint's unused tensors, and only the re-initialised tensors may be missing.
    outcome = network.load_state_dict(kept, strict=False)
    missing = [name for name in outcome.missing_keys if name not in reinitialised]
    problems = ([f"missing {_listed(missing)}"] if missing else []) + (
        [f"not in the network: {_listed(outcome.unexpected_keys)}"] if outcome.unexpected_keys else []
    )
    if len(reinitialised) == len(own):
        problems.append("every tensor's shape differs")  # another width: nothing would be taken over
    if problems:
        raise CheckpointError(
            f"--init {path} does not fit {type(network).__name__} beyond its differently shaped tensors "
            f"({'; '.join(problems)}); pass the --module and --model_kwargs it was trained with"
        )
    loaded = [name for name in own if name not in reinitialised]
    return InitReport(path, loaded, reinitialised)
