"""Train a segmentation network on 2D slices with the published DAE-Former recipe.

    python train.py --root_path ./data/Synapse/train_npz --test_path ./data/Synapse/test_vol_h5 \
        --batch_size 20 --eval_interval 20 --max_epochs 400 --module networks.DAEFormer.DAEFormer

Runs on CPU, one CUDA GPU, or many GPUs / machines through ``torchrun`` (DistributedDataParallel).
Everything it writes goes under ``--output_dir``: log.txt, args.json, TensorBoard scalars and
panels, self-describing checkpoints (last.pth every epoch, best.pth by validation Dice,
{model_name}_epoch_{N}.pth at each evaluation) and each evaluation's metrics.json / metrics.csv
(eval/epoch_{N}/), written by the same engine as test.py's.

The script parses, resolves the run's settings once (utils/config.py), builds the run and fits it
(utils/loop.py); the recipe's loop is ``utils.loop.fit``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from datasets.augment import AUGMENTATIONS
from datasets.catalog import DATASETS
from datasets.common import DataError
from utils.checkpointer import resume_path
from utils.cli import SWIN_CONFIG_FLAGS, add_ignored_flags
from utils.config import RunConfig, resolve_config
from utils.devices import AMP_DTYPES, DEVICES, DIST_TIMEOUT_MIN, leave_process_group, place_process
from utils.errors import UserError
from utils.loader import DAEFORMER
from utils.logs import setup_logging
from utils.loop import build_run, fit
from utils.losses import CE_WEIGHT, DICE_WEIGHT
from utils.runs import LOG_FILE, RunLock, StopSignal, prepare_folder
from utils.training import LR_RULES, REFERENCE_BATCH, REFERENCE_BATCH_DIVISOR

logger = logging.getLogger("train")

# Flags of the published train.py that mean nothing here (utils/cli.py).
IGNORED_FLAGS = (*SWIN_CONFIG_FLAGS, "--n_gpu", "--z_spacing")


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
        "--use_checkpoint",
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
        "--accumulation_steps",
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
        "--init",
        help="start a NEW run from the network weights of a checkpoint (a run's .pth or a plain state dict "
        "such as the published weights); tensors of another shape (the head for another class count, the "
        "first layer for another channel count) keep their fresh initialisation and are named in the log; "
        "optimiser, schedule and epoch start fresh",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(*resolve_config(args, IGNORED_FLAGS))
    except (UserError, DataError) as error:
        report_failure(f"train.py: error: {error}")
        return 2
    finally:
        leave_process_group()


def report_failure(message: str) -> None:
    """The one-line failure on stderr and, once the run logs to a file, in log.txt too."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    print(message, file=sys.stderr)
    for handler in files:
        handler.emit(logging.LogRecord("train", logging.ERROR, __file__, 0, message, None, None))


def train(config: RunConfig, notes: list[str]) -> int:
    """Take the run's folder, build the run and fit it; returns the exit status (0, or 128 + the
    signal that stopped it)."""
    placement = place_process(config.device, config.dist_timeout)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if placement.main:
            stack.enter_context(RunLock(output_dir))
            prepare_folder(output_dir, resuming=resume_path(config) is not None, overwrite=config.overwrite)
        placement.barrier()  # the folder is checked (and cleared) before anyone writes into it
        setup_logging(output_dir / LOG_FILE, enabled=placement.main)
        for note in notes:
            logger.info(note)
        run, state = build_run(config, placement, stack.enter_context(StopSignal()))
        stack.callback(run.log.close)
        return fit(run, state)


if __name__ == "__main__":
    sys.exit(main())
