"""Train a segmentation network on 2D slices with the published DAE-Former recipe.

    python train.py --root_path ./data/Synapse/train_npz --test_path ./data/Synapse/test_vol_h5 \
        --batch_size 20 --eval_interval 20 --max_epochs 400 --module networks.DAEFormer.DAEFormer

Runs on CPU, one CUDA GPU, or many GPUs / machines through ``torchrun`` (DistributedDataParallel).
Everything it writes goes under ``--output_dir``: log.txt, args.json, TensorBoard scalars and
panels, self-describing checkpoints (last.pth every epoch, best.pth by validation Dice,
{model_name}_epoch_{N}.pth at each evaluation) and each evaluation's metrics.json / metrics.csv
(eval/epoch_{N}/), written by the same engine as test.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets.augment import AUGMENTATIONS
from datasets.catalog import DATASETS, IMAGES, class_names, dataset_info
from datasets.common import IMAGE_MEAN, IMAGE_STD, DataError
from datasets.isic import SkinCases, SkinImages
from datasets.lists import read_list
from datasets.synapse import (
    SynapseSlices,
    SynapseVolumes,
    slices_to_volumes,
    split_cases,
)
from utils import UserError, build_network, load_network_class, network_arguments, to_device
from utils.checkpoint import (
    BEST,
    FORMAT,
    LAST,
    epoch_checkpoint_name,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from utils.cli import SWIN_CONFIG_FLAGS, add_ignored_flags, ignored_note
from utils.evaluation import EvalResult, EvalSettings, Evaluator, build_evaluator
from utils.inference import AMP_DTYPES, DEVICES, default_batch_size, select_device
from utils.loader import DAEFORMER, parse_model_kwargs
from utils.logs import setup_logging
from utils.losses import CE_WEIGHT, DICE_WEIGHT, CEDiceLoss
from utils.runs import (
    ARGS_FILE,
    EVAL_FOLDER,
    LOG_FILE,
    SPLIT_FILE,
    TENSORBOARD_FOLDER,
    VAL_CASES_FILE,
    RunLock,
    StopSignal,
    new_run_id,
    prepare_folder,
)
from utils.training import (
    LR_RULES,
    REFERENCE_BATCH,
    REFERENCE_BATCH_DIVISOR,
    StepLosses,
    build_optimizer,
    build_scheduler,
    poly_lr,
    restore_rng_state,
    rng_state,
    scaled_lr,
    seed_everything,
    train_step,
    unwrap,
)
from utils.visualize import panel

logger = logging.getLogger("train")

# Flags of the published train.py that mean nothing here (utils/cli.py).
IGNORED_FLAGS = (*SWIN_CONFIG_FLAGS, "--n_gpu", "--z_spacing")
# Reading a loss from the GPU waits for it; the loop does so only every this many steps.
LOG_EVERY = 20
# Under torchrun the evaluation is shared by all processes, so no process waits for the others
# much longer than a step; the timeout only has to cover slow disks and checkpoint writes.
DIST_TIMEOUT_MIN = 60.0
AUTO = "auto"
# Settings that define what a run trains; resuming with any of them changed is refused unless
# --resume_accept_changes (max_epochs / max_iterations may change: the schedule follows).
RUN_DEFINING = (
    "module",
    "model_kwargs",
    "dataset",
    "num_classes",
    "train_list_sha256",
    "val_cases",
    "batch_size",
    "accumulation_steps",
    "base_lr",
    "lr_batch_rule",
    "img_size",
    "ce_weight",
    "dice_weight",
)


class TrainingStopped(UserError):
    """Training cannot go on (a non-finite loss); the last good checkpoint stays."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (defaults come from the --dataset table)")
    data.add_argument(
        "--dataset",
        default="Synapse",
        help=f"a data set of the table in datasets/catalog.py ({', '.join(DATASETS)}) or the path of "
        "the dataset.json that datasets.prepare.nifti writes for your own data",
    )
    data.add_argument("--root_path", help="folder of the training slices (.npz), or of images/ and masks/ for 2D image data")
    data.add_argument("--test_path", help="folder of the evaluation volumes (.npy.h5) or images, for the periodic evaluation")
    data.add_argument("--list_dir", help="folder holding the list files (train.txt, test_vol.txt, ...)")
    data.add_argument("--num_classes", type=int, help="classes including background")
    data.add_argument("--img_size", type=int, default=224, help="network input size; slices are resized to it")
    data.add_argument("--augment", default="daeformer", choices=AUGMENTATIONS, help="training augmentation")
    data.add_argument(
        "--val_cases",
        type=int,
        default=0,
        help="hold out the last K training cases as validation volumes for best.pth; "
        "0 = the published behaviour (periodic evaluation on the test volumes)",
    )
    data.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader worker processes")

    model = parser.add_argument_group("network")
    model.add_argument("--module", default=DAEFORMER, help="network class as package.module.ClassName")
    model.add_argument("--model_kwargs", default="{}", help="extra constructor arguments as JSON, e.g. '{\"base_channels\": 16}'")
    model.add_argument("--in_chans", type=int, help="input channels passed to the constructor (default: the network's own)")
    model.add_argument("--model_name", help="prefix of the periodic checkpoints (default: the class name of --module)")
    model.add_argument(
        "--use-checkpoint",
        dest="use_checkpoint",
        action="store_true",
        help="activation checkpointing: recompute the transformer blocks' activations in the backward "
        "pass (same gradients, less memory); the network must offer set_grad_checkpointing",
    )

    optim = parser.add_argument_group("optimisation (the published recipe by default)")
    optim.add_argument("--max_epochs", type=int, default=400)
    optim.add_argument("--max_iterations", type=int, help="stop after this many iterations if that comes before --max_epochs")
    optim.add_argument("--batch_size", type=int, default=24, help="batch size per process and micro-batch")
    optim.add_argument(
        "--accumulation-steps",
        dest="accumulation_steps",
        type=int,
        default=1,
        help="micro-batches of --batch_size per optimisation step (gradient accumulation): the step "
        "sees batch_size x N slices; the lr rule and the schedule count optimisation steps",
    )
    optim.add_argument("--base_lr", type=float, default=0.05)
    optim.add_argument(
        "--lr_batch_rule",
        default="reference",
        choices=LR_RULES,
        help=f"reference: scale the lr by batch/{REFERENCE_BATCH} when the batch is not {REFERENCE_BATCH} "
        f"but divisible by {REFERENCE_BATCH_DIVISOR}, as the published code does",
    )
    optim.add_argument("--ce_weight", type=float, default=CE_WEIGHT)
    optim.add_argument("--dice_weight", type=float, default=DICE_WEIGHT)
    optim.add_argument("--seed", type=int, default=1234)
    optim.add_argument("--deterministic", type=int, default=1, choices=(0, 1), help="deterministic cuDNN")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="./model_out")
    run.add_argument("--eval_interval", type=int, default=20, help="epochs between evaluations (0: never evaluate)")
    run.add_argument(
        "--eval_batch_size", type=int, help="slices per forward pass when evaluating volumes (default: 16 on a GPU, 1 on a CPU)"
    )
    run.add_argument(
        "--eval_workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes computing evaluation metrics while the network predicts the next case",
    )
    run.add_argument("--device", default="auto", choices=DEVICES)
    run.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES), help="mixed precision (fp16 uses a GradScaler)")
    run.add_argument("--compile", action="store_true", help="torch.compile the network")
    run.add_argument(
        "--resume",
        help="checkpoint to continue from, or 'auto': OUTPUT_DIR/last.pth when it exists, else a "
        "fresh start (one command for the first launch and every requeue)",
    )
    run.add_argument(
        "--resume_accept_changes",
        action="store_true",
        help="resume even though run-defining settings (network, batch, data, lr, size) differ from the "
        "checkpoint's; without it such a resume is refused, naming each change",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output_dir (its checkpoints, logs and args.json are removed first)",
    )
    run.add_argument(
        "--dist_timeout",
        type=float,
        default=DIST_TIMEOUT_MIN,
        help="minutes a process waits in a collective operation under torchrun before giving up",
    )
    add_ignored_flags(parser, IGNORED_FLAGS)
    return parser


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, resolved once from the command line and the --dataset table.

    Saved as ``args.json`` and into every checkpoint (``test.py`` reads ``img_size`` and
    ``dataset`` from it).
    """

    dataset: str
    kind: str
    root_path: str
    test_path: str
    list_dir: str
    train_list_sha256: str | None  # the training list's content, so a resume can tell it changed
    num_classes: int
    class_names: tuple[str, ...]
    img_size: int
    augment: str
    val_cases: int
    num_workers: int
    module: str
    model_kwargs: dict[str, Any]  # the network's full constructor arguments
    model_name: str
    use_checkpoint: bool
    max_epochs: int
    max_iterations: int | None
    batch_size: int
    accumulation_steps: int
    base_lr: float
    lr: float
    lr_batch_rule: str
    ce_weight: float
    dice_weight: float
    seed: int
    deterministic: bool
    output_dir: str
    eval_interval: int
    eval_batch_size: int | None
    eval_workers: int
    device: str
    amp: str
    compile: bool
    resume: str | None
    resume_accept_changes: bool
    overwrite: bool
    dist_timeout: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _at_least(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UserError(f"--{flag} must be at least {minimum}, got {value}")


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """The run's settings: flags left unset filled from the --dataset table, every value checked.
    Returns the config and notes about every value that was filled in or derived, for the log."""
    try:
        info = dataset_info(args.dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    notes = ignored_note(args, IGNORED_FLAGS)
    filled = {}
    for flag, default in (
        ("num_classes", info.num_classes),
        ("root_path", info.root_path),
        ("test_path", info.test_path),
        ("list_dir", info.list_dir),
        ("in_chans", info.in_chans),
    ):
        value = getattr(args, flag)
        if value is None and default is not None:
            value = default
            notes.append(f"--{flag} {default} (from --dataset {args.dataset})")
        filled[flag] = value
    for flag in ("max_epochs", "batch_size", "img_size", "accumulation_steps", "eval_batch_size", "max_iterations"):
        _at_least(flag, getattr(args, flag), 1)
    for flag in ("val_cases", "eval_interval", "eval_workers", "num_workers"):
        _at_least(flag, getattr(args, flag), 0)
    if args.dist_timeout <= 0:
        raise UserError(f"--dist_timeout must be a positive number of minutes, got {args.dist_timeout}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run or replace it, not both")
    num_classes = filled["num_classes"]
    if num_classes < 2:
        raise UserError(f"--num_classes must be at least 2 (background and one class), got {num_classes}")
    if args.ce_weight < 0 or args.dice_weight < 0 or args.ce_weight + args.dice_weight == 0:
        raise UserError(
            f"--ce_weight and --dice_weight must be non-negative and not both 0, got {args.ce_weight}, {args.dice_weight}"
        )
    if args.val_cases and info.kind == IMAGES:
        raise UserError(
            f"--val_cases is for volume data; --dataset {args.dataset} evaluates on its list "
            f"{info.val_list or info.test_list} (edit that list to change the validation images)"
        )
    network_cls = load_network_class(args.module)
    model_kwargs = network_arguments(
        network_cls, num_classes, args.img_size, filled["in_chans"], **parse_model_kwargs(args.model_kwargs)
    )
    if args.use_checkpoint and not hasattr(network_cls, "set_grad_checkpointing"):
        raise UserError(
            f"--use-checkpoint: {args.module} has no set_grad_checkpointing(enable) method; "
            "add one (see networks/DAEFormer.py) or drop the flag"
        )
    step_batch = args.batch_size * args.accumulation_steps
    lr = scaled_lr(args.base_lr, step_batch, args.lr_batch_rule)
    if lr != args.base_lr:
        notes.append(
            f"lr {lr:.6g} = --base_lr {args.base_lr} * batch {step_batch} / {REFERENCE_BATCH}: the published "
            f"code's rule for batches divisible by {REFERENCE_BATCH_DIVISOR}; --lr_batch_rule off keeps --base_lr"
        )
    if args.n_gpu and args.n_gpu > 1 and "WORLD_SIZE" not in os.environ:
        notes.append(
            f"--n_gpu {args.n_gpu} is not how this script uses several GPUs; run "
            f"torchrun --nproc_per_node {args.n_gpu} train.py ... (this run uses one device)"
        )
    train_list = Path(filled["list_dir"]) / info.train_list
    train_list_sha256 = hashlib.sha256(train_list.read_bytes()).hexdigest() if train_list.is_file() else None
    config = RunConfig(
        dataset=args.dataset,
        kind=info.kind,
        root_path=filled["root_path"],
        test_path=filled["test_path"],
        list_dir=filled["list_dir"],
        train_list_sha256=train_list_sha256,
        num_classes=num_classes,
        class_names=tuple(class_names(info, num_classes)),
        img_size=args.img_size,
        augment=args.augment,
        val_cases=args.val_cases,
        num_workers=args.num_workers,
        module=args.module,
        model_kwargs=model_kwargs,
        model_name=args.model_name or args.module.rpartition(".")[2],
        use_checkpoint=args.use_checkpoint,
        max_epochs=args.max_epochs,
        max_iterations=args.max_iterations,
        batch_size=args.batch_size,
        accumulation_steps=args.accumulation_steps,
        base_lr=args.base_lr,
        lr=lr,
        lr_batch_rule=args.lr_batch_rule,
        ce_weight=args.ce_weight,
        dice_weight=args.dice_weight,
        seed=args.seed,
        deterministic=bool(args.deterministic),
        output_dir=args.output_dir,
        eval_interval=args.eval_interval,
        eval_batch_size=args.eval_batch_size,
        eval_workers=args.eval_workers,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        resume=args.resume,
        resume_accept_changes=args.resume_accept_changes,
        overwrite=args.overwrite,
        dist_timeout=args.dist_timeout,
    )
    return config, notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, notes = resolve_config(args)
        return train(config, notes)
    except (UserError, DataError) as error:
        report_failure(f"train.py: error: {error}")
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def report_failure(message: str) -> None:
    """The one-line failure on stderr and, once the run logs to a file, in log.txt too."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    print(message, file=sys.stderr)
    for handler in files:
        handler.emit(logging.LogRecord("train", logging.ERROR, __file__, 0, message, None, None))


def setup_device(choice: str, timeout_min: float = DIST_TIMEOUT_MIN) -> tuple[torch.device, int, int]:
    """The device of this process, its rank and the world size; joins the process group when
    started by torchrun (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(choice, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    return device, (dist.get_rank() if world_size > 1 else 0), world_size


def make_datasets(config: RunConfig, rank: int) -> tuple[Dataset, Any, str]:
    """The training data, the evaluation cases and what they are ("validation" or "test"):
    held-out validation cases when --val_cases K > 0, else the table's validation list when it
    has one, else the test list (the published practice)."""
    info = dataset_info(config.dataset)
    list_dir = Path(config.list_dir)
    train_list = list_dir / info.train_list
    img_size = (config.img_size, config.img_size)
    eval_list, eval_kind = (info.val_list, "validation") if info.val_list else (info.test_list, "test")
    if config.kind == IMAGES:
        train_set = SkinImages(config.root_path, train_list, config.num_classes, img_size, augment=config.augment != "none")
        return train_set, SkinCases(config.test_path, list_dir / eval_list, config.num_classes), eval_kind
    if config.val_cases == 0:
        train_set = SynapseSlices(config.root_path, train_list, config.num_classes, img_size, augment=config.augment)
        return train_set, SynapseVolumes(config.test_path, list_dir / eval_list, config.num_classes), eval_kind
    try:
        names = read_list(train_list)
        train_names, val_cases = split_cases(names, config.val_cases)
    except ValueError as error:
        raise DataError(f"{train_list}: {error}") from None
    # The split is written into the run's folder: it records what was held out, and the
    # training reader takes a list file like any other.
    output_dir = Path(config.output_dir)
    split_list = output_dir / SPLIT_FILE
    if rank == 0:
        split_list.write_text("\n".join(train_names) + "\n")
        (output_dir / VAL_CASES_FILE).write_text("\n".join(val_cases) + "\n")
    if dist.is_initialized():
        dist.barrier()
    train_set = SynapseSlices(config.root_path, split_list, config.num_classes, img_size, augment=config.augment)
    return train_set, slices_to_volumes(config.root_path, names, val_cases, config.num_classes), "validation"


def evaluation_due(epoch: int, config: RunConfig, last_epoch: int, eval_kind: str) -> bool:
    """Evaluate every --eval_interval epochs -- from half-way on when evaluating on the test set,
    as the published code does -- and always after the last epoch; never with --eval_interval 0."""
    done = epoch + 1
    if config.eval_interval == 0:
        return False
    if epoch == last_epoch:
        return True
    if done % config.eval_interval:
        return False
    return eval_kind == "validation" or done >= config.max_epochs / 2


@dataclass
class TrainState:
    """What changes as the run goes: the live objects, the counters and the position a
    checkpoint holds.

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
        False -- inside it, after ``batches_done`` batches. ``streams`` come from
        :meth:`streams`: ``rng`` holds the main process's, ``rank_rng`` every process's."""
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


def changed_settings(payload: dict[str, Any], config: RunConfig) -> list[str]:
    """'flag old -> new' for every run-defining setting that differs from the checkpoint's.

    The network comes from the checkpoint's own ``module`` / ``model_kwargs`` fields; a setting
    an older checkpoint did not record is not compared.
    """
    saved = {**payload["args"], "module": payload["module"], "model_kwargs": payload["model_kwargs"]}
    now = config.to_json()
    return [f"{name} {saved[name]!r} -> {now[name]!r}" for name in RUN_DEFINING if name in saved and saved[name] != now[name]]


def resume(state: TrainState, path: Path, config: RunConfig, rank: int, world_size: int, max_iterations: int) -> None:
    """Continue from ``path``: weights, optimiser, schedule, scaler, counters, random streams and
    the position inside an interrupted epoch. Refuses a changed run (unless told to accept it);
    a new length re-plans the poly schedule as if the run had been planned so from the start."""
    payload = load_checkpoint(path)
    if payload.get("format") != FORMAT:
        raise UserError(f"--resume {path} is not a training checkpoint of this repository (a plain state dict?)")
    saved = payload["args"]
    changes = changed_settings(payload, config)
    if changes and not config.resume_accept_changes:
        raise UserError(
            f"--resume {path} was trained with other settings: {'; '.join(changes)}; give the same flags, "
            "or --resume_accept_changes to continue anyway"
        )
    for change in changes:
        logger.warning("resuming with a changed setting (--resume_accept_changes): %s", change)
    load_weights(unwrap(state.model), payload["model"], path)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if saved.get("amp") == config.amp:
        state.scaler.load_state_dict(payload["scaler"])
    else:
        logger.info("--amp %s where the checkpoint trained with %s: a fresh gradient scaler", config.amp, saved.get("amp"))
    state.iteration, state.best_dice = payload["iteration"], payload["best_dice"]
    state.run_id = payload.get("run_id") or state.run_id
    within = payload.get("within_epoch")
    state.epoch, state.batches_done = (within["epoch"], within["batches_done"]) if within else (payload["epoch"] + 1, 0)
    streams = payload.get("rank_rng") or [payload["rng"]]
    own = streams[rank] if len(streams) == world_size else streams[0]
    restore_rng_state(own)
    state.epoch_rng = own if within else None
    if len(streams) != world_size:
        if rank > 0:  # rank 0's streams were restored everywhere: the others draw their own
            torch.manual_seed(config.seed + rank + 1000 * state.epoch)
        logger.info(
            "%s holds the random streams of %d process(es) and this run has %d: process 0 continues its "
            "streams, the others draw fresh ones (the run goes on, but not draw for draw as it would have)",
            path,
            len(streams),
            world_size,
        )
    if state.scheduler.total_iters != max_iterations:
        state.scheduler.total_iters = max_iterations
        for group in state.optimizer.param_groups:
            group["lr"] = poly_lr(group["initial_lr"], state.iteration, max_iterations)
        logger.warning(
            "the run now has %d iterations in all (the checkpoint planned %d): the poly schedule continues "
            "as if planned so from the start, at lr %.3e",
            max_iterations,
            payload["scheduler"]["total_iters"],
            state.optimizer.param_groups[0]["lr"],
        )
    where = f"inside epoch {state.epoch} after {state.batches_done} batches" if within else f"at epoch {state.epoch}"
    logger.info("resumed run %s from %s %s, iteration %d", state.run_id, path, where, state.iteration)


def check_finite(losses: StepLosses, epoch: int, iteration: int, output_dir: Path) -> None:
    """Stop every process at once on a non-finite loss, pointing to the last good checkpoint."""
    value = losses.loss.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
    if not torch.isfinite(value):
        last = output_dir / LAST
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"the loss became {value.item()} by epoch {epoch}, iteration {iteration}; {kept}; "
            "lower --base_lr, use --amp off or bf16, or check the data"
        )


def train_one_epoch(
    state: TrainState,
    loader: DataLoader,
    criterion: CEDiceLoss,
    config: RunConfig,
    device: torch.device,
    max_iterations: int,
    writer: SummaryWriter | None,
    stop: StopSignal,
) -> tuple[StepLosses | None, dict, bool]:
    """One pass over the loader from batch ``state.batches_done``, one optimisation step per
    ``accumulation_steps`` batches.

    Losses stay on the device; every ``LOG_EVERY`` steps (and at the end) their mean since the
    last read is checked for finiteness and logged, so the GPU is not waited on every step.
    A stop signal ends the epoch at the next step boundary -- under torchrun at the next
    ``LOG_EVERY`` boundary, since asking every process is a collective that waits for the GPU.

    Returns:
        The last mean losses (None if no step ran), the last batch with its images on the device
        (for the picture), and whether the epoch ran to its end.
    """
    output_dir = Path(config.output_dir)
    skip = state.batches_done  # batches an interrupted run already used: drawn again, not trained on
    bar = tqdm(loader, desc=f"epoch {state.epoch}", disable=writer is None, leave=False)
    micro_batches, running, steps, last_batch, mean = [], None, 0, {}, None
    for index, batch in enumerate(bar):
        if index < skip:
            continue
        micro_batches.append((batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)))
        if len(micro_batches) < config.accumulation_steps:
            continue
        losses = train_step(state.model, micro_batches, criterion, state.optimizer, state.scheduler, state.scaler, config.amp)
        last_batch = {"image": batch["image"], "label": batch["label"], "images": micro_batches[-1][0]}
        micro_batches = []
        state.iteration += 1
        state.batches_done = index + 1
        running = losses if running is None else running + losses
        steps += 1
        done = state.iteration >= max_iterations
        read_losses = steps == LOG_EVERY or done
        stopping = not done and (read_losses or not dist.is_initialized()) and stop.requested(device)
        if read_losses or stopping:
            mean = running / steps
            _log_losses(state, mean, writer, bar, output_dir)
            running, steps = None, 0
        if stopping:
            return mean, last_batch, False
        if done:
            break
    if steps:
        mean = running / steps
        _log_losses(state, mean, writer, bar, output_dir)
    return mean, last_batch, True


def _log_losses(state: TrainState, mean: StepLosses, writer: SummaryWriter | None, bar: tqdm, output_dir: Path) -> None:
    check_finite(mean, state.epoch, state.iteration, output_dir)
    if writer is None:
        return
    lr = state.optimizer.param_groups[0]["lr"]
    writer.add_scalar("train/lr", lr, state.iteration)
    writer.add_scalar("train/total_loss", mean.loss.item(), state.iteration)
    writer.add_scalar("train/loss_ce", mean.ce.item(), state.iteration)
    writer.add_scalar("train/loss_dice", mean.dice.item(), state.iteration)
    bar.set_postfix(loss=f"{mean.loss.item():.4f}", lr=f"{lr:.2e}")


def case_names(cases: Any) -> list[str]:
    return list(cases.names) if hasattr(cases, "names") else [case["case_name"] for case in cases]


def evaluate(
    evaluator: Evaluator,
    model: torch.nn.Module,
    cases: Any,
    eval_kind: str,
    state: TrainState,
    config: RunConfig,
    writer: SummaryWriter | None,
) -> EvalResult | None:
    """The periodic evaluation with the engine test.py uses. Under torchrun every process
    evaluates its share of the cases and rank 0 gathers the scores, so no process idles in a
    collective while another evaluates. Rank 0 logs the result, writes it to eval/epoch_{N}/ and
    adds it to TensorBoard; the others return None."""
    start = time.perf_counter()
    if not dist.is_initialized():
        result = evaluator.evaluate(unwrap(model), cases)
    else:
        rank, world = dist.get_rank(), dist.get_world_size()
        share = (cases[index] for index in range(rank, len(cases), world))
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, evaluator.evaluate(unwrap(model), share))
        if rank > 0:
            return None
        result = type(parts[0]).merge(parts, case_names(cases))
    result.log(f"{eval_kind} evaluation after epoch {state.epoch}")
    logger.info("%s evaluation took %.1f s", eval_kind, time.perf_counter() - start)
    result.write(Path(config.output_dir) / EVAL_FOLDER / f"epoch_{state.epoch}")
    result.add_to(writer, eval_kind, state.iteration)
    example = result.example
    writer.add_image(
        f"{eval_kind}/image_truth_prediction",
        panel(example["image"], example["prediction"], example["label"], config.num_classes),
        state.iteration,
    )
    return result


def validate_cases(cases: Any, what: str) -> None:
    """Read every evaluation case once before the first iteration: a corrupt volume, a missing
    mask or a label outside the classes stops the run now, not hours into it."""
    for _ in tqdm(cases, desc=f"checking the {what} cases", leave=False):
        pass


def resume_path(config: RunConfig) -> Path | None:
    """The checkpoint to continue from: --resume PATH, or with --resume auto OUTPUT_DIR/last.pth
    if a run left one."""
    if config.resume is None:
        return None
    if config.resume == AUTO:
        last = Path(config.output_dir) / LAST
        return last if last.is_file() else None
    return Path(config.resume)


def train(config: RunConfig, notes: list[str]) -> int:
    """Run the training; returns the exit status (0, or 128 + the signal that stopped it)."""
    device, rank, world_size = setup_device(config.device, config.dist_timeout)
    main_process = rank == 0
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = resume_path(config)
    with contextlib.ExitStack() as stack:
        if main_process:
            stack.enter_context(RunLock(output_dir))
            prepare_folder(output_dir, resuming=checkpoint is not None, overwrite=config.overwrite)
        if world_size > 1:
            dist.barrier()  # the folder is checked (and cleared) before anyone writes into it
        setup_logging(output_dir / LOG_FILE, enabled=main_process)
        stop = stack.enter_context(StopSignal())
        return run_training(config, notes, device, rank, world_size, checkpoint, stop)


def run_training(
    config: RunConfig,
    notes: list[str],
    device: torch.device,
    rank: int,
    world_size: int,
    checkpoint: Path | None,
    stop: StopSignal,
) -> int:
    main_process = rank == 0
    output_dir = Path(config.output_dir)
    for note in notes:
        logger.info(note)
    if config.resume == AUTO:
        logger.info("--resume auto: %s", f"continuing from {checkpoint}" if checkpoint else "no last.pth yet, starting fresh")
    logger.info("device %s, %d process(es), network %s, output %s", device, world_size, config.module, output_dir)

    seed_everything(config.seed)
    torch.backends.cudnn.deterministic = config.deterministic
    torch.backends.cudnn.benchmark = not config.deterministic

    model = to_device(build_network(config.module, config.model_kwargs), device)
    if config.use_checkpoint:
        model.set_grad_checkpointing(True)
    logger.info(
        "%s(%s): %.2fM parameters",
        config.module.rpartition(".")[2],
        ", ".join(f"{k}={v}" for k, v in config.model_kwargs.items()),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    train_set, eval_cases, eval_kind = make_datasets(config, rank)
    validate_cases(eval_cases, eval_kind)
    # Each rank draws different augmentations; DistributedSampler shuffles from --seed alone.
    torch.manual_seed(config.seed + rank)
    sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed) if world_size > 1 else None
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # On a GPU, re-spawning the workers every epoch costs more than a bitwise-exact resume is
        # worth there (GPU kernels are not bitwise reproducible anyway); on a CPU the workers
        # restart each epoch from the checkpointed random streams, so a resume is exact.
        persistent_workers=config.num_workers > 0 and device.type == "cuda",
    )
    iterations_per_epoch = len(loader) // config.accumulation_steps
    if iterations_per_epoch == 0:
        raise UserError(
            f"--batch_size {config.batch_size} x --accumulation-steps {config.accumulation_steps} is more "
            f"than the {len(train_set)} training slices of one process; lower one of them"
        )
    max_iterations = config.max_epochs * iterations_per_epoch
    if config.max_iterations is not None and config.max_iterations < max_iterations:
        max_iterations = config.max_iterations
    last_epoch = math.ceil(max_iterations / iterations_per_epoch) - 1
    unit = "image" if config.kind == IMAGES else "volume"
    logger.info(
        "%d training %s, %d iterations per epoch, %d iterations in all; evaluation on %d %s %s(s)",
        len(train_set),
        "images" if unit == "image" else "slices",
        iterations_per_epoch,
        max_iterations,
        len(eval_cases),
        eval_kind,
        unit,
    )
    if eval_kind == "test":
        logger.info(
            "evaluating on the TEST volumes, as the published code does (no held-out validation; "
            "--val_cases K holds out K training cases instead); best.pth is only written with --val_cases"
        )

    optimizer = build_optimizer(model, config.lr)
    state = TrainState(
        model,
        optimizer,
        build_scheduler(optimizer, max_iterations),
        torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        run_id=new_run_id(),
    )
    if checkpoint is not None:
        resume(state, checkpoint, config, rank, world_size, max_iterations)
    if main_process:
        (output_dir / ARGS_FILE).write_text(json.dumps({"run_id": state.run_id, **config.to_json()}, indent=2) + "\n")
    logger.info("run %s", state.run_id)
    if world_size > 1:
        state.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        state.model = torch.compile(state.model)
    criterion = CEDiceLoss(config.ce_weight, config.dice_weight)
    eval_settings = EvalSettings(
        (config.img_size, config.img_size),
        config.eval_batch_size or default_batch_size(device),
        device,
        config.amp,
        workers=config.eval_workers,
    )
    evaluator = build_evaluator(dataset_info(config.dataset), config.num_classes, list(config.class_names), eval_settings)
    writer = SummaryWriter(str(output_dir / TENSORBOARD_FOLDER)) if main_process else None
    try:
        return epochs(
            state,
            config,
            loader,
            sampler,
            criterion,
            evaluator,
            eval_cases,
            eval_kind,
            device,
            writer,
            max_iterations,
            last_epoch,
            stop,
        )
    finally:
        if writer is not None:
            writer.close()


def epochs(
    state: TrainState,
    config: RunConfig,
    loader: DataLoader,
    sampler: DistributedSampler | None,
    criterion: CEDiceLoss,
    evaluator: Evaluator,
    eval_cases: Any,
    eval_kind: str,
    device: torch.device,
    writer: SummaryWriter | None,
    max_iterations: int,
    last_epoch: int,
    stop: StopSignal,
) -> int:
    """The epochs from ``state.epoch`` to ``last_epoch``: train, checkpoint, evaluate when due."""
    main_process = writer is not None
    output_dir = Path(config.output_dir)
    state.model.train()
    for epoch in range(state.epoch, last_epoch + 1):
        state.epoch = epoch
        if state.batches_done == 0 or state.epoch_rng is None:
            state.epoch_rng = rng_state()
        if sampler is not None:
            sampler.set_epoch(epoch)
        start, first = time.perf_counter(), state.iteration
        losses, batch, finished = train_one_epoch(state, loader, criterion, config, device, max_iterations, writer, stop)
        pace = (time.perf_counter() - start) / max(1, state.iteration - first)
        if not finished:
            streams = state.streams(finished_epoch=False)
            if main_process:
                save_checkpoint(output_dir / LAST, state.payload(config, streams, finished_epoch=False))
            logger.warning(
                "stopped by %s inside epoch %d after iteration %d; %s holds the position: rerun the same "
                "command with --resume auto (or --resume %s) to continue",
                stop.name,
                epoch,
                state.iteration,
                output_dir / LAST,
                output_dir / LAST,
            )
            return stop.exit_code
        state.batches_done = 0
        if losses is not None:
            logger.info(
                "epoch %d: iteration %d, loss %.4f (ce %.4f, dice %.4f), lr %.3e, %.4f s/iteration",
                epoch,
                state.iteration,
                losses.loss.item(),
                losses.ce.item(),
                losses.dice.item(),
                state.optimizer.param_groups[0]["lr"],
                pace,
            )
        if writer is not None and batch:
            network = unwrap(state.model)
            with torch.no_grad():
                logits = network.eval()(batch["images"][:1])  # eval: a picture must not move BatchNorm statistics
            network.train()
            example = batch["image"][0].float().mean(0).numpy() * IMAGE_STD + IMAGE_MEAN  # back to [0, 1]
            writer.add_image(
                "train/image_truth_prediction",
                panel(example, logits[0].argmax(0).cpu().numpy(), batch["label"][0].numpy(), config.num_classes),
                state.iteration,
            )
        # last.pth first: an evaluation cut short (a kill, a crash) does not lose the epoch.
        streams = state.streams()
        payload = state.payload(config, streams) if main_process else None
        if main_process:
            save_checkpoint(output_dir / LAST, payload)
        if evaluation_due(epoch, config, last_epoch, eval_kind):
            result = evaluate(evaluator, state.model, eval_cases, eval_kind, state, config, writer)
            if main_process and eval_kind == "validation" and result.headline > state.best_dice:
                state.best_dice = payload["best_dice"] = float(result.headline)
                save_checkpoint(output_dir / BEST, payload)
                save_checkpoint(output_dir / LAST, payload)
                logger.info("new best validation mean Dice %.4f: saved %s", state.best_dice, output_dir / BEST)
            if main_process:
                save_checkpoint(output_dir / epoch_checkpoint_name(config.model_name, epoch), payload)
        if dist.is_initialized():
            dist.barrier()
        if stop.requested(device) and epoch < last_epoch:
            logger.warning(
                "stopped by %s after epoch %d; rerun the same command with --resume auto to continue", stop.name, epoch
            )
            return stop.exit_code
    if dist.is_initialized():
        report_replica_agreement(state.model)
    logger.info("training of run %s finished after %d iterations; checkpoints in %s", state.run_id, state.iteration, output_dir)
    if device.type == "cuda":
        logger.info("peak GPU memory %.2f GiB (tensors)", torch.cuda.max_memory_allocated(device) / 2**30)
    return 0


def report_replica_agreement(model: torch.nn.Module) -> None:
    """Log whether every process ends with the same weights (DDP keeps them equal)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], other) for other in gathered[1:])
    logger.info("weights identical on all %d processes: %s", len(gathered), "yes" if same else "NO")


if __name__ == "__main__":
    sys.exit(main())
