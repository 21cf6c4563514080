"""Evaluate a trained network on 3D volumes with the published Synapse protocol, or segment
new CT scans.

    python test.py --volume_path ./data/Synapse/ --output_dir ./model_out
    python test.py --ckpt daeformer_synapse.pth --module networks.DAEFormer.DAEFormer --volume_path ./data/Synapse/

Volumes are predicted slice by slice (cubic resize to the network size, (x - 0.5) / 0.5, argmax,
nearest resize back) in batches, and scored per organ with Dice and HD95: medpy's definitions,
HD95 in voxels and the published empty-mask rules unless told otherwise. Results go to
--test_save_dir (default OUTPUT_DIR/test): metrics.json, metrics.csv, and on request NIfTI
predictions and PNG montages. Pointing --volume_path at NIfTI scans (no labels) writes their
predicted label volumes as NIfTI and computes no metrics. 2D image data sets (--dataset ISIC2018)
are scored with Dice, IoU, sensitivity, specificity and accuracy on the pixels of all test images
pooled (utils/images.py), and per image.

The evaluation is utils/evaluation.py's engine, the one train.py's periodic evaluation runs;
under ``torchrun --nproc_per_node N test.py ...`` the processes share the cases (or the new scans)
and write the same metrics.json as one process. What a checkpoint of train.py records (network,
classes, data set, input size) decides; a flag that contradicts it is an error naming both.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.catalog import DATASETS, IMAGES
from datasets.common import DataError, first_channel
from datasets.readers import evaluation_cases
from utils.checkpoint import find_checkpoint
from utils.cli import SWIN_CONFIG_FLAGS, HelpFormatter, add_ignored_flags, ignored_note
from utils.config import lists_beside
from utils.devices import (
    AMP_DTYPES,
    CPU_BATCH_SIZE,
    DEVICES,
    GPU_BATCH_SIZE,
    Placement,
    keep_freed_memory,
    leave_process_group,
    place_process,
)
from utils.errors import UserError, os_error_line
from utils.evaluation import Spacing, class_positions, parse_class_list, parse_spacing
from utils.loader import DAEFORMER, load_network_class, parse_model_kwargs
from utils.logs import setup_logging
from utils.metrics import CONVENTIONS
from utils.predictor import Predictor
from utils.results import ResultsFolder
from utils.runs import ARGS_FILE, TEST_FOLDER, latest_run_id, make_folder
from utils.scans import PREDICTION_SUFFIX, classify_volume_path, save_nifti, scan_inputs, segmenter
from utils.visualize import montage

logger = logging.getLogger("test")

PNG_MAX = 255
# Flags of the published test.py that mean nothing here (utils/cli.py).
IGNORED_FLAGS = (
    "--max_iterations",
    "--base_lr",
    "--seed",
    "--resume",
    "--accumulation-steps",
    "--use-checkpoint",
    *SWIN_CONFIG_FLAGS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--test_path",
        "--volume_path",
        dest="test_path",
        help="what to evaluate or segment: a data root with test_vol_h5/ below it or that folder itself, "
        "NIfTI scans (a file or a folder) to segment, or for 2D image data the folder holding images/ "
        "and masks/ (--volume_path is the published name)",
    )
    data.add_argument(
        "--dataset",
        help=f"a data set of the table ({', '.join(DATASETS)}) or a dataset.json path, for a plain state dict "
        "(default Synapse); a checkpoint of train.py names its own",
    )
    data.add_argument("--list_dir", help="folder holding the test list (default: the data set's)")
    network = parser.add_argument_group("network and checkpoint")
    network.add_argument("--output_dir", default="./model_out", help="training output folder to take the checkpoint from")
    network.add_argument(
        "--ckpt", help="checkpoint file (default: best.pth, else the final epoch's, else last.pth in --output_dir)"
    )
    network.add_argument(
        "--module",
        help=f"network class for a plain state dict such as the published weights (default {DAEFORMER}); "
        "a checkpoint of train.py names its own",
    )
    network.add_argument("--model_kwargs", default="{}", help="constructor arguments (JSON) for a plain state dict")
    network.add_argument(
        "--num_classes", type=int, help="classes including background (default: the checkpoint's, else the table's)"
    )
    network.add_argument("--img_size", type=int, help="network input size (default: the checkpoint's, else 224)")
    network.add_argument("--model_name", help="prefix of the periodic checkpoints (default: the class name of --module)")
    network.add_argument(
        "--max_epochs", type=int, default=400, help="with --model_name, picks {model_name}_epoch_{max_epochs-1}.pth"
    )
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--metric_convention",
        default="published",
        choices=CONVENTIONS,
        help="published: missed organ = (0, 0), as in the papers; nan: classes absent from both masks are left out",
    )
    evaluation.add_argument(
        "--spacing",
        default="voxel",
        help="HD95 unit: 'voxel' (published), 'file' (each volume's stored spacing, mm), or 'z,y,x' in mm",
    )
    evaluation.add_argument(
        "--eval_batch_size",
        "--batch_size",
        dest="eval_batch_size",
        type=int,
        help=f"slices per forward pass (default {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on a CPU, where "
        "batching does not pay; --batch_size is the published name)",
    )
    evaluation.add_argument(
        "--eval_workers",
        "--workers",
        dest="eval_workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes computing metrics while the network predicts the next case (0 = in this process)",
    )
    evaluation.add_argument(
        "--report_classes",
        help="report and average over these classes only: comma-separated names or ids, e.g. the published 8 "
        "of a 13-organ network (aorta,gallbladder,left kidney,right kidney,liver,pancreas,spleen,stomach)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--test_save_dir", help="where results go (default OUTPUT_DIR/test)")
    output.add_argument("--is_savenii", action="store_true", help="write {case}_pred/_img/_gt.nii.gz")
    output.add_argument(
        "--save_png",
        action="store_true",
        help="volumes: an overlay montage per case (CASE.png); labelled 2D images: NAME_pred.png with the class ids "
        "scaled to 0-255 for viewing (unlabeled images always get NAME_pred.png with the raw ids and NAME_overlay.png)",
    )
    output.add_argument("--z_spacing", type=int, default=1, help="slice spacing written into the saved NIfTI files")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", choices=DEVICES, help="where to run")
    hardware.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES), help="mixed precision for inference")
    hardware.add_argument("--deterministic", type=int, default=1, choices=(0, 1), help="deterministic cuDNN")
    add_ignored_flags(parser, IGNORED_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        run(args)
    except (UserError, DataError) as error:
        print(f"test.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"test.py: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()
    return 0


def load(args: argparse.Namespace, placement: Placement) -> Predictor:
    """The network of --ckpt, or of the training run in --output_dir."""
    if args.module:
        load_network_class(args.module)  # a bad --module is reported before any file is read
    if args.ckpt:
        path = Path(args.ckpt)
    else:
        model_name = args.model_name or (args.module.rpartition(".")[2] if args.module else None)
        path = find_checkpoint(args.output_dir, model_name, args.max_epochs)
    predictor = Predictor.from_checkpoint(
        path,
        args.module,
        parse_model_kwargs(args.model_kwargs),
        args.dataset,
        args.num_classes,
        args.img_size,
        placement.device,
        args.amp,
        args.eval_batch_size,
    )
    if not args.ckpt:
        check_same_run(predictor, Path(args.output_dir))
    if predictor.run_id:
        logger.info("evaluating %s of run %s", path, predictor.run_id)
    return predictor


def check_same_run(predictor: Predictor, output_dir: Path) -> None:
    """Refuse a checkpoint found in --output_dir that a run other than the folder's latest wrote
    (an older run's best.pth, say, left behind when a new run started there)."""
    latest = latest_run_id(output_dir)
    path = predictor.checkpoint
    if latest is None:
        return
    if predictor.run_id is None:
        if path.stat().st_mtime < (output_dir / ARGS_FILE).stat().st_mtime:
            raise UserError(
                f"{path} is older than the latest run {latest} in {output_dir} and names no run; "
                "pass --ckpt to evaluate it anyway"
            )
        return
    if predictor.run_id != latest:
        raise UserError(
            f"{path} was written by run {predictor.run_id}, but the latest run in {output_dir} is {latest}; "
            "pass --ckpt to evaluate it anyway, or evaluate the latest run's checkpoints"
        )


def run(args: argparse.Namespace) -> None:
    """Evaluate the labelled cases of --test_path, or segment the unlabelled inputs found there."""
    spacing = parse_spacing(args.spacing)
    if (args.eval_batch_size is not None and args.eval_batch_size < 1) or args.eval_workers < 0:
        raise UserError(
            f"--eval_batch_size must be at least 1 and --eval_workers at least 0, got {args.eval_batch_size}, {args.eval_workers}"
        )
    placement = place_process(args.device)
    results = ResultsFolder(Path(args.test_save_dir or Path(args.output_dir) / TEST_FOLDER), placement)
    make_folder(results.target, "--test_save_dir")
    setup_logging(results.target / "log.txt", enabled=placement.main)
    for note in ignored_note(args, IGNORED_FLAGS):
        logger.info(note)
    torch.backends.cudnn.deterministic = bool(args.deterministic)
    predictor = load(args, placement)
    target = classify_volume_path(args.test_path or predictor.info.test_path, predictor.info.kind, "--test_path (--volume_path)")
    save_dir = results.open()
    inputs = scan_inputs(target.files, predictor.info.kind, predictor.info.channels)
    if inputs:
        logger.info("segmenting %d unlabelled input(s) of %s; no labels, so no metrics", len(inputs), target.folder)
        segment = segmenter(predictor.info.kind)
        for path in tqdm(inputs[placement.rank :: placement.world_size], desc="inputs", leave=False):
            segment(predictor, path, save_dir, args.save_png)
    else:
        evaluate(args, predictor, placement, target.folder, spacing, save_dir)
    written = results.commit()
    logger.info("%d file(s) written to %s", len(written), results.target)


def evaluate(
    args: argparse.Namespace, predictor: Predictor, placement: Placement, test_path: Path, spacing: Spacing, save_dir: Path
) -> None:
    """Score the labelled cases of ``test_path`` with the published protocol; write metrics.*."""
    info = predictor.info
    list_dir = args.list_dir or lists_beside(test_path, info.test_list) or info.list_dir
    if not args.list_dir and Path(list_dir) != Path(info.list_dir):
        logger.info("--list_dir %s (the lists beside the test data)", list_dir)
    list_file = Path(list_dir) / info.test_list
    cases = evaluation_cases(info, test_path, list_file, predictor.num_classes)
    evaluator = predictor.evaluator(args.metric_convention, spacing, args.eval_workers, placement)
    reported = parse_class_list(args.report_classes) if args.report_classes else None
    if reported:  # a misspelt class is reported before the cases are predicted, not after
        class_positions(predictor.class_names, range(1, predictor.num_classes), reported)
    what = "image(s)" if info.kind == IMAGES else "volume(s)"
    scoring = "" if info.kind == IMAGES else f", convention {args.metric_convention!r}, HD95 in {evaluator.settings.unit}"
    size = predictor.img_size
    logger.info("evaluating %d %s of %s at %dx%d%s", len(cases), what, test_path, size, size, scoring)
    start = time.perf_counter()
    result = evaluator.evaluate(
        predictor.model,
        cases,
        on_case=case_writer(args, predictor, save_dir),
        progress=lambda items, total: tqdm(items, total=total, desc="cases", leave=False, disable=not placement.main),
    )
    if reported:
        result = result.select(reported)
    if placement.main:
        result.log(f"{'test images' if info.kind == IMAGES else 'test volumes'} of {predictor.checkpoint}")
        result.write(save_dir, predictor.source())
        logger.info("evaluation took %.1f s", time.perf_counter() - start)


def case_writer(args: argparse.Namespace, predictor: Predictor, save_dir: Path):
    """What test.py keeps of each prediction besides its scores, as the engine's ``on_case``."""
    names = predictor.class_names

    def write(case: dict, prediction: np.ndarray) -> None:
        name = case["case_name"]
        if predictor.info.kind == IMAGES:
            if args.save_png:
                scale = PNG_MAX // max(1, predictor.num_classes - 1)
                Image.fromarray(prediction * np.uint8(scale)).save(save_dir / f"{name}_pred.png")
            return
        if args.is_savenii:
            save_nifti(prediction.astype(np.float32), save_dir / f"{name}{PREDICTION_SUFFIX}", args.z_spacing)
            save_nifti(first_channel(case["image"]).astype(np.float32), save_dir / f"{name}_img.nii.gz", args.z_spacing)
            save_nifti(case["label"].astype(np.float32), save_dir / f"{name}_gt.nii.gz", args.z_spacing)
        if args.save_png:
            montage(first_channel(case["image"]), prediction, case["label"], names).save(save_dir / f"{name}.png")

    return write


if __name__ == "__main__":
    status = main()
    gc.freeze()  # the interpreter's last collections would walk torch's ~300,000 objects (0.4 s) for nothing
    sys.exit(status)
