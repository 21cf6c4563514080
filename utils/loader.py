"""The ``--module`` loader: one road from a dotted path to a network, for every network.

Each failure is its own one-line :class:`ModuleLoadError`, so a script can print it and exit
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import pkgutil
from typing import Any

import torch
from torch import nn

from utils.errors import UserError

IN_TREE_PACKAGE = "networks"
DAEFORMER = "networks.DAEFormer.DAEFormer"  # the published network, the default of the scripts


class ModuleLoadError(UserError):
    """A ``--module`` path that does not lead to a usable network class."""


def available_networks() -> list[str]:
    """Dotted paths of the ``nn.Module`` classes defined in the in-tree ``networks`` package."""
    package = importlib.import_module(IN_TREE_PACKAGE)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "blocks":
            continue
        module_name = f"{IN_TREE_PACKAGE}.{info.name}"
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module_name and name == info.name:
                found.append(f"{module_name}.{name}")
    return sorted(found)


def load_network_class(path: str) -> type[nn.Module]:
    """Import ``package.module.ClassName`` and check that it is an ``nn.Module`` subclass."""
    module_name, dot, class_name = path.rpartition(".")
    if not dot or not module_name or not class_name:
        raise ModuleLoadError(f"--module {path!r} is not a dotted path package.module.ClassName; e.g. --module {DAEFORMER}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ModuleLoadError(
                f"--module {path}: no module named {module_name!r} (is its folder on PYTHONPATH?); "
                f"networks in this repository: {', '.join(available_networks())}"
            ) from None
        raise ModuleLoadError(
            f"--module {path}: the module {module_name!r} was found but it imports {missing!r}, "
            f"which is not installed; install it (e.g. pip install {missing.split('.')[0]})"
        ) from None
    except Exception as error:  # a user's module may fail in any way while importing
        raise ModuleLoadError(f"--module {path}: importing {module_name!r} failed: {type(error).__name__}: {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        classes = [name for name, obj in vars(module).items() if inspect.isclass(obj)]
        close = difflib.get_close_matches(class_name, classes, n=1)
        hint = f"did you mean {module_name}.{close[0]}?" if close else f"classes there: {', '.join(classes) or 'none'}"
        raise ModuleLoadError(f"--module {path}: module {module_name!r} has no class {class_name!r}; {hint}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ModuleLoadError(f"--module {path}: {class_name!r} is not a torch.nn.Module subclass")
    return cls


def network_arguments(
    cls: type[nn.Module], num_classes: int, img_size: int | None = None, in_chans: int | None = None, **extra: Any
) -> dict[str, Any]:
    """The constructor arguments the scripts give ``cls``: ``num_classes`` always, ``img_size``
    and ``in_chans`` where the constructor names them, and ``extra`` as given."""
    parameters = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    for name, value in (("img_size", img_size), ("in_chans", in_chans)):
        if value is not None and (name in parameters or accepts_any):
            kwargs[name] = value
    kwargs.update(extra)
    return kwargs


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """``--model_kwargs``: a JSON object of extra constructor arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--model_kwargs is not valid JSON ({error}); e.g. --model_kwargs '{{\"base_channels\": 16}}'") from None
    if not isinstance(value, dict):
        raise UserError(f"--model_kwargs must be a JSON object like '{{\"base_channels\": 16}}', got {text}")
    return value


def build_network(path: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build the network of ``--module path`` with constructor arguments ``kwargs``.

    The one way every script and checkpoint builds a network: a checkpoint stores ``path`` and
    ``kwargs`` and is rebuilt through here.
    """
    cls = load_network_class(path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ModuleLoadError(f"--module {path}: the constructor rejected arguments {kwargs}: {error}") from None


def to_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move a network to ``device``: the one way train.py, test.py and the benchmarks place one.

    On a CPU, a network whose class sets ``channels_last = True`` gets its 4D weights in
    ``torch.channels_last``, the layout the CPU convolution kernels are fastest in (README,
    "Performance": the U-Net opts in, DAE-Former gains too little to). The layout changes no
    result beyond float rounding; it is opt-in because a network that ``.view``s a convolution's
    output across its channel and spatial axes fails in it. On a GPU the layout is left alone:
    it has not been measured there.
    """
    device = torch.device(device)
    if device.type == "cpu" and getattr(model, "channels_last", False):
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)
