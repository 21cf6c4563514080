"""Train a segmentation network on 2D slices with the published DAE-Former recipe.

    python train.py --root_path ./data/Synapse/train_npz --test_path ./data/Synapse/test_vol_h5 \
        --batch_size 20 --eval_interval 20 --max_epochs 400 --module networks.DAEFormer.DAEFormer

Runs on CPU, one CUDA GPU, or many GPUs / machines through ``torchrun`` (DistributedDataParallel).
Everything it writes goes under ``--output_dir``: log.txt, args.json, TensorBoard scalars and
panels, and self-describing checkpoints (last.pth every epoch, best.pth by validation Dice,
{model_name}_epoch_{N}.pth at each evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import PolynomialLR
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets.augment import AUGMENTATIONS
from datasets.catalog import DATASETS, IMAGES, class_names, dataset_info
from datasets.common import DataError
from datasets.isic import SkinCases, SkinImages
from datasets.lists import read_list
from datasets.synapse import (
    SynapseSlices,
    SynapseVolumes,
    slices_to_volumes,
    split_cases,
)
from utils import UserError, build_network, load_network_class, network_arguments
from utils.checkpoint import (
    BEST,
    FORMAT,
    LAST,
    epoch_checkpoint_name,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from utils.images import METRIC_NAMES, evaluate_images, scores
from utils.inference import (
    AMP_DTYPES,
    DEVICES,
    autocast,
    default_batch_size,
    evaluate_volume,
    select_device,
)
from utils.logs import setup_logging
from utils.losses import CE_WEIGHT, DICE_WEIGHT, CEDiceLoss
from utils.visualize import panel

logger = logging.getLogger("train")

# The published recipe (SYNAPSE.md): SGD with momentum 0.9 and weight decay 1e-4, poly power 0.9.
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
# The reference scales the lr by batch/24 when the batch is not 24 but divisible by 5.
REFERENCE_BATCH = 24
REFERENCE_BATCH_DIVISOR = 5


class TrainingStopped(UserError):
    """Training cannot go on (a non-finite loss); the last good checkpoint stays."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (defaults come from the --dataset table)")
    data.add_argument("--dataset", default="Synapse",
                      help=f"a data set of the table in datasets/catalog.py ({', '.join(DATASETS)}) or the path of "
                           "the dataset.json that datasets.prepare.nifti writes for your own data")
    data.add_argument("--root_path", help="folder of the training slices (.npz), or of images/ and masks/ for 2D image data")
    data.add_argument("--test_path", help="folder of the evaluation volumes (.npy.h5) or images, for the periodic evaluation")
    data.add_argument("--list_dir", help="folder holding the list files (train.txt, test_vol.txt, ...)")
    data.add_argument("--num_classes", type=int, help="classes including background")
    data.add_argument("--img_size", type=int, default=224, help="network input size; slices are resized to it")
    data.add_argument("--z_spacing", type=int, default=1, help="accepted for compatibility; used by test.py's NIfTI output")
    data.add_argument("--augment", default="daeformer", choices=AUGMENTATIONS, help="training augmentation")
    data.add_argument("--val_cases", type=int, default=0,
                      help="hold out the last K training cases as validation volumes for best.pth; "
                           "0 = the published behaviour (periodic evaluation on the test volumes)")
    data.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader worker processes")

    model = parser.add_argument_group("network")
    model.add_argument("--module", default="networks.DAEFormer.DAEFormer", help="network class as package.module.ClassName")
    model.add_argument("--model_kwargs", default="{}", help="extra constructor arguments as JSON, e.g. '{\"base_channels\": 16}'")
    model.add_argument("--in_chans", type=int, help="input channels passed to the constructor (default: the network's own)")
    model.add_argument("--model_name", help="prefix of the periodic checkpoints (default: the class name of --module)")

    optim = parser.add_argument_group("optimisation (the published recipe by default)")
    optim.add_argument("--max_epochs", type=int, default=400)
    optim.add_argument("--max_iterations", type=int, help="stop after this many iterations if that comes before --max_epochs")
    optim.add_argument("--batch_size", type=int, default=24, help="batch size per process")
    optim.add_argument("--base_lr", type=float, default=0.05)
    optim.add_argument("--lr_batch_rule", default="reference", choices=("reference", "off"),
                       help="reference: scale the lr by batch/24 when the batch is not 24 but divisible by 5, as the published code does")
    optim.add_argument("--ce_weight", type=float, default=CE_WEIGHT)
    optim.add_argument("--dice_weight", type=float, default=DICE_WEIGHT)
    optim.add_argument("--seed", type=int, default=1234)
    optim.add_argument("--deterministic", type=int, default=1, choices=(0, 1), help="deterministic cuDNN")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="./model_out")
    run.add_argument("--eval_interval", type=int, default=20, help="epochs between evaluations")
    run.add_argument("--eval_batch_size", type=int,
                     help="slices per forward pass when evaluating volumes (default: 16 on a GPU, 1 on a CPU)")
    run.add_argument("--device", default="auto", choices=DEVICES)
    run.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES), help="mixed precision (fp16 uses a GradScaler)")
    run.add_argument("--compile", action="store_true", help="torch.compile the network")
    run.add_argument("--resume", help="checkpoint to continue from (e.g. OUTPUT_DIR/last.pth)")
    run.add_argument("--n_gpu", type=int, default=1, help="accepted for compatibility; use torchrun for several GPUs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        network_cls = load_network_class(args.module)
        train(args, network_cls)
    except (UserError, DataError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def resolve_arguments(args: argparse.Namespace) -> list[str]:
    """Fill the flags left unset from the --dataset table and check the rest. Returns notes
    about every value that was filled in or derived, for the log."""
    try:
        info = dataset_info(args.dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    notes = []
    for flag, default in (("num_classes", info.num_classes), ("root_path", info.root_path),
                          ("test_path", info.test_path), ("list_dir", info.list_dir), ("in_chans", info.in_chans)):
        if default is None:
            continue
        if getattr(args, flag) is None:
            setattr(args, flag, default)
            notes.append(f"--{flag} {default} (from --dataset {args.dataset})")
    if args.model_name is None:
        args.model_name = args.module.rpartition(".")[2]
    for flag in ("max_epochs", "batch_size", "eval_interval", "img_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise UserError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    if args.max_iterations is not None and args.max_iterations < 1:
        raise UserError(f"--max_iterations must be at least 1, got {args.max_iterations}")
    if args.num_classes < 2:
        raise UserError(f"--num_classes must be at least 2 (background and one class), got {args.num_classes}")
    if args.ce_weight < 0 or args.dice_weight < 0 or args.ce_weight + args.dice_weight == 0:
        raise UserError(f"--ce_weight and --dice_weight must be non-negative and not both 0, got {args.ce_weight}, {args.dice_weight}")
    if args.val_cases < 0:
        raise UserError(f"--val_cases must be 0 or more, got {args.val_cases}")
    if args.val_cases and info.kind == IMAGES:
        raise UserError(f"--val_cases is for volume data; --dataset {args.dataset} evaluates on its list "
                        f"{info.val_list or info.test_list} (edit that list to change the validation images)")
    try:
        args.model_kwargs_dict = json.loads(args.model_kwargs)
    except json.JSONDecodeError as error:
        raise UserError(f"--model_kwargs is not valid JSON ({error}); e.g. --model_kwargs '{{\"base_channels\": 16}}'") from None
    if not isinstance(args.model_kwargs_dict, dict):
        raise UserError(f"--model_kwargs must be a JSON object, got {args.model_kwargs}")
    args.lr = args.base_lr
    if args.lr_batch_rule == "reference" and args.batch_size != REFERENCE_BATCH and args.batch_size % REFERENCE_BATCH_DIVISOR == 0:
        args.lr = args.base_lr * args.batch_size / REFERENCE_BATCH
        notes.append(f"lr {args.lr:.6g} = --base_lr {args.base_lr} * batch {args.batch_size} / {REFERENCE_BATCH}: the published "
                     f"code's rule for batches divisible by {REFERENCE_BATCH_DIVISOR}; --lr_batch_rule off keeps --base_lr")
    if args.n_gpu > 1 and "WORLD_SIZE" not in os.environ:
        notes.append(f"--n_gpu {args.n_gpu} is not how this script uses several GPUs; run "
                     f"torchrun --nproc_per_node {args.n_gpu} train.py ... (this run uses one device)")
    return notes


def setup_device(choice: str) -> tuple[torch.device, int, int]:
    """The device of this process, its rank and the world size; joins the process group when
    started by torchrun (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(choice, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device, (dist.get_rank() if world_size > 1 else 0), world_size


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random stream training draws from, in a form ``weights_only`` loading accepts."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_datasets(args: argparse.Namespace, rank: int) -> tuple[SynapseSlices | SkinImages, list[dict] | SynapseVolumes | SkinCases, str]:
    """The training data and the evaluation cases: held-out validation cases when
    --val_cases K > 0, else the table's validation list when it has one, else the test list
    (the published practice)."""
    info = dataset_info(args.dataset)
    list_dir = Path(args.list_dir)
    train_list = list_dir / info.train_list
    img_size = (args.img_size, args.img_size)
    eval_list, eval_kind = (info.val_list, "validation") if info.val_list else (info.test_list, "test")
    if info.kind == IMAGES:
        train_set = SkinImages(args.root_path, train_list, args.num_classes, img_size, augment=args.augment != "none")
        return train_set, SkinCases(args.test_path, list_dir / eval_list, args.num_classes), eval_kind
    if args.val_cases == 0:
        train_set = SynapseSlices(args.root_path, train_list, args.num_classes, img_size, augment=args.augment)
        evaluation = SynapseVolumes(args.test_path, list_dir / eval_list, args.num_classes)
        return train_set, evaluation, eval_kind
    try:
        names = read_list(train_list)
        train_names, val_cases = split_cases(names, args.val_cases)
    except ValueError as error:
        raise DataError(f"{train_list}: {error}") from None
    # The split is written into the run's folder: it records what was held out, and the
    # training reader takes a list file like any other.
    split_list = Path(args.output_dir) / "train_split.txt"
    if rank == 0:
        split_list.write_text("\n".join(train_names) + "\n")
        (Path(args.output_dir) / "val_cases.txt").write_text("\n".join(val_cases) + "\n")
    if dist.is_initialized():
        dist.barrier()
    train_set = SynapseSlices(args.root_path, split_list, args.num_classes, img_size, augment=args.augment)
    validation = slices_to_volumes(args.root_path, names, val_cases, args.num_classes) if rank == 0 else []
    return train_set, validation, "validation"


def evaluation_due(epoch: int, args: argparse.Namespace, last_epoch: int, eval_kind: str) -> bool:
    """Evaluate every --eval_interval epochs -- from half-way on when evaluating on the test set,
    as the published code does -- and always after the last epoch."""
    done = epoch + 1
    if epoch == last_epoch:
        return True
    if done % args.eval_interval:
        return False
    return eval_kind == "validation" or done >= args.max_epochs / 2


def evaluate(model: torch.nn.Module, cases, args: argparse.Namespace, device: torch.device) -> tuple[np.ndarray, list[str], dict]:
    """Mean (Dice, HD95) per class over the cases (published convention), their names, and one
    example slice for the TensorBoard panel."""
    model.eval()
    scores, names, example = [], [], {}
    for case in cases:
        prediction, case_scores = evaluate_volume(
            model, case, args.num_classes, (args.img_size, args.img_size), args.eval_batch_size, device, args.amp
        )
        scores.append(case_scores)
        names.append(case["case_name"])
        if not example:
            middle = int(np.argmax((case["label"] > 0).sum(axis=(1, 2))))
            example = {"image": case["image"][middle], "prediction": prediction[middle], "label": case["label"][middle]}
    model.train()
    return np.mean(scores, axis=0), names, example


def evaluate_2d(model: torch.nn.Module, cases: SkinCases, args: argparse.Namespace, device: torch.device, eval_kind: str,
                epoch: int, writer: SummaryWriter, iteration: int) -> tuple[float, dict]:
    """Score 2D images on the confusion counts pooled over all of them (see utils.images); logs
    and writes the scalars. Returns the mean pooled Dice over the foreground classes and an
    example for the panel (image in grey)."""
    model.eval()
    counts, names, example = evaluate_images(model, cases, args.num_classes, (args.img_size, args.img_size), device, args.amp)
    model.train()
    pooled = scores(counts.sum(axis=0))  # (classes - 1, metrics)
    means = pooled.mean(axis=0)
    logger.info("%s evaluation after epoch %d (%d images, pixels pooled): %s", eval_kind, epoch, len(names),
                ", ".join(f"{metric} {value:.4f}" for metric, value in zip(METRIC_NAMES, means)))
    for name, row in zip(class_names(dataset_info(args.dataset), args.num_classes), pooled):
        logger.info("  %-12s %s", name, "  ".join(f"{metric} {value:.4f}" for metric, value in zip(METRIC_NAMES, row)))
    for metric, value in zip(METRIC_NAMES, means):
        writer.add_scalar(f"{eval_kind}/{metric}", value, iteration)
    example = {**example, "image": example["image"].mean(axis=2) / 255.0}
    return float(means[0]), example


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside the torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def checkpoint_payload(model, optimizer, scheduler, scaler, args, model_kwargs, epoch, iteration, best_dice) -> dict:
    bare = unwrap(model)
    saved_args = {k: v for k, v in vars(args).items() if k != "model_kwargs_dict"}
    return {
        "format": FORMAT,
        "module": args.module,
        "model_kwargs": model_kwargs,
        "model": bare.state_dict(),
        "args": saved_args,
        "epoch": epoch,
        "iteration": iteration,
        "best_dice": best_dice,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
    }


def check_finite(loss: torch.Tensor, epoch: int, iteration: int, output_dir: Path) -> None:
    """Stop every process at once on a non-finite loss, pointing to the last good checkpoint."""
    value = loss.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
    if not torch.isfinite(value):
        last = output_dir / LAST
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"the loss became {value.item()} at epoch {epoch}, iteration {iteration}; {kept}; "
            "lower --base_lr, use --amp off or bf16, or check the data"
        )


def train(args: argparse.Namespace, network_cls: type[torch.nn.Module]) -> None:
    notes = resolve_arguments(args)
    info = dataset_info(args.dataset)
    device, rank, world_size = setup_device(args.device)
    if args.eval_batch_size is None:
        args.eval_batch_size = default_batch_size(device)
    main_process = rank == 0
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir / "log.txt", enabled=main_process)
    for note in notes:
        logger.info(note)
    if main_process:
        saved = {k: v for k, v in vars(args).items() if k != "model_kwargs_dict"}
        (output_dir / "args.json").write_text(json.dumps(saved, indent=2) + "\n")
    logger.info("device %s, %d process(es), network %s, output %s", device, world_size, args.module, output_dir)

    seed_everything(args.seed)
    torch.backends.cudnn.deterministic = bool(args.deterministic)
    torch.backends.cudnn.benchmark = not args.deterministic

    model_kwargs = network_arguments(network_cls, args.num_classes, args.img_size, args.in_chans, **args.model_kwargs_dict)
    model = build_network(args.module, model_kwargs).to(device)
    logger.info("%s(%s): %.2fM parameters", network_cls.__name__,
                ", ".join(f"{k}={v}" for k, v in model_kwargs.items()), sum(p.numel() for p in model.parameters()) / 1e6)

    train_set, eval_cases, eval_kind = make_datasets(args, rank)
    # Each rank draws different augmentations; DistributedSampler shuffles from --seed alone.
    torch.manual_seed(args.seed + rank)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed) if world_size > 1 else None
    loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=args.num_workers, pin_memory=device.type == "cuda", persistent_workers=False,
    )
    iterations_per_epoch = len(loader)
    max_iterations = args.max_epochs * iterations_per_epoch
    if args.max_iterations is not None and args.max_iterations < max_iterations:
        max_iterations = args.max_iterations
    last_epoch = math.ceil(max_iterations / iterations_per_epoch) - 1
    unit = "image" if info.kind == IMAGES else "volume"
    logger.info("%d training %s, %d iterations per epoch, %d iterations in all; evaluation on %d %s %s(s)",
                len(train_set), "images" if unit == "image" else "slices", iterations_per_epoch, max_iterations,
                len(eval_cases), eval_kind, unit)
    if eval_kind == "test":
        logger.info("evaluating on the TEST volumes, as the published code does (no held-out validation; "
                    "--val_cases K holds out K training cases instead); best.pth is only written with --val_cases")

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = PolynomialLR(optimizer, total_iters=max_iterations, power=POLY_POWER)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    criterion = CEDiceLoss(args.ce_weight, args.dice_weight)

    start_epoch, iteration, best_dice = 0, 0, -1.0
    if args.resume:
        payload = load_checkpoint(args.resume)
        if payload.get("format") != FORMAT:
            raise UserError(f"--resume {args.resume} is not a training checkpoint of this repository (a plain state dict?)")
        if payload["module"] != args.module or payload["model_kwargs"] != model_kwargs:
            raise UserError(f"--resume {args.resume} was trained as {payload['module']}({payload['model_kwargs']}), "
                            f"not {args.module}({model_kwargs}); give the same --module and --model_kwargs")
        load_weights(model, payload["model"], args.resume)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        start_epoch, iteration, best_dice = payload["epoch"] + 1, payload["iteration"], payload["best_dice"]
        restore_rng_state(payload["rng"])
        if rank > 0:  # the checkpoint holds rank 0's streams; the others draw their own
            torch.manual_seed(args.seed + rank + 1000 * start_epoch)
        logger.info("resumed from %s: epoch %d, iteration %d", args.resume, start_epoch, iteration)

    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    writer = SummaryWriter(str(output_dir / "tensorboard")) if main_process else None

    model.train()
    for epoch in range(start_epoch, last_epoch + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch}/{last_epoch}", disable=not main_process, leave=False)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                logits = model(images)
            loss, ce, dice = criterion(logits, labels)
            check_finite(loss, epoch, iteration, output_dir)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            if writer is not None:
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], iteration)
                writer.add_scalar("train/total_loss", loss.item(), iteration)
                writer.add_scalar("train/loss_ce", ce.item(), iteration)
                writer.add_scalar("train/loss_dice", dice.item(), iteration)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if iteration >= max_iterations:
                break
        logger.info("epoch %d: iteration %d, loss %.4f (ce %.4f, dice %.4f), lr %.3e",
                    epoch, iteration, loss.item(), ce.item(), dice.item(), optimizer.param_groups[0]["lr"])
        if writer is not None:
            example = batch["image"][0, 0].numpy() * 0.5 + 0.5
            writer.add_image("train/image_truth_prediction",
                             panel(example, logits[0].argmax(0).cpu().numpy(), batch["label"][0].numpy(), args.num_classes), iteration)

        if main_process and evaluation_due(epoch, args, last_epoch, eval_kind):
            # Rank 0 evaluates alone, so it must not go through DDP's collective forward.
            if info.kind == IMAGES:
                mean_dice, example = evaluate_2d(unwrap(model), eval_cases, args, device, eval_kind, epoch, writer, iteration)
            else:
                means, names, example = evaluate(unwrap(model), eval_cases, args, device)
                mean_dice, mean_hd95 = means.mean(axis=0)
                logger.info("%s evaluation after epoch %d (%d cases): mean Dice %.4f, mean HD95 %.2f voxels",
                            eval_kind, epoch, len(names), mean_dice, mean_hd95)
                for name, (dice_c, hd_c) in zip(class_names(info, args.num_classes), means):
                    logger.info("  %-12s Dice %.4f  HD95 %.2f", name, dice_c, hd_c)
                writer.add_scalar(f"{eval_kind}/mean_dice", mean_dice, iteration)
                writer.add_scalar(f"{eval_kind}/mean_hd95", mean_hd95, iteration)
            writer.add_image(f"{eval_kind}/image_truth_prediction",
                             panel(example["image"], example["prediction"], example["label"], args.num_classes), iteration)
            if eval_kind == "validation" and mean_dice > best_dice:
                best_dice = float(mean_dice)
                save_checkpoint(output_dir / BEST, checkpoint_payload(model, optimizer, scheduler, scaler, args,
                                                                      model_kwargs, epoch, iteration, best_dice))
                logger.info("new best validation mean Dice %.4f: saved %s", best_dice, output_dir / BEST)
            save_checkpoint(output_dir / epoch_checkpoint_name(args.model_name, epoch),
                            checkpoint_payload(model, optimizer, scheduler, scaler, args, model_kwargs, epoch, iteration, best_dice))
        if main_process:
            save_checkpoint(output_dir / LAST, checkpoint_payload(model, optimizer, scheduler, scaler, args,
                                                                  model_kwargs, epoch, iteration, best_dice))
        if world_size > 1:
            dist.barrier()
    if world_size > 1:
        report_replica_agreement(model)
    if writer is not None:
        writer.close()
    logger.info("training finished after %d iterations; checkpoints in %s", iteration, output_dir)


def report_replica_agreement(model: torch.nn.Module) -> None:
    """Log whether every process ends with the same weights (DDP keeps them equal)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], other) for other in gathered[1:])
    logger.info("weights identical on all %d processes: %s", len(gathered), "yes" if same else "NO")


if __name__ == "__main__":
    sys.exit(main())
