"""Export a trained network for deployment: ONNX and TorchScript, each with a JSON of the input
contract beside it, and checked against PyTorch on a batch before the command reports success.

    python -m utils.export model_out/best.pth --onnx daeformer.onnx --torchscript daeformer.pt
    python -m utils.export daeformer_synapse.pth --module networks.DAEFormer.DAEFormer --onnx d.onnx

The contract (``FILE.json``, e.g. ``daeformer.onnx.json``) says what the exported graph expects
and returns: a float32 NCHW batch of ``batch`` x ``channels`` x ``size`` x ``size``, made as
the training data were -- intensities clipped to the data set's window when it has one, scaled
per volume to [0, 1], then ``(x - mean) / std`` -- and logits for the named classes
(background first). The size is fixed (the scripts resize every slice to it, and so must a
deployment), and so is the batch (``--batch``, default 1): the network is traced, and tracing
records the einops reshapes of DAE-Former with the batch size as a constant. The check runs the
exported file (ONNX Runtime; the loaded TorchScript module) on another seeded batch than the one
traced, and fails (exit 2) when an output differs from PyTorch's by more than ``--atol``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.catalog import IMAGES
from datasets.common import IMAGE_MEAN, IMAGE_STD
from utils.checkpoint import sha256
from utils.errors import UserError
from utils.loader import parse_model_kwargs
from utils.predictor import Predictor

FORMAT = "hsa-unet-export-v1"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# Opset 17 has LayerNormalization as one operator; ONNX Runtime releases of the last years run it.
OPSET = 17
DEFAULT_BATCH = 1
# float32 graphs differ from PyTorch by rounding only; measured about 4e-6 on a DAE-Former.
DEFAULT_ATOL = 1e-4
CHECK_SEED = 0


def contract_path(path: Path) -> Path:
    """The contract beside an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def preprocessing_steps(predictor: Predictor, size: int) -> list[str]:
    """What the scripts do to an input before the network, in words (datasets/preprocess.py)."""
    if predictor.info.kind == IMAGES:
        return [f"resize the 8-bit RGB image to {size}x{size} (bilinear)", "divide by 255", "x = (x - mean) / std"]
    clip = predictor.info.intensity_clip
    return [
        f"clip intensities to {list(clip)}" if clip else "no intensity window",
        "scale each volume to [0, 1] by its min and max",
        f"resize each axial slice to {size}x{size} (cubic)",
        "x = (x - mean) / std",
    ]


def input_contract(predictor: Predictor, channels: int, batch: int) -> dict[str, Any]:
    size = predictor.img_size
    clip = predictor.info.intensity_clip if predictor.info.kind != IMAGES else None
    return {
        "format": FORMAT,
        "source": str(predictor.checkpoint),
        "source_sha256": sha256(predictor.checkpoint),
        "module": type(predictor.model).__module__ + "." + type(predictor.model).__name__,
        "model_kwargs": predictor.model_kwargs,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": [batch, channels, size, size],
            "channels": channels,
            "size": [size, size],
            "preprocessing": preprocessing_steps(predictor, size),
            "intensity_clip": list(clip) if clip else None,
            "mean": IMAGE_MEAN,
            "std": IMAGE_STD,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": [batch, predictor.num_classes, size, size],
            "meaning": "logits; the class of a pixel is their argmax (no softmax applied)",
            "class_names": ["background", *predictor.class_names],
        },
    }


def example_batch(batch: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """A seeded batch in the normalised input range: [0, 1] values, then (x - mean) / std."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, channels, size, size, generator=generator) - IMAGE_MEAN) / IMAGE_STD


def _quietly(function: Any, *args: Any, **kwargs: Any) -> Any:
    # Tracing warns about every Python branch on a shape (the input checks): expected here,
    # since the exported size and channels are fixed by design.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    try:
        _quietly(
            torch.onnx.export,
            model,
            (example,),
            str(path),
            dynamo=False,  # the TorchScript-based exporter: needs neither onnxscript nor onnx
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
        )
    except Exception as error:  # a user's network may hold any operation the exporter lacks
        hint = "; pip install -r requirements-test.txt (onnx, onnxruntime)" if "not installed" in str(error) else ""
        raise UserError(f"--onnx {path}: the ONNX export failed: {type(error).__name__}: {error}{hint}") from None


def run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise UserError(
            "checking the ONNX export needs onnxruntime: pip install -r requirements-test.txt (or --no_check)"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    try:
        traced = _quietly(torch.jit.trace, model, example)
    except Exception as error:
        raise UserError(f"--torchscript {path}: tracing failed: {type(error).__name__}: {error}") from None
    _quietly(torch.jit.save, traced, str(path))


def run_torchscript(path: Path, batch: torch.Tensor) -> np.ndarray:
    loaded = _quietly(torch.jit.load, str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(batch).numpy()


def check(path: Path, run: Any, model: nn.Module, example: torch.Tensor, atol: float) -> dict[str, Any]:
    """Run the exported file and PyTorch on a batch shaped as ``example`` but drawn anew;
    raises a UserError beyond ``atol``."""
    batch = example_batch(*example.shape[:3], seed=CHECK_SEED + 1)
    with torch.no_grad():
        expected = model(batch).numpy()
    got = run(path, batch)
    if got.shape != expected.shape:
        raise UserError(f"{path}: the export returns shape {got.shape} where PyTorch returns {expected.shape}")
    difference = float(np.abs(got - expected).max())
    same_labels = float((got.argmax(1) == expected.argmax(1)).mean())
    if not difference <= atol:
        raise UserError(
            f"{path}: the export differs from PyTorch by up to {difference:.3g} (more than --atol {atol:g}) on a "
            f"batch of {len(batch)}; the network holds an operation the export does not reproduce"
        )
    return {"batch": len(batch), "max_abs_difference": difference, "atol": atol, "same_argmax_fraction": same_labels}


def export(
    predictor: Predictor, targets: dict[str, Path], atol: float, batch: int = DEFAULT_BATCH, verify: bool = True
) -> dict[str, dict]:
    """Write each of ``targets`` ({"onnx": path, "torchscript": path}) for batches of ``batch``
    and its contract; returns the contracts, each with its check (None when ``verify`` is False)."""
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    model = predictor.model.cpu().eval()
    channels, size = predictor.info.channels, predictor.img_size
    example = example_batch(batch, channels, size, seed=CHECK_SEED)
    writers = {"onnx": (export_onnx, run_onnx), "torchscript": (export_torchscript, run_torchscript)}
    written, contract_of_input = {}, input_contract(predictor, channels, batch)  # (hashes the checkpoint once)
    for kind, path in targets.items():
        write, run = writers[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        write(model, path, example)
        contract = {**contract_of_input, "export": kind}
        contract["check"] = check(path, run, model, example, atol) if verify else None
        contract_path(path).write_text(json.dumps(contract, indent=2) + "\n")
        written[kind] = contract
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.export", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a train.py checkpoint or a plain state dict (then give --module)")
    parser.add_argument("--onnx", type=Path, help="write the network as ONNX here (and FILE.json beside it)")
    parser.add_argument("--torchscript", type=Path, help="write the network as TorchScript here (and FILE.json beside it)")
    parser.add_argument("--module", help="network class of a plain state dict (default DAE-Former)")
    parser.add_argument("--model_kwargs", default="{}", help="constructor arguments (JSON) of a plain state dict")
    parser.add_argument("--dataset", help="data set (name or dataset.json) of a plain state dict, for classes and window")
    parser.add_argument("--img_size", type=int, help="input size of a plain state dict (default 224)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="slices per call of the exported network (fixed)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest difference from PyTorch the check accepts")
    parser.add_argument("--no_check", action="store_true", help="skip running the export against PyTorch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    targets = {kind: path for kind, path in (("onnx", args.onnx), ("torchscript", args.torchscript)) if path is not None}
    try:
        if not targets:
            raise UserError("nothing to write: give --onnx FILE and/or --torchscript FILE")
        predictor = Predictor.from_checkpoint(
            args.checkpoint, args.module, parse_model_kwargs(args.model_kwargs), args.dataset, None, args.img_size, "cpu"
        )
        written = export(predictor, targets, args.atol, args.batch, verify=not args.no_check)
    except UserError as error:
        print(f"utils.export: error: {error}", file=sys.stderr)
        return 2
    for kind, contract in written.items():
        shape = "x".join(str(n) for n in contract["input"]["shape"])
        checked = contract["check"]
        verdict = (
            f"matches PyTorch on a batch of {checked['batch']} to {checked['max_abs_difference']:.2e} (atol {checked['atol']:g})"
            if checked
            else "not checked (--no_check)"
        )
        print(f"wrote {targets[kind]} and {contract_path(targets[kind]).name}: input {shape}, {verdict}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
