"""A trained network ready to predict: load any checkpoint in one call, predict a volume or an
image in another -- exactly as ``test.py`` does, since ``test.py`` does it through here.

    from utils.predictor import Predictor
    predictor = Predictor.from_checkpoint("model_out/best.pth")          # or the published weights
    labels = predictor.predict(volume)        # (D, H, W) in [0, 1] -> (D, H, W) uint8 class ids

A checkpoint of ``train.py`` rebuilds its own network; a plain state dict (the published
DAE-Former weights, with or without ``module.`` prefixes) loads into ``module`` (default
DAE-Former) built for ``dataset``'s classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.catalog import IMAGES, DatasetInfo, class_names, dataset_info
from utils.checkpoint import is_self_describing, load_checkpoint, model_from_payload, sha256
from utils.contract import check_network
from utils.devices import Placement, default_batch_size, select_device
from utils.errors import UserError
from utils.evaluation import EvalSettings, Evaluator, Spacing, build_evaluator
from utils.loader import DAEFORMER, class_count, load_network_class, network_arguments, to_device

logger = logging.getLogger(__name__)

DEFAULT_IMG_SIZE = 224
DEFAULT_DATASET = "Synapse"
# Fields of a train.py checkpoint that must be there to rebuild and run its network.
RECORDED_FIELDS = ("module", "model_kwargs", "model", "args")


def recorded_settings(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """What a train.py checkpoint records about its network and data: module, model_kwargs,
    dataset, num_classes, img_size."""
    missing = [name for name in RECORDED_FIELDS if name not in payload]
    if missing:
        raise UserError(f"{path} is a training checkpoint without {', '.join(missing)}; it cannot be loaded (a damaged file?)")
    kwargs, args = payload["model_kwargs"], payload["args"]
    return {
        "module": payload["module"],
        "model_kwargs": kwargs,
        "dataset": args.get("dataset", DEFAULT_DATASET),
        "num_classes": class_count(kwargs) or args.get("num_classes"),
        "img_size": args.get("img_size") or kwargs.get("img_size") or DEFAULT_IMG_SIZE,
    }


def _agree(name: str, given: Any, recorded: Any, path: Path) -> None:
    """A setting given for a train.py checkpoint must be the one it recorded."""
    if given is None or given == recorded:
        return
    if name == "dataset" and str(recorded).endswith(".json") and Path(given).resolve() == Path(recorded).resolve():
        return
    raise UserError(
        f"--{name} {given} contradicts {path}, which records {name} {recorded}; drop --{name} (the checkpoint decides)"
    )


def checked_info(dataset: str) -> DatasetInfo:
    """The table entry of ``dataset``; a UserError (one line) for an unknown name or bad JSON."""
    try:
        return dataset_info(dataset)
    except ValueError as error:
        raise UserError(str(error)) from None


@dataclass
class Predictor:
    """A network in eval mode on its device, with what it needs to predict like test.py.

    Attributes:
        model: the network.
        checkpoint: the file it came from.
        model_kwargs: its constructor arguments.
        train_args: the run settings stored in a train.py checkpoint (empty for a plain state dict).
        run_id: the id of the training run that wrote the checkpoint (None for a plain state dict).
        info: the data-set entry (classes, kind of data, intensity window).
        num_classes, img_size: as the network was trained.
        device, amp, batch_size: how it runs.
    """

    model: nn.Module
    checkpoint: Path
    model_kwargs: dict[str, Any]
    train_args: dict[str, Any]
    info: DatasetInfo
    num_classes: int
    img_size: int
    device: torch.device
    amp: str = "off"
    batch_size: int = 1
    run_id: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        module: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        dataset: str | None = None,
        num_classes: int | None = None,
        img_size: int | None = None,
        device: str | torch.device = "auto",
        amp: str = "off",
        batch_size: int | None = None,
    ) -> Predictor:
        """Load a checkpoint of train.py or a plain state dict.

        One rule for every setting a checkpoint records (network, constructor arguments, data set,
        classes, input size): the checkpoint decides, and a value given here that contradicts it
        is a UserError naming both. A plain state dict records none of them: the values given
        here decide, with the defaults below.

        Args:
            path: the checkpoint file.
            module: network class of a plain state dict (default DAE-Former).
            model_kwargs: constructor arguments of a plain state dict.
            dataset: data-set name or dataset.json of a plain state dict (default Synapse).
            num_classes: classes of a plain state dict (default: the data set's).
            img_size: network input size of a plain state dict (default: the network's, else 224).
            device: "auto", "cpu", "cuda" or a torch.device.
            amp: "off", "bf16" or "fp16" autocast for inference.
            batch_size: slices per forward pass (default 16 on a GPU, 1 on a CPU).
        """
        path = Path(path)
        payload = load_checkpoint(path)
        given = {"module": module, "dataset": dataset, "num_classes": num_classes, "img_size": img_size}
        if is_self_describing(payload):
            recorded = recorded_settings(payload, path)
            for name, value in {**given, **(model_kwargs or {})}.items():
                _agree(name, value, recorded.get(name, recorded["model_kwargs"].get(name)), path)
            model = model_from_payload(payload, path)
            kwargs, train_args, run_id = payload["model_kwargs"], payload["args"], payload.get("run_id")
            info = checked_info(recorded["dataset"])
            size = recorded["img_size"]
            logger.info("%s: %s(%s), trained for %d epoch(s)", path, payload["module"], kwargs, payload["epoch"] + 1)
        else:
            module = module or DAEFORMER  # what the published plain state dict holds
            info = checked_info(dataset or DEFAULT_DATASET)
            kwargs = network_arguments(
                load_network_class(module), num_classes or info.num_classes, img_size, info.in_chans, **(model_kwargs or {})
            )
            logger.info("%s is a plain state dict: loading it into %s(%s)", path, module, kwargs)
            model, train_args, run_id = model_from_payload(payload, path, module, kwargs), {}, None
            size = img_size or kwargs.get("img_size") or DEFAULT_IMG_SIZE
        run_device = device if isinstance(device, torch.device) else select_device(device)
        model = to_device(model, run_device)
        predicted = class_count(kwargs) or info.num_classes  # (a library network names it classes, out_channels...)
        check_network(model, predicted, info.channels, size, run_device)
        return cls(
            model=model.eval(),
            checkpoint=path,
            model_kwargs=kwargs,
            train_args=train_args,
            info=info,
            num_classes=predicted,
            img_size=size,
            device=run_device,
            amp=amp,
            batch_size=batch_size if batch_size is not None else default_batch_size(run_device),
            run_id=run_id,
        )

    def source(self) -> dict[str, Any]:
        """What this predictor scores, for a results file: the checkpoint's path and sha256, and
        the training run that wrote it (None for a plain state dict)."""
        return {"checkpoint": str(self.checkpoint.resolve()), "sha256": sha256(self.checkpoint), "run_id": self.run_id}

    @property
    def class_names(self) -> list[str]:
        """Names of classes 1..num_classes-1."""
        return class_names(self.info, self.num_classes)

    def evaluator(
        self, convention: str = "published", spacing: Spacing = "voxel", workers: int = 0, placement: Placement | None = None
    ) -> Evaluator:
        """The evaluation engine for this network and its kind of data; ``placement`` shares the
        cases among the processes of a torchrun launch."""
        rank, world_size = (placement.rank, placement.world_size) if placement else (0, 1)
        size = (self.img_size, self.img_size)
        settings = EvalSettings(size, self.batch_size, self.device, self.amp, convention, spacing, workers, rank, world_size)
        return build_evaluator(self.info, self.num_classes, self.class_names, settings)

    def predict(self, data: np.ndarray) -> np.ndarray:
        """Segment one volume (D, H, W) -- or (D, C, H, W) for a network of C channels -- with
        intensities in [0, 1], or for 2D image data one uint8 image (H, W, 3), with the evaluation
        protocol. Returns uint8 class ids of the input's spatial shape."""
        data = np.asarray(data)
        volume_of_channels = self.info.kind != IMAGES and data.ndim == 4 and data.shape[1] == self.info.channels
        if data.ndim != 3 and not volume_of_channels:
            what = "an (H, W, 3) uint8 image" if self.info.kind == IMAGES else "a (D, H, W) volume in [0, 1]"
            raise UserError(f"predict takes {what}; got an array of shape {data.shape}")
        return self.evaluator().predict(self.model, data)
