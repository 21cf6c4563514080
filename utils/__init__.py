"""Shared machinery of the scripts: the network loader, losses, metrics, slice-wise inference,
checkpoints and logging. ``from utils import X`` is the public path."""

from utils.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    model_from_payload,
    save_checkpoint,
)
from utils.errors import UserError
from utils.inference import predict_volume
from utils.loader import (
    ModuleLoadError,
    available_networks,
    build_network,
    load_network_class,
    network_arguments,
)
from utils.losses import CEDiceLoss, dice_loss
from utils.metrics import (
    CONVENTIONS,
    calculate_metric_percase,
    dice,
    hd95,
    metrics_for_classes,
)

__all__ = [
    "CONVENTIONS",
    "CEDiceLoss",
    "CheckpointError",
    "ModuleLoadError",
    "UserError",
    "available_networks",
    "build_network",
    "calculate_metric_percase",
    "dice",
    "dice_loss",
    "find_checkpoint",
    "hd95",
    "load_checkpoint",
    "load_network_class",
    "metrics_for_classes",
    "model_from_payload",
    "network_arguments",
    "predict_volume",
    "save_checkpoint",
]
