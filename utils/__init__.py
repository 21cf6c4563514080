"""Shared machinery of the scripts: the network loader, losses, schedules, metrics, slice-wise
inference, checkpoints and logging. ``from utils import X`` is the public path."""

from utils.errors import UserError
from utils.loader import ModuleLoadError, available_networks, build_network, load_network_class, network_arguments

__all__ = [
    "ModuleLoadError",
    "UserError",
    "available_networks",
    "build_network",
    "load_network_class",
    "network_arguments",
]
