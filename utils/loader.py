"""The ``--module`` loader: one road from a dotted path to a network, for every network.

Each failure is its own one-line :class:`ModuleLoadError`, so a script can print it and exit
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import pkgutil
from collections.abc import Iterator
from typing import Any
from unittest import mock

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


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # (ValueError: a None entry in sys.modules, an import that was blocked)
        return False


def load_network_class(path: str) -> type[nn.Module]:
    """Import ``package.module.ClassName`` and check that it is an ``nn.Module`` subclass."""
    module_name, dot, class_name = path.rpartition(".")
    if not dot or not module_name or not class_name:
        raise ModuleLoadError(f"--module {path!r} is not a dotted path package.module.ClassName; e.g. --module {DAEFORMER}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        root = module_name.split(".")[0]
        if root in LIBRARY_PACKAGES and missing.split(".")[0] == root and not _installed(root):
            raise ModuleLoadError(
                f"--module {path}: the library {root!r} is not installed; pip install {LIBRARY_PACKAGES[root]} "
                "(the version the tests use, requirements-test.txt)"
            ) from None
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


# The scripts' three inputs and the names constructors give them, in the order they are looked
# for: this repository's names first, then those of segmentation_models_pytorch (classes,
# in_channels), MONAI (out_channels, in_channels) and other U-Net code (n_classes).
CLASS_COUNT_NAMES = ("num_classes", "classes", "out_channels", "n_classes")
CHANNEL_NAMES = ("in_chans", "in_channels")
SIZE_NAMES = ("img_size",)
# Volume data reach the network as grey (B, 1, H, W) slices. This repository's networks repeat
# such a slice to their in_chans; a library network does not, so it is built for 1 channel.
SLICE_CHANNELS = 1
# MONAI's networks default to 3D; the scripts feed 2D slices.
SPATIAL_DIMS, SLICE_DIMS = "spatial_dims", 2


def _first_named(parameters: Any, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in parameters), None)


def network_arguments(
    cls: type[nn.Module], num_classes: int, img_size: int | None = None, in_chans: int | None = None, **extra: Any
) -> dict[str, Any]:
    """The constructor arguments the scripts give ``cls``, under the names its constructor has.

    - the class count goes to the first of ``CLASS_COUNT_NAMES`` the constructor names;
    - ``in_chans`` to the first of ``CHANNEL_NAMES``; when the data set leaves it open (None), a
      constructor whose parameter is ``in_channels`` (a library network, which does not repeat a
      grey slice) gets ``SLICE_CHANNELS``, and one with ``in_chans`` keeps its own default;
    - ``img_size`` to ``img_size`` where the constructor names it;
    - ``spatial_dims=2`` where the constructor names ``spatial_dims`` (MONAI);
    - a constructor that names none of the class-count names but takes ``**kwargs`` (a wrapper
      that forwards them) gets ``num_classes``, ``img_size`` and ``in_chans`` under those names.

    ``extra`` (``--model_kwargs``) is passed unchanged and wins over every name set here.
    """
    parameters = inspect.signature(cls.__init__).parameters
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    forwards = forwards and _first_named(parameters, CLASS_COUNT_NAMES) is None
    kwargs: dict[str, Any] = {}
    class_name = _first_named(parameters, CLASS_COUNT_NAMES) or CLASS_COUNT_NAMES[0]
    kwargs[class_name] = num_classes
    channel_name = _first_named(parameters, CHANNEL_NAMES) or (CHANNEL_NAMES[0] if forwards else None)
    if channel_name is not None:
        if in_chans is not None:
            kwargs[channel_name] = in_chans
        elif channel_name != CHANNEL_NAMES[0]:
            kwargs[channel_name] = SLICE_CHANNELS
    size_name = _first_named(parameters, SIZE_NAMES) or (SIZE_NAMES[0] if forwards else None)
    if size_name is not None and img_size is not None:
        kwargs[size_name] = img_size
    if SPATIAL_DIMS in parameters:
        kwargs[SPATIAL_DIMS] = SLICE_DIMS
    kwargs.update(extra)
    return kwargs


def class_count(kwargs: dict[str, Any]) -> int | None:
    """The number of classes a network built with ``kwargs`` predicts, under whichever of
    ``CLASS_COUNT_NAMES`` :func:`network_arguments` gave it (None when none is there)."""
    name = _first_named(kwargs, CLASS_COUNT_NAMES)
    return None if name is None else int(kwargs[name])


# What the scripts give every constructor from their own flags (network_arguments).
SCRIPT_ARGUMENTS = ("num_classes", "img_size", "in_chans")


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """``--model_kwargs``: a JSON object of extra constructor arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--model_kwargs is not valid JSON ({error}); e.g. --model_kwargs '{{\"base_channels\": 16}}'") from None
    if not isinstance(value, dict):
        raise UserError(f"--model_kwargs must be a JSON object like '{{\"base_channels\": 16}}', got {text}")
    flagged = [name for name in SCRIPT_ARGUMENTS if name in value]
    if flagged:
        raise UserError(
            f"--model_kwargs sets {flagged[0]}; give it as --{flagged[0]} instead, the flag the scripts and checkpoints read"
        )
    return value


# Constructor arguments that fetch pretrained weights when set (and their default when absent):
# segmentation_models_pytorch's encoder_weights defaults to "imagenet".
WEIGHT_ARGUMENTS = ("encoder_weights", "pretrained")
# The libraries the README documents, by import name: the pip package that provides each and the
# version the suite tests (requirements-test.txt).
LIBRARY_PACKAGES = {
    "segmentation_models_pytorch": "segmentation-models-pytorch==0.6.0",
    "monai": "monai==1.6.1",
    "timm": "timm==1.0.31",
}


def _requested_weights(cls: type[nn.Module], kwargs: dict[str, Any]) -> tuple[str, Any] | None:
    """The first weight-fetching argument the network is built with a truthy value of, if any."""
    parameters = inspect.signature(cls.__init__).parameters
    for name in WEIGHT_ARGUMENTS:
        if name in kwargs:
            value = kwargs[name]
        elif name in parameters and parameters[name].default is not inspect.Parameter.empty:
            value = parameters[name].default
        else:
            continue
        if value:
            return name, value
    return None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Let the Hugging Face hub serve files from its local cache only. Both
    segmentation_models_pytorch's encoders and timm's (``tu-`` names) fetch their weights through
    it; in offline mode a cached file loads and a missing one raises instead of downloading."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing can fetch through it
        yield
        return
    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
        yield


def _is_cache_miss(error: BaseException) -> bool:
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:
        return False
    seen: BaseException | None = error
    while seen is not None:  # the libraries may wrap the hub's error in their own
        if isinstance(seen, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def segmentation_logits(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor | None:
    """Forward hook that reduces a network's output to its segmentation logits -- the one rule:

    a tensor is the logits as it is; from a tuple, list or dict (values in their order, nested
    ones searched depth first) the logits are the first 4D tensor with the input's batch size and
    height and width -- the main head of smp's ``aux_params`` (mask, label), of torchvision's
    ``{"out", "aux"}`` and of deep-supervision lists (full resolution first). Anything else is a
    :class:`ModuleLoadError` that says what the network returned.

    A hook, not a wrapper module, so the state dict keeps the network's own keys and checkpoints
    load into the bare network.
    """
    if isinstance(output, torch.Tensor):
        return None
    x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
    for candidate in _tensors_in(output):
        if x is not None and candidate.ndim == 4 and candidate.shape[0] == x.shape[0] and candidate.shape[2:] == x.shape[2:]:
            return candidate
    size = f"{x.shape[0]} x C x {x.shape[2]} x {x.shape[3]}" if x is not None and x.ndim == 4 else "(B, C, H, W)"
    raise ModuleLoadError(
        f"{type(module).__name__} returned {_describe(output)}, with no {size} tensor of segmentation logits at the "
        'input\'s size; wrap it in a module whose forward returns them (README, "Your own network")'
    )


def _tensors_in(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors_in(value)
    elif isinstance(output, tuple | list):
        for value in output:
            yield from _tensors_in(value)


def _describe(output: Any) -> str:
    """A short picture of an output: ``tuple(Tensor(2, 9, 8, 8), Tensor(2, 4))``."""
    if isinstance(output, torch.Tensor):
        return f"Tensor({', '.join(map(str, output.shape))})"
    if isinstance(output, dict):
        return "dict(" + ", ".join(f"{key}={_describe(value)}" for key, value in output.items()) + ")"
    if isinstance(output, tuple | list):
        return f"{type(output).__name__}(" + ", ".join(_describe(value) for value in output) + ")"
    return type(output).__name__


def build_network(path: str, kwargs: dict[str, Any], pretrained: bool = True) -> nn.Module:
    """Build the network of ``--module path`` with constructor arguments ``kwargs``.

    The one way every script and checkpoint builds a network: a checkpoint stores ``path`` and
    ``kwargs`` and is rebuilt through here. Nothing is downloaded: pretrained weights a
    constructor argument asks for load from the local cache or the build fails. The network
    carries the :func:`segmentation_logits` hook, so every caller gets logits from it.

    ``pretrained=False`` builds without the pretrained weights ``kwargs`` ask for (their
    arguments set to None): for a network whose weights come from a checkpoint next, which
    then rebuilds on a machine whose cache lacks them. Both builds have the same state-dict keys.
    """
    cls = load_network_class(path)
    if not pretrained:
        parameters = inspect.signature(cls.__init__).parameters
        kwargs = {**kwargs, **{name: None for name in WEIGHT_ARGUMENTS if name in kwargs or name in parameters}}
    requested = _requested_weights(cls, kwargs)
    try:
        with _hub_offline() if requested else contextlib.nullcontext():
            model = cls(**kwargs)
    except Exception as error:
        if requested is not None and _is_cache_miss(error):  # (the hub's cache miss is also a ValueError)
            name, value = requested
            raise ModuleLoadError(
                f"--module {path}: {name}={value!r} would download pretrained weights, and nothing is downloaded at run "
                f"time: pass --model_kwargs '{{\"{name}\": null}}' for random weights, or load the weights into the "
                "local Hugging Face cache first (build the network once online), or for a timm (tu-) encoder point at "
                'a local file: \'{"encoder_weights": true, "pretrained_cfg_overlay": {"file": "/path/weights.safetensors"}}\''
            ) from None
        if isinstance(error, TypeError | ValueError):
            raise ModuleLoadError(f"--module {path}: the constructor rejected arguments {kwargs}: {error}") from None
        raise
    model.register_forward_hook(segmentation_logits)
    return model


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
