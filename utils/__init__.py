"""Shared machinery of the scripts: the network loader, losses, metrics, slice-wise inference,
the evaluation engine, the training step, checkpoints and logging.

``from utils import X`` is the public path. Names are imported from their module on first use,
so ``from utils.errors import UserError`` (or any one module) loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "CheckpointError": "checkpoint",
    "find_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_from_payload": "checkpoint",
    "save_checkpoint": "checkpoint",
    "UserError": "errors",
    "predict_volume": "inference",
    "ModuleLoadError": "loader",
    "available_networks": "loader",
    "build_network": "loader",
    "load_network_class": "loader",
    "network_arguments": "loader",
    "to_device": "loader",
    "CEDiceLoss": "losses",
    "dice_loss": "losses",
    "CONVENTIONS": "metrics",
    "calculate_metric_percase": "metrics",
    "dice": "metrics",
    "hd95": "metrics",
    "metrics_for_classes": "metrics",
    "Predictor": "predictor",
    "train_step": "training",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"utils.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
