"""The training run: built once by :func:`build_run`, then driven by :func:`fit`, whose loop reads
like the recipe -- train an epoch, log it, evaluate when due, save once, honour a stop.

The pieces are small and each has one job:

- :class:`Plan`: iterations per epoch, the last epoch, and when an evaluation is due;
- :class:`~utils.checkpointer.TrainState` and :class:`~utils.checkpointer.Checkpointer`: what
  changes, and how it is saved and resumed;
- :class:`TrainingLog`: what the main process reports (log lines, TensorBoard, pictures);
- :class:`Run`: the frozen record of the run's wiring that :func:`fit` reads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets.catalog import IMAGES, DatasetInfo, dataset_info
from datasets.common import IMAGE_MEAN, IMAGE_STD, DataError
from datasets.lists import read_list
from datasets.readers import evaluation_cases, ignore_stop_signals, training_set
from datasets.synapse import slices_to_volumes, split_cases
from utils.checkpointer import Checkpointer, TrainState, initialise_from, resume_path
from utils.config import AUTO, RunConfig
from utils.contract import check_network
from utils.devices import Placement, default_batch_size
from utils.errors import UserError
from utils.evaluation import EvalResult, EvalSettings, Evaluator, build_evaluator
from utils.loader import build_network, to_device
from utils.losses import CEDiceLoss
from utils.profile import COST_KEY, network_cost
from utils.runs import ARGS_FILE, EVAL_FOLDER, SPLIT_FILE, TENSORBOARD_FOLDER, VAL_CASES_FILE, StopSignal, new_run_id
from utils.training import StepLosses, build_optimizer, build_scheduler, seed_everything, train_step, unwrap
from utils.visualize import panel

logger = logging.getLogger(__name__)

# Reading a loss from the GPU waits for it; the loop does so only every this many steps.
LOG_EVERY = 20
VALIDATION, TEST = "validation", "test"


class TrainingStopped(UserError):
    """Training cannot go on (a non-finite loss); the last good checkpoint stays."""


@dataclass(frozen=True)
class Plan:
    """How long the run is and when it evaluates."""

    iterations_per_epoch: int
    max_iterations: int
    last_epoch: int
    eval_interval: int
    max_epochs: int
    eval_kind: str  # VALIDATION (held-out cases or a validation list) or TEST (the published practice)

    @classmethod
    def of(cls, config: RunConfig, loader: DataLoader, eval_kind: str) -> Plan:
        per_epoch = len(loader) // config.accumulation_steps
        if per_epoch == 0:
            raise UserError(
                f"--batch_size {config.batch_size} x --accumulation-steps {config.accumulation_steps} is more "
                f"than the {len(loader.dataset)} training slices of one process; lower one of them"
            )
        total = min(config.max_epochs * per_epoch, config.max_iterations or math.inf)
        return cls(per_epoch, int(total), math.ceil(total / per_epoch) - 1, config.eval_interval, config.max_epochs, eval_kind)

    def evaluation_due(self, epoch: int) -> bool:
        """Every ``eval_interval`` epochs -- from half-way on when evaluating on the test set, as
        the published code does -- and always after the last epoch; never with interval 0."""
        if self.eval_interval == 0:
            return False
        if epoch == self.last_epoch:
            return True
        done = epoch + 1
        return done % self.eval_interval == 0 and (self.eval_kind == VALIDATION or done >= self.max_epochs / 2)


class TrainingLog:
    """What the run reports, on the main process only: the progress bar, the loss scalars, the
    epoch line with the time left, the evaluation results and the pictures."""

    def __init__(self, config: RunConfig, placement: Placement) -> None:
        self.enabled = placement.main
        self.folder = Path(config.output_dir)
        self.num_classes = config.num_classes
        self.writer = SummaryWriter(str(self.folder / TENSORBOARD_FOLDER)) if self.enabled else None
        self.bar: tqdm | None = None

    def progress(self, loader: DataLoader, epoch: int) -> tqdm:
        self.bar = tqdm(loader, desc=f"epoch {epoch}", disable=not self.enabled, leave=False)
        return self.bar

    def losses(self, state: TrainState, mean: StepLosses) -> None:
        if not self.enabled:
            return
        for name, value in (("lr", state.lr), ("total_loss", mean.loss), ("loss_ce", mean.ce), ("loss_dice", mean.dice)):
            self.writer.add_scalar(f"train/{name}", float(value), state.iteration)
        self.bar.set_postfix(loss=f"{mean.loss.item():.4f}", lr=f"{state.lr:.2e}")

    def epoch(self, state: TrainState, outcome: EpochOutcome, plan: Plan) -> None:
        """The epoch line -- where the run is, its losses, its pace and the training time left --
        and the picture of its last batch."""
        if outcome.losses is None:
            return
        losses, pace = outcome.losses, outcome.pace
        logger.info(
            "epoch %d (%d of %d): iteration %d, loss %.4f (ce %.4f, dice %.4f), lr %.3e, %.4f s/iteration, "
            "%.1f min of training left",
            state.epoch,
            state.epoch + 1,
            plan.last_epoch + 1,
            state.iteration,
            losses.loss.item(),
            losses.ce.item(),
            losses.dice.item(),
            state.lr,
            pace,
            pace * (plan.max_iterations - state.iteration) / 60,
        )
        self.picture(state.model, outcome.last_batch, state.iteration)

    def picture(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], iteration: int) -> None:
        """The last training batch's first slice: image, truth and the network's prediction."""
        if not self.enabled or not batch:
            return
        network = unwrap(model)
        with torch.no_grad():
            logits = network.eval()(batch["images"][:1])  # eval: a picture must not move BatchNorm statistics
        network.train()
        example = batch["image"][0].float().mean(0).numpy() * IMAGE_STD + IMAGE_MEAN  # back to [0, 1]
        prediction = logits[0].argmax(0).cpu().numpy()
        picture = panel(example, prediction, batch["label"][0].numpy(), self.num_classes)
        self.writer.add_image("train/image_truth_prediction", picture, iteration)

    def evaluation(self, result: EvalResult, state: TrainState, kind: str, seconds: float) -> None:
        """Log the result, write it to ``eval/epoch_N/`` and add it to TensorBoard."""
        if not self.enabled:
            return
        result.log(f"{kind} evaluation after epoch {state.epoch}")
        logger.info("%s evaluation took %.1f s", kind, seconds)
        result.write(self.folder / EVAL_FOLDER / f"epoch_{state.epoch}", {"run_id": state.run_id, "epoch": state.epoch})
        result.add_to(self.writer, kind, state.iteration)
        example = result.example
        picture = panel(example["image"], example["prediction"], example["label"], self.num_classes)
        self.writer.add_image(f"{kind}/image_truth_prediction", picture, state.iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass(frozen=True)
class Run:
    """The run's wiring, built once; :func:`fit` reads it and changes only the :class:`TrainState`."""

    config: RunConfig
    placement: Placement
    plan: Plan
    loader: DataLoader
    criterion: CEDiceLoss
    evaluator: Evaluator
    eval_cases: Any
    checkpointer: Checkpointer
    log: TrainingLog
    stop: StopSignal

    @property
    def sampler(self) -> DistributedSampler | None:
        return self.loader.sampler if isinstance(self.loader.sampler, DistributedSampler) else None


@dataclass
class EpochOutcome:
    losses: StepLosses | None  # the last mean losses read (None if no step ran)
    last_batch: dict[str, torch.Tensor]  # for the picture; its images on the device
    finished: bool  # False: a stop signal ended the epoch early
    pace: float  # seconds per iteration, loader included


def fit(run: Run, state: TrainState) -> int:
    """Train from ``state`` to the end of the plan; returns the exit status (0, or 128 + the
    signal that stopped the run)."""
    plan, checkpointer = run.plan, run.checkpointer
    state.model.train()
    for epoch in range(state.epoch, plan.last_epoch + 1):
        state.begin_epoch(epoch)
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        outcome = train_epoch(run, state)
        if not outcome.finished:
            checkpointer.save(state, finished_epoch=False)
            return stopped(run, state, inside_epoch=True)
        run.log.epoch(state, outcome, plan)
        evaluated = plan.evaluation_due(epoch)
        best = evaluated and evaluate(run, state)
        checkpointer.save(state, best=best, periodic=evaluated)
        run.placement.barrier()
        if epoch < plan.last_epoch and run.stop.requested(run.placement.device):
            return stopped(run, state, inside_epoch=False)
    finish(run, state)
    return 0


def stopped(run: Run, state: TrainState, inside_epoch: bool) -> int:
    """Log where a stop signal ended the run; returns its exit status."""
    last = run.checkpointer.last
    where = (
        f"inside epoch {state.epoch} after iteration {state.iteration}; {last} holds the position"
        if inside_epoch
        else f"after epoch {state.epoch}"
    )
    logger.warning(
        "stopped by %s %s: rerun the same command with --resume auto (or --resume %s) to continue", run.stop.name, where, last
    )
    return run.stop.exit_code


def train_epoch(run: Run, state: TrainState) -> EpochOutcome:
    """One pass over the loader from batch ``state.batches_done``, one optimisation step per
    ``accumulation_steps`` batches.

    Losses stay on the device; every ``LOG_EVERY`` steps (and at the end) their mean since the
    last read is checked for finiteness and logged, so the GPU is not waited on every step. A
    stop signal ends the epoch at the next step boundary -- under torchrun at the next
    ``LOG_EVERY`` boundary, since asking every process is a collective that waits for the GPU.
    """
    config, device = run.config, run.placement.device
    start, first_iteration = time.perf_counter(), state.iteration
    skip = state.batches_done  # batches an interrupted run already used: drawn again, not trained on
    micro_batches, running, steps, last_batch, mean, stopping = [], None, 0, {}, None, False
    for index, batch in enumerate(run.log.progress(run.loader, state.epoch)):
        if index < skip:
            continue
        micro_batches.append((batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)))
        if len(micro_batches) < config.accumulation_steps:
            continue
        losses = train_step(state.model, micro_batches, run.criterion, state.optimizer, state.scheduler, state.scaler, config.amp)
        last_batch = {"image": batch["image"], "label": batch["label"], "images": micro_batches[-1][0]}
        micro_batches, state.iteration, state.batches_done = [], state.iteration + 1, index + 1
        running, steps = (losses if running is None else running + losses), steps + 1
        done = state.iteration >= run.plan.max_iterations
        read = steps == LOG_EVERY or done
        stopping = not done and (read or not dist.is_initialized()) and run.stop.requested(device)
        if read or stopping:
            mean, running, steps = _read_losses(run, state, running / steps), None, 0
        if stopping or done:
            break
    if steps:
        mean = _read_losses(run, state, running / steps)
    if not stopping:
        state.batches_done = 0
    pace = (time.perf_counter() - start) / max(1, state.iteration - first_iteration)
    return EpochOutcome(mean, last_batch, finished=not stopping, pace=pace)


def _read_losses(run: Run, state: TrainState, mean: StepLosses) -> StepLosses:
    check_finite(mean, state, run.checkpointer.last)
    run.log.losses(state, mean)
    return mean


def check_finite(losses: StepLosses, state: TrainState, last: Path) -> None:
    """Stop every process at once on a non-finite loss, pointing to the last good checkpoint."""
    value = losses.loss.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
    if not torch.isfinite(value):
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"the loss became {value.item()} by epoch {state.epoch}, iteration {state.iteration}; {kept}; "
            "lower --base_lr, use --amp off or bf16, or check the data"
        )


def evaluate(run: Run, state: TrainState) -> bool:
    """The periodic evaluation with the engine test.py uses (under torchrun each process takes
    its share of the cases). Returns whether it set a new best on validation data."""
    start = time.perf_counter()
    result = run.evaluator.evaluate(unwrap(state.model), run.eval_cases)
    run.log.evaluation(result, state, run.plan.eval_kind, time.perf_counter() - start)
    if run.plan.eval_kind != VALIDATION or result.headline <= state.best_dice:
        return False
    state.best_dice = float(result.headline)
    return True


def finish(run: Run, state: TrainState) -> None:
    if dist.is_initialized():
        report_replica_agreement(state.model)
    logger.info(
        "training of run %s finished after %d iterations; checkpoints in %s", state.run_id, state.iteration, run.config.output_dir
    )
    if run.placement.device.type == "cuda":
        logger.info("peak GPU memory %.2f GiB (tensors)", torch.cuda.max_memory_allocated(run.placement.device) / 2**30)


def report_replica_agreement(model: torch.nn.Module) -> None:
    """Log whether every process ends with the same weights (DDP keeps them equal)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], other) for other in gathered[1:])
    logger.info("weights identical on all %d processes: %s", len(gathered), "yes" if same else "NO")


# --------------------------------------------------------------------------------------------
# Building the run


def build_run(config: RunConfig, placement: Placement, stop: StopSignal) -> tuple[Run, TrainState]:
    """The network, data, optimiser, schedule, evaluator and logging of ``config``, and the state
    to start from (resumed when ``--resume`` names a checkpoint)."""
    checkpointer = Checkpointer(config, placement)
    checkpoint = resume_path(config)
    if config.resume == AUTO:
        logger.info("--resume auto: %s", f"continuing from {checkpoint}" if checkpoint else "no last.pth yet, starting fresh")
    resumed = checkpointer.load(checkpoint)  # checked before anything of the run is written
    logger.info(
        "device %s, %d process(es), network %s, output %s",
        placement.device,
        placement.world_size,
        config.module,
        config.output_dir,
    )
    seed_everything(config.seed)
    torch.backends.cudnn.deterministic = config.deterministic
    torch.backends.cudnn.benchmark = not config.deterministic
    info = dataset_info(config.dataset)
    model = build_model(config, info.channels, placement)
    if config.init is not None:
        initialise_from(model, config.init).log(config.init_sha256)
    evaluator = build_evaluator(info, config.num_classes, list(config.class_names), eval_settings(config, placement))
    train_set, eval_cases, eval_kind = training_data(config, info, placement)
    loader = build_loader(config, placement, train_set)
    plan = Plan.of(config, loader, eval_kind)
    describe_data(plan, train_set, eval_cases, config.kind)
    optimizer = build_optimizer(model, config.lr)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=config.amp == "fp16")
    state = TrainState(model, optimizer, build_scheduler(optimizer, plan.max_iterations), scaler, run_id=new_run_id())
    if resumed is not None:
        checkpointer.resume(state, checkpoint, resumed, plan.max_iterations)
    if placement.main:
        # The network's cost per slice, measured once, for the comparison table (utils.compare).
        cost = network_cost(model, info.channels, config.img_size)
        recorded = {"run_id": state.run_id, **config.to_json(), COST_KEY: cost}
        (Path(config.output_dir) / ARGS_FILE).write_text(json.dumps(recorded, indent=2) + "\n")
    logger.info("run %s", state.run_id)
    state.model = wrap_model(model, config, placement)
    criterion = CEDiceLoss(config.ce_weight, config.dice_weight)
    run = Run(
        config, placement, plan, loader, criterion, evaluator, eval_cases, checkpointer, TrainingLog(config, placement), stop
    )
    return run, state


def eval_settings(config: RunConfig, placement: Placement) -> EvalSettings:
    """How the periodic evaluation runs: test.py's protocol, this process's share of the cases."""
    return EvalSettings(
        (config.img_size, config.img_size),
        config.eval_batch_size or default_batch_size(placement.device),
        placement.device,
        config.amp,
        workers=config.eval_workers,
        rank=placement.rank,
        world_size=placement.world_size,
    )


def build_model(config: RunConfig, channels: int, placement: Placement) -> torch.nn.Module:
    model = to_device(build_network(config.module, config.model_kwargs), placement.device)
    check_network(model, config.num_classes, channels, config.img_size, placement.device)
    if config.use_checkpoint:
        model.set_grad_checkpointing(True)
    arguments = ", ".join(f"{k}={v}" for k, v in config.model_kwargs.items())
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    logger.info("%s(%s): %.2fM parameters", config.module.rpartition(".")[2], arguments, millions)
    return model


def wrap_model(model: torch.nn.Module, config: RunConfig, placement: Placement) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked."""
    if placement.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[placement.device.index] if placement.device.type == "cuda" else None)
    return torch.compile(model) if config.compile else model


def training_data(config: RunConfig, info: DatasetInfo, placement: Placement) -> tuple[Dataset, Any, str]:
    """The training data, the evaluation cases and what they are: held-out validation cases when
    ``--val_cases K`` > 0, else the table's validation list when it has one, else the test list
    (the published practice). Every evaluation case is read once now, so a corrupt volume stops
    the run before its first step, not hours into it."""
    list_dir = Path(config.list_dir)
    img_size = (config.img_size, config.img_size)
    eval_list, eval_kind = (info.val_list, VALIDATION) if info.val_list else (info.test_list, TEST)
    train_list = list_dir / info.train_list
    if config.val_cases == 0:
        train_set = training_set(info, Path(config.root_path), train_list, config.num_classes, img_size, config.augment)
        cases = evaluation_cases(info, Path(config.test_path), list_dir / eval_list, config.num_classes)
    else:
        split_list, cases = hold_out(config, placement, train_list)
        train_set = training_set(info, Path(config.root_path), split_list, config.num_classes, img_size, config.augment)
        eval_kind = VALIDATION
    for _ in tqdm(cases, desc=f"checking the {eval_kind} cases", leave=False, disable=not placement.main):
        pass
    return train_set, cases, eval_kind


def hold_out(config: RunConfig, placement: Placement, train_list: Path) -> tuple[Path, list[dict]]:
    """``--val_cases K``: the last K training cases become validation volumes. The split is
    written into the run's folder: it records what was held out, and the training reader takes a
    list file like any other. Returns the training list and the validation volumes."""
    try:
        names = read_list(train_list)
        train_names, val_cases = split_cases(names, config.val_cases)
    except ValueError as error:
        raise DataError(f"{train_list}: {error}") from None
    output_dir = Path(config.output_dir)
    if placement.main:
        (output_dir / SPLIT_FILE).write_text("\n".join(train_names) + "\n")
        (output_dir / VAL_CASES_FILE).write_text("\n".join(val_cases) + "\n")
    placement.barrier()
    return output_dir / SPLIT_FILE, slices_to_volumes(config.root_path, names, val_cases, config.num_classes)


def build_loader(config: RunConfig, placement: Placement, train_set: Dataset) -> DataLoader:
    # Each rank draws different augmentations; DistributedSampler shuffles from --seed alone.
    torch.manual_seed(config.seed + placement.rank)
    sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed) if placement.world_size > 1 else None
    on_gpu = placement.device.type == "cuda"
    return DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=on_gpu,
        # On a GPU, re-spawning the workers every epoch costs more than a bitwise-exact resume is
        # worth there (GPU kernels are not bitwise reproducible anyway); on a CPU the workers
        # restart each epoch from the checkpointed random streams, so a resume is exact.
        persistent_workers=config.num_workers > 0 and on_gpu,
        # A scheduler's signal to the whole process group must stop the run, not kill its workers.
        worker_init_fn=ignore_stop_signals,
    )


def describe_data(plan: Plan, train_set: Dataset, eval_cases: Any, kind: str) -> None:
    unit = "image" if kind == IMAGES else "volume"
    logger.info(
        "%d training %s, %d iterations per epoch, %d iterations in all; evaluation on %d %s %s(s)",
        len(train_set),
        "images" if unit == "image" else "slices",
        plan.iterations_per_epoch,
        plan.max_iterations,
        len(eval_cases),
        plan.eval_kind,
        unit,
    )
    if plan.eval_kind == TEST:
        logger.info(
            "evaluating on the TEST volumes, as the published code does (no held-out validation; "
            "--val_cases K holds out K training cases instead); best.pth is only written with --val_cases"
        )
