"""Train a segmentation network on 2D slices with the published DAE-Former recipe, on a CPU, a
GPU, or many through torchrun (docs/training.md). The published command:

  python train.py --root_path ./data/Synapse/train_npz --test_path ./data/Synapse/test_vol_h5
      --batch_size 20 --eval_interval 20 --max_epochs 400 --module networks.DAEFormer.DAEFormer
"""

from __future__ import annotations

import os

# Loader workers share the CPUs with this process. GNU OpenMP's idle threads spin 300,000 times
# after every parallel region before they sleep, taking a core from a worker that needs it: with
# 10,000 the free-network run of docs/performance.md takes 6.4 s instead of 7.0 s, and a DAE-Former
# step as long as before. libgomp reads this once, as torch loads it, so before any torch import;
# a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import contextlib
import gc
import logging
import sys
from pathlib import Path

from datasets.augment import AUGMENTATIONS
from datasets.catalog import DATASETS
from datasets.common import DataError
from utils.cli import SWIN_CONFIG_FLAGS, HelpFormatter, add_ignored_flags
from utils.config import RunConfig, resolve_config
from utils.devices import AMP_DTYPES, DEVICES, DIST_TIMEOUT_MIN, keep_freed_memory, leave_process_group, place_process
from utils.errors import UserError, os_error_line
from utils.loader import DAEFORMER
from utils.logs import setup_logging
from utils.loop import build_run, fit
from utils.losses import CE_WEIGHT, DICE_WEIGHT
from utils.runs import LOG_FILE, RunLock, StopSignal, make_folder, prepare_folder
from utils.training import LR_RULES, REFERENCE_BATCH, REFERENCE_BATCH_DIVISOR

logger = logging.getLogger("train")

# Flags of the published train.py that mean nothing here (utils/cli.py).
IGNORED_FLAGS = (*SWIN_CONFIG_FLAGS, "--n_gpu", "--z_spacing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data (unset paths and classes come from the --dataset table)")
    data.add_argument(
        "--dataset",
        default="Synapse",
        help=f"{', '.join(DATASETS)} or your data's dataset.json",
    )
    data.add_argument("--root_path", help="training slices (.npz), or images/ and masks/")
    data.add_argument("--test_path", help="evaluation volumes (.npy.h5) or images")
    data.add_argument("--list_dir", help="list files (default: lists/ beside the data, else the table's)")
    data.add_argument("--num_classes", type=int, help="classes including background")
    data.add_argument("--img_size", type=int, default=224, help="network input size")
    data.add_argument("--augment", default="daeformer", choices=AUGMENTATIONS, help="training augmentation")

    model = parser.add_argument_group("network")
    model.add_argument("--module", default=DAEFORMER, metavar="CLASS", help="package.module.ClassName")
    model.add_argument("--model_kwargs", default="{}", metavar="JSON", help="constructor arguments")
    model.add_argument("--in_chans", type=int, help="input channels (default: the network's)")
    model.add_argument("--model_name", help="checkpoint prefix (default: the class name)")
    model.add_argument(
        "--use-checkpoint",
        "--use_checkpoint",
        dest="use_checkpoint",
        action="store_true",
        help="activation checkpointing: less memory",
    )

    optim = parser.add_argument_group("training (the published recipe by default)")
    optim.add_argument("--max_epochs", type=int, default=400, help="epochs")
    optim.add_argument("--max_iterations", type=int, help="stop earlier, after N iterations")
    optim.add_argument("--batch_size", type=int, default=24, help="slices per micro-batch and process")
    optim.add_argument(
        "--accumulation-steps",
        "--accumulation_steps",
        dest="accumulation_steps",
        type=int,
        default=1,
        help="micro-batches per optimiser step",
    )
    optim.add_argument("--base_lr", type=float, default=0.05, help="SGD learning rate")
    optim.add_argument(
        "--lr_batch_rule",
        default="reference",
        choices=LR_RULES,
        help=f"reference: lr x batch/{REFERENCE_BATCH} if batch %% {REFERENCE_BATCH_DIVISOR} == 0",
    )
    optim.add_argument("--ce_weight", type=float, default=CE_WEIGHT, help="cross-entropy weight")
    optim.add_argument("--dice_weight", type=float, default=DICE_WEIGHT, help="Dice loss weight")
    optim.add_argument("--seed", type=int, default=1234, help="random seed")
    optim.add_argument("--deterministic", type=int, default=1, choices=(0, 1), help="deterministic cuDNN")

    evaluation = parser.add_argument_group("evaluation during training")
    evaluation.add_argument("--eval_interval", type=int, default=20, help="epochs between evaluations (0: none)")
    evaluation.add_argument("--val_cases", type=int, default=0, help="validation cases for best.pth")
    evaluation.add_argument("--eval_batch_size", type=int, help="default: 16 on a GPU, 1 on a CPU")
    evaluation.add_argument("--eval_workers", type=int, default=min(4, os.cpu_count() or 1), help="metric processes")

    run = parser.add_argument_group("output and runs")
    run.add_argument("--output_dir", default="./model_out", help="the run's folder")
    run.add_argument("--resume", help="checkpoint, or auto: last.pth if any")
    run.add_argument("--init", help="start a new run from a checkpoint's weights (fine-tuning)")
    run.add_argument("--resume_accept_changes", action="store_true", help="resume despite changed settings")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --output_dir")

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", choices=DEVICES, help="where to train")
    hardware.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES), help="mixed precision")
    hardware.add_argument("--compile", action="store_true", help="torch.compile the network")
    hardware.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    hardware.add_argument("--dist_timeout", type=float, default=DIST_TIMEOUT_MIN, help="minutes torchrun processes wait")
    add_ignored_flags(parser, IGNORED_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return train(*resolve_config(args, IGNORED_FLAGS))
    except (UserError, DataError) as error:
        report_failure(f"train.py: error: {error}")
        return 2
    except OSError as error:
        report_failure(f"train.py: error: {os_error_line(error)}")
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
    with contextlib.ExitStack() as stack:
        if placement.main:
            make_folder(output_dir, "--output_dir")
            stack.enter_context(RunLock(output_dir))
            notes = [*prepare_folder(output_dir, config.resume, config.overwrite), *notes]
        placement.barrier()  # the folder is checked (and cleared) before anyone writes into it
        setup_logging(output_dir / LOG_FILE, enabled=placement.main)
        for note in notes:
            logger.info(note)
        run, state = build_run(config, placement, stack.enter_context(StopSignal()))
        stack.callback(run.log.close)
        return fit(run, state)


if __name__ == "__main__":
    status = main()
    gc.freeze()  # the interpreter's last collections would walk torch's ~300,000 objects (0.4 s) for nothing
    sys.exit(status)
