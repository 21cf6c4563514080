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
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from datasets.catalog import DATASETS, IMAGES, DatasetInfo, class_names, dataset_info
from datasets.common import DataError, normalise_volume
from datasets.isic import SkinCases
from datasets.synapse import SynapseVolumes
from utils import UserError, load_network_class, network_arguments
from utils.checkpoint import (
    find_checkpoint,
    is_self_describing,
    load_checkpoint,
    model_from_payload,
)
from utils.images import METRIC_NAMES, confusion, predict_image, scores
from utils.inference import (
    AMP_DTYPES,
    CPU_BATCH_SIZE,
    DEVICES,
    GPU_BATCH_SIZE,
    default_batch_size,
    predict_volume,
    select_device,
)
from utils.logs import setup_logging
from utils.metrics import CONVENTIONS, metrics_for_classes
from utils.visualize import class_colours, panel

logger = logging.getLogger("test")

DEFAULT_MODULE = "networks.DAEFormer.DAEFormer"  # what the published plain state dict holds
VOLUME_FOLDER = "test_vol_h5"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MONTAGE_SLICES = 6
MONTAGE_MIN_SIDE = 192  # slices smaller than this are enlarged (nearest) for reading
LEGEND_LINE = 18
PNG_MAX = 255


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume_path", help="data root with test_vol_h5/ below it, that folder itself, "
                                              "NIfTI scans (a file or a folder) to segment, or for 2D image data "
                                              "the folder holding images/ and masks/")
    parser.add_argument("--dataset", default="Synapse",
                        help=f"a data set of the table ({', '.join(DATASETS)}) or a dataset.json path; "
                             "a checkpoint of train.py names its own")
    parser.add_argument("--list_dir", help="folder holding the test list (default: the --dataset table's)")
    parser.add_argument("--num_classes", type=int, help="classes including background (default: the checkpoint's, else the table's)")
    parser.add_argument("--output_dir", default="./model_out", help="training output folder to take the checkpoint from")
    parser.add_argument("--ckpt", help="checkpoint file (default: best.pth, else the final epoch's, else last.pth in --output_dir)")
    parser.add_argument("--module", help="network class for a plain state dict such as the published weights "
                                         f"(default {DEFAULT_MODULE}); a checkpoint of train.py names its own")
    parser.add_argument("--model_kwargs", default="{}", help="constructor arguments (JSON) for a plain state dict")
    parser.add_argument("--model_name", help="prefix of the periodic checkpoints (default: the class name of --module)")
    parser.add_argument("--max_epochs", type=int, default=400, help="with --model_name, picks {model_name}_epoch_{max_epochs-1}.pth")
    parser.add_argument("--img_size", type=int, help="network input size (default: the checkpoint's, else 224)")
    parser.add_argument("--batch_size", type=int, help=f"slices per forward pass (default {GPU_BATCH_SIZE} on a GPU, "
                                                        f"{CPU_BATCH_SIZE} on a CPU, where batching does not pay)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES), help="mixed precision for inference")
    parser.add_argument("--metric_convention", default="published", choices=CONVENTIONS,
                        help="published: missed organ = (0, 0), as in the papers; nan: classes absent from both masks are left out")
    parser.add_argument("--spacing", default="voxel",
                        help="HD95 unit: 'voxel' (published), 'file' (each volume's stored spacing, mm), or 'z,y,x' in mm")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes computing metrics while the network predicts the next case (0 = in this process)")
    parser.add_argument("--test_save_dir", help="where results go (default OUTPUT_DIR/test)")
    parser.add_argument("--is_savenii", action="store_true", help="write {case}_pred/_img/_gt.nii.gz")
    parser.add_argument("--save_png", action="store_true", help="write an overlay montage per case")
    parser.add_argument("--z_spacing", type=int, default=1, help="slice spacing written into the saved NIfTI files")
    parser.add_argument("--seed", type=int, default=1234, help="accepted for compatibility; inference draws no random numbers")
    parser.add_argument("--deterministic", type=int, default=1, choices=(0, 1))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.module:
            load_network_class(args.module)
        run(args)
    except (UserError, DataError) as error:
        print(f"test.py: error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_spacing(text: str) -> str | tuple[float, float, float]:
    if text in ("voxel", "file"):
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise UserError(f"--spacing {text!r} must be 'voxel', 'file' or three positive mm values 'z,y,x', e.g. 2.5,0.8,0.8")
    return values


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any], Path]:
    """The network and its weights from --ckpt or the training run in --output_dir; returns the
    network (eval mode), its constructor arguments, the checkpoint's training arguments (empty
    for a plain state dict) and the checkpoint path."""
    if args.ckpt:
        path = Path(args.ckpt)
    else:
        model_name = args.model_name or (args.module.rpartition(".")[2] if args.module else None)
        path = find_checkpoint(args.output_dir, model_name, args.max_epochs)
    payload = load_checkpoint(path)
    if is_self_describing(payload):
        model = model_from_payload(payload, path, args.module)
        logger.info("%s: %s(%s), trained for %d epoch(s)", path, payload["module"], payload["model_kwargs"], payload["epoch"] + 1)
        return model.eval(), payload["model_kwargs"], payload["args"], path
    try:
        extra = json.loads(args.model_kwargs)
    except json.JSONDecodeError as error:
        raise UserError(f"--model_kwargs is not valid JSON: {error}") from None
    module = args.module or DEFAULT_MODULE
    info = checked_info(args.dataset)
    num_classes = args.num_classes or info.num_classes
    kwargs = network_arguments(load_network_class(module), num_classes, args.img_size, info.in_chans, **extra)
    logger.info("%s is a plain state dict: loading it into %s(%s)", path, module, kwargs)
    return model_from_payload(payload, path, module, kwargs).eval(), kwargs, {}, path


def checked_info(dataset: str) -> DatasetInfo:
    """The table entry of ``dataset``; a UserError (one line) for an unknown name or bad JSON."""
    try:
        return dataset_info(dataset)
    except ValueError as error:
        raise UserError(str(error)) from None


def submit(executor: Executor | None, fn, *args: Any) -> Future:
    """Run ``fn`` in a worker process, or here and now when there are no workers."""
    if executor is not None:
        return executor.submit(fn, *args)
    future: Future = Future()
    future.set_result(fn(*args))
    return future


def case_spacing(choice: str | tuple[float, float, float], case: dict) -> tuple[float, ...] | None:
    if choice == "voxel":
        return None
    if choice == "file":
        if case["spacing"] is None:
            raise UserError(f"volume {case['case_name']} stores no spacing; use --spacing z,y,x (mm) or --spacing voxel")
        return case["spacing"]
    return choice


def find_nifti(path: Path) -> list[Path]:
    """NIfTI scans named by --volume_path (a file or the files of a folder), if any."""
    if path.is_file():
        return [path] if path.name.endswith(NIFTI_SUFFIXES) else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.endswith(("_pred.nii.gz", "_pred.nii")))


def nifti_stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def montage(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, names: list[str]) -> Image.Image:
    """Rows of image | ground truth | prediction for up to MONTAGE_SLICES slices that show an
    organ, under column titles and a legend of the organ colours; small slices are enlarged."""
    num_classes = len(names) + 1
    shown = (prediction > 0) if truth is None else (prediction > 0) | (truth > 0)
    candidates = np.flatnonzero(shown.any(axis=(1, 2)))
    if candidates.size == 0:
        candidates = np.arange(image.shape[0])
    picks = candidates[np.linspace(0, candidates.size - 1, min(MONTAGE_SLICES, candidates.size)).round().astype(int)]
    rows = [panel(image[z], prediction[z], None if truth is None else truth[z], num_classes) for z in picks]
    scale = max(1, MONTAGE_MIN_SIDE // image.shape[2])
    grid = np.concatenate(rows, axis=1).transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
    width = image.shape[2] * scale
    columns = ["image", "prediction"] if truth is None else ["image", "ground truth", "prediction"]

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, x, y = [], 4, LEGEND_LINE
    for name, colour in zip(names, class_colours(num_classes)):
        span = 14 + int(draw.textlength(name)) + 10
        if x + span > grid.shape[1] and x > 4:
            x, y = 4, y + LEGEND_LINE
        entries.append((x, y, name, colour))
        x += span
    header = y + LEGEND_LINE
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "black")
    canvas.paste(Image.fromarray(np.ascontiguousarray(grid)), (0, header))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(columns):
        draw.text((k * width + 4, 4), title, fill="white")
    for x, y, name, colour in entries:
        draw.rectangle((x, y + 4, x + 10, y + 14), fill=colour)
        draw.text((x + 14, y + 3), name, fill="white")
    return canvas


def save_nifti(array: np.ndarray, path: Path, z_spacing: int) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1, 1, z_spacing))
    sitk.WriteImage(image, str(path))


def run(args: argparse.Namespace) -> None:
    spacing_choice = parse_spacing(args.spacing)
    if (args.batch_size is not None and args.batch_size < 1) or args.workers < 0:
        raise UserError(f"--batch_size must be at least 1 and --workers at least 0, got {args.batch_size}, {args.workers}")
    save_dir = Path(args.test_save_dir or Path(args.output_dir) / "test")
    save_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(save_dir / "log.txt")
    device = select_device(args.device)
    if args.batch_size is None:
        args.batch_size = default_batch_size(device)
    torch.backends.cudnn.deterministic = bool(args.deterministic)

    model, kwargs, train_args, ckpt = load_model(args)
    model.to(device)
    num_classes = kwargs["num_classes"]
    if args.num_classes is not None and args.num_classes != num_classes:
        raise UserError(f"--num_classes {args.num_classes} disagrees with {ckpt}, which predicts {num_classes} classes")
    img_size = args.img_size or train_args.get("img_size") or kwargs.get("img_size") or 224
    dataset = train_args.get("dataset", args.dataset)
    info = checked_info(dataset)
    names = class_names(info, num_classes)
    volume_path = Path(args.volume_path or info.test_path)
    if info.kind == IMAGES:
        list_file = Path(args.list_dir or info.list_dir) / info.test_list
        evaluate_2d(model, SkinCases(volume_path, list_file, num_classes), num_classes, img_size, names, save_dir, args, device)
        return

    scans = find_nifti(volume_path)
    if scans:
        segment_scans(model, scans, img_size, names, save_dir, args, device, info.intensity_clip)
        return
    folder = volume_path / VOLUME_FOLDER if (volume_path / VOLUME_FOLDER).is_dir() else volume_path
    list_file = Path(args.list_dir or info.list_dir) / info.test_list
    volumes = SynapseVolumes(folder, list_file, num_classes)
    unit = "voxels" if spacing_choice == "voxel" else "mm"
    logger.info("evaluating %d volume(s) of %s at %dx%d, convention %r, HD95 in %s",
                len(volumes), folder, img_size, img_size, args.metric_convention, unit)

    # Workers only run numpy/scipy metric code, so fork is safe and skips re-importing torch.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    executor = ProcessPoolExecutor(args.workers, mp_context=context) if args.workers > 0 else None
    futures, cases = [], []
    try:
        for case in tqdm(volumes, desc="volumes", leave=False):
            prediction = predict_volume(model, case["image"], (img_size, img_size), args.batch_size, device, args.amp)
            label = case["label"].astype(np.uint8) if num_classes <= 256 else case["label"]
            futures.append(submit(executor, metrics_for_classes, prediction, label, num_classes,
                                  case_spacing(spacing_choice, case), args.metric_convention))
            cases.append(case["case_name"])
            name = case["case_name"]
            if args.is_savenii:
                save_nifti(prediction.astype(np.float32), save_dir / f"{name}_pred.nii.gz", args.z_spacing)
                save_nifti(case["image"].astype(np.float32), save_dir / f"{name}_img.nii.gz", args.z_spacing)
                save_nifti(case["label"].astype(np.float32), save_dir / f"{name}_gt.nii.gz", args.z_spacing)
            if args.save_png:
                montage(case["image"], prediction, case["label"], names).save(save_dir / f"{name}.png")
        scores = np.stack([future.result() for future in futures])
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    report(scores, cases, names, args.metric_convention, unit, save_dir)


def report(scores: np.ndarray, cases: list[str], names: list[str], convention: str, unit: str, save_dir: Path) -> dict:
    """Log the per-case and per-organ tables and write metrics.json and metrics.csv.

    Args:
        scores: (cases, classes - 1, 2) Dice and HD95.
    """
    mean = np.nanmean if convention == "nan" else np.mean
    for name, case_scores in zip(cases, scores):
        logger.info("%s  mean Dice %.4f  mean HD95 %.2f", name, *mean(case_scores, axis=0))
    per_class = mean(scores, axis=0)
    mean_dice, mean_hd95 = mean(per_class, axis=0)
    logger.info("%-14s %9s %12s", "organ", "Dice (%)", f"HD95 ({unit})")
    for name, (dice, hd95) in zip(names, per_class):
        logger.info("%-14s %9.2f %12.2f", name, 100 * dice, hd95)
    logger.info("%-14s %9.2f %12.2f", "mean", 100 * mean_dice, mean_hd95)
    logger.info("convention %r, HD95 in %s, %d case(s); results in %s", convention, unit, len(cases), save_dir)
    result = {
        "convention": convention,
        "hd95_unit": unit,
        "mean_dice": float(mean_dice),
        "mean_hd95": float(mean_hd95),
        "per_class": [{"class": c, "name": name, "dice": float(d), "hd95": float(h)}
                      for c, (name, (d, h)) in enumerate(zip(names, per_class), 1)],
        "cases": [{"case": case, "dice": s[:, 0].tolist(), "hd95": s[:, 1].tolist()} for case, s in zip(cases, scores)],
    }
    (save_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(save_dir / "metrics.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "class", "name", "dice", "hd95"])
        for case, case_scores in zip(cases, scores):
            for c, (name, (dice, hd95)) in enumerate(zip(names, case_scores), 1):
                writer.writerow([case, c, name, f"{dice:.6f}", f"{hd95:.6f}"])
        for c, (name, (dice, hd95)) in enumerate(zip(names, per_class), 1):
            writer.writerow(["mean", c, name, f"{dice:.6f}", f"{hd95:.6f}"])
        writer.writerow(["mean", "", "all", f"{mean_dice:.6f}", f"{mean_hd95:.6f}"])
    return result


def evaluate_2d(model, cases: SkinCases, num_classes: int, img_size: int, names: list[str], save_dir: Path,
                args: argparse.Namespace, device: torch.device) -> dict:
    """Score 2D images with the pixel metrics of utils.images: data-set figures from the
    confusion counts pooled over all images, plus each image's own; writes metrics.json,
    metrics.csv and, with --save_png, NAME_pred.png (class ids scaled to 0..255)."""
    logger.info("evaluating %d image(s) of %s at %dx%d", len(cases), cases.root, img_size, img_size)
    counts, cases_done = [], []
    for case in tqdm(cases, desc="images", leave=False):
        prediction = predict_image(model, case["image"], (img_size, img_size), device, args.amp)
        counts.append(confusion(prediction, case["label"], num_classes))
        cases_done.append(case["case_name"])
        if args.save_png:
            scale = PNG_MAX // max(1, num_classes - 1)
            Image.fromarray(prediction * np.uint8(scale)).save(save_dir / f"{case['case_name']}_pred.png")
    counts = np.stack(counts)
    pooled = scores(counts.sum(axis=0))
    per_image = scores(counts)  # (images, classes - 1, metrics)
    logger.info("%-14s %s", "class", " ".join(f"{m:>12}" for m in METRIC_NAMES))
    for name, row in zip(names, pooled):
        logger.info("%-14s %s", name, " ".join(f"{100 * v:12.2f}" for v in row))
    logger.info("pixels of %d image(s) pooled into one confusion matrix per class (percent); results in %s",
                len(cases_done), save_dir)
    result = {
        "pooling": "pixels of all images",
        **{metric: float(value) for metric, value in zip(METRIC_NAMES, pooled.mean(axis=0))},
        "per_class": [{"class": c, "name": name, **dict(zip(METRIC_NAMES, map(float, row))),
                       **dict(zip(("tp", "fp", "fn", "tn"), map(int, total)))}
                      for c, (name, row, total) in enumerate(zip(names, pooled, counts.sum(axis=0)), 1)],
        "cases": [{"case": case, **{metric: values[:, k].tolist() for k, metric in enumerate(METRIC_NAMES)}}
                  for case, values in zip(cases_done, per_image)],
    }
    (save_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(save_dir / "metrics.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "class", "name", *METRIC_NAMES])
        for case, values in zip(cases_done, per_image):
            for c, (name, row) in enumerate(zip(names, values), 1):
                writer.writerow([case, c, name, *(f"{v:.6f}" for v in row)])
        for c, (name, row) in enumerate(zip(names, pooled), 1):
            writer.writerow(["pooled", c, name, *(f"{v:.6f}" for v in row)])
    return result


def segment_scans(model, scans: list[Path], img_size: int, names: list[str], save_dir: Path,
                  args: argparse.Namespace, device: torch.device, clip: tuple[float, float] | None) -> None:
    """Predict unlabeled NIfTI scans and write label volumes with their geometry. Intensities
    are clipped to the data set's window ``clip`` (CT: HU) if any, then min-max scaled."""
    logger.info("segmenting %d NIfTI scan(s); no labels, so no metrics", len(scans))
    for path in tqdm(scans, desc="scans", leave=False):
        try:
            scan = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise DataError(f"{path} is not a readable NIfTI file: {' '.join(str(error).split())[:200]}") from None
        volume = sitk.GetArrayFromImage(scan).astype(np.float32)
        if volume.ndim != 3:
            raise DataError(f"{path} has {volume.ndim} dimensions; expected a 3D scan")
        image = normalise_volume(volume, clip)
        prediction = predict_volume(model, image, (img_size, img_size), args.batch_size, device, args.amp)
        out = sitk.GetImageFromArray(prediction)
        out.CopyInformation(scan)
        target = save_dir / f"{nifti_stem(path)}_pred.nii.gz"
        sitk.WriteImage(out, str(target))
        if args.save_png:
            montage(image, prediction, None, names).save(save_dir / f"{nifti_stem(path)}.png")
        logger.info("%s -> %s (%s voxels labelled)", path.name, target, int((prediction > 0).sum()))


if __name__ == "__main__":
    sys.exit(main())
