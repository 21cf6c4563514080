"""A training run's settings: one frozen record, resolved once from the command line and the
``--dataset`` table, checked where it is built, saved as ``args.json`` and into every checkpoint.

``resolve_config`` fills what the flags left open (the table's folders and classes, the network's
full constructor arguments, the lr of the batch rule) and builds :class:`RunConfig` from its
fields; ``RunConfig.__post_init__`` refuses any value a run cannot start with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.catalog import IMAGES, class_names, dataset_info
from utils.checkpoint import sha256
from utils.cli import ignored_note
from utils.errors import UserError
from utils.loader import load_network_class, network_arguments, parse_model_kwargs
from utils.training import REFERENCE_BATCH, REFERENCE_BATCH_DIVISOR, scaled_lr

AUTO = "auto"
# Settings that define what a run trains; resuming with any of them changed is refused unless
# --resume_accept_changes (max_epochs / max_iterations may change: the schedule follows).
RUN_DEFINING = (
    "module",
    "model_kwargs",
    "dataset",
    "num_classes",
    "train_list_sha256",
    "val_cases",
    "batch_size",
    "accumulation_steps",
    "base_lr",
    "lr_batch_rule",
    "img_size",
    "ce_weight",
    "dice_weight",
)
# Flags that must be at least 1, and those that must be at least 0.
POSITIVE = ("max_epochs", "batch_size", "img_size", "accumulation_steps", "eval_batch_size", "max_iterations")
NON_NEGATIVE = ("val_cases", "eval_interval", "eval_workers", "num_workers")
# Flags the --dataset table fills when they are not given.
FROM_TABLE = ("num_classes", "root_path", "test_path", "list_dir", "in_chans")
# The list folder that converters and generators write beside the data (DATA/lists).
LISTS_BESIDE = "lists"


def lists_beside(data_path: str | Path | None, list_file: str) -> Path | None:
    """The ``lists/`` folder of a data folder, when it holds ``list_file``: ``data_path/lists``
    (a data root, or a 2D image folder) or the one beside it (``DATA/train_npz`` or
    ``DATA/test_vol_h5`` -> ``DATA/lists``). A data folder that carries its own lists then
    needs no --list_dir, and never falls back to another data set's lists."""
    if data_path is None:
        return None
    folder = Path(data_path)
    for candidate in (folder / LISTS_BESIDE, folder.parent / LISTS_BESIDE):
        if (candidate / list_file).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Saved as ``args.json`` and into every checkpoint (``test.py``
    reads ``img_size`` and ``dataset`` from it)."""

    dataset: str
    kind: str
    root_path: str
    test_path: str
    list_dir: str
    train_list_sha256: str | None  # the training list's content, so a resume can tell it changed
    num_classes: int
    class_names: tuple[str, ...]
    img_size: int
    augment: str
    val_cases: int
    num_workers: int
    module: str
    model_kwargs: dict[str, Any]  # the network's full constructor arguments
    model_name: str
    use_checkpoint: bool
    max_epochs: int
    max_iterations: int | None
    batch_size: int
    accumulation_steps: int
    base_lr: float
    lr: float
    lr_batch_rule: str
    ce_weight: float
    dice_weight: float
    seed: int
    deterministic: bool
    output_dir: str
    eval_interval: int
    eval_batch_size: int | None
    eval_workers: int
    device: str
    amp: str
    compile: bool
    resume: str | None
    resume_accept_changes: bool
    init: str | None  # the checkpoint whose weights a new run starts from (--init)
    init_sha256: str | None  # its content, so the run records exactly where it started
    overwrite: bool
    dist_timeout: float

    def __post_init__(self) -> None:
        for minimum, flags in ((1, POSITIVE), (0, NON_NEGATIVE)):
            for flag in flags:
                value = getattr(self, flag)
                if value is not None and value < minimum:
                    raise UserError(f"--{flag} must be at least {minimum}, got {value}")
        if self.num_classes < 2:
            raise UserError(f"--num_classes must be at least 2 (background and one class), got {self.num_classes}")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight == 0:
            raise UserError(
                f"--ce_weight and --dice_weight must be non-negative and not both 0, got {self.ce_weight}, {self.dice_weight}"
            )
        if self.dist_timeout <= 0:
            raise UserError(f"--dist_timeout must be a positive number of minutes, got {self.dist_timeout}")
        if self.init and self.resume:
            raise UserError(
                f"--init {self.init} and --resume {self.resume} contradict each other: --init starts a new run "
                "from a checkpoint's weights, --resume continues a run; give one of them"
            )
        if self.resume and self.overwrite and (self.resume == AUTO or _inside(self.resume, self.output_dir)):
            raise UserError(
                f"--resume {self.resume} and --overwrite contradict each other: continue the run in --output_dir "
                f"{self.output_dir} or replace it, not both"
            )
        if self.val_cases and self.kind == IMAGES:
            raise UserError(
                f"--val_cases is for volume data; --dataset {self.dataset} evaluates on its validation list "
                "(edit that list to change the validation images)"
            )

    @property
    def step_batch(self) -> int:
        """Slices per optimisation step of one process."""
        return self.batch_size * self.accumulation_steps

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inside(path: str, folder: str) -> bool:
    return Path(folder).resolve() in Path(path).resolve().parents


def resolve_config(flags: Mapping[str, Any] | Any, ignored: tuple[str, ...] = ()) -> tuple[RunConfig, list[str]]:
    """The run's settings from ``train.py``'s parsed flags (a Namespace or a mapping).

    Returns the config and notes for the log: the ``ignored`` published flags that were given,
    and every value that was filled in or derived.
    """
    values = dict(vars(flags)) if not isinstance(flags, Mapping) else dict(flags)
    try:
        info = dataset_info(values["dataset"])
    except ValueError as error:
        raise UserError(str(error)) from None
    notes = ignored_note(values, ignored)
    n_gpu = values.get("n_gpu")
    if n_gpu and n_gpu > 1 and "WORLD_SIZE" not in os.environ:
        notes.append(
            f"--n_gpu {n_gpu} is not how this script uses several GPUs; run "
            f"torchrun --nproc_per_node {n_gpu} train.py ... (this run uses one device)"
        )
    if values.get("list_dir") is None:
        beside = lists_beside(values.get("root_path") or info.root_path, info.train_list)
        if beside is not None:
            values["list_dir"] = str(beside)
            notes.append(f"--list_dir {beside} (the lists beside the training data)")
    for flag in FROM_TABLE:
        default = getattr(info, flag)
        if values.get(flag) is None and default is not None:
            values[flag] = default
            notes.append(f"--{flag} {default} (from --dataset {values['dataset']})")
    network_cls = load_network_class(values["module"])
    if values["use_checkpoint"] and not hasattr(network_cls, "set_grad_checkpointing"):
        raise UserError(
            f"--use-checkpoint: {values['module']} has no set_grad_checkpointing(enable) method; "
            "add one (see networks/DAEFormer.py) or drop the flag"
        )
    num_classes = values["num_classes"]
    model_kwargs = network_arguments(
        network_cls, num_classes, values["img_size"], values["in_chans"], **parse_model_kwargs(values["model_kwargs"])
    )
    step_batch = values["batch_size"] * values["accumulation_steps"]
    lr = scaled_lr(values["base_lr"], step_batch, values["lr_batch_rule"])
    if lr != values["base_lr"]:
        notes.append(
            f"lr {lr:.6g} = --base_lr {values['base_lr']} * batch {step_batch} / {REFERENCE_BATCH}: the published "
            f"code's rule for batches divisible by {REFERENCE_BATCH_DIVISOR}; --lr_batch_rule off keeps --base_lr"
        )
    train_list = Path(values["list_dir"]) / info.train_list
    init = values.get("init")
    if init is not None and not Path(init).is_file():
        raise UserError(f"--init {init} is not a file; give a run's checkpoint (e.g. RUN/best.pth) or a state dict")
    values.update(
        init_sha256=sha256(init) if init is not None else None,
        kind=info.kind,
        train_list_sha256=hashlib.sha256(train_list.read_bytes()).hexdigest() if train_list.is_file() else None,
        class_names=tuple(class_names(info, num_classes)),
        model_kwargs=model_kwargs,
        model_name=values["model_name"] or values["module"].rpartition(".")[2],
        lr=lr,
        deterministic=bool(values["deterministic"]),
    )
    return RunConfig(**{field.name: values[field.name] for field in dataclasses.fields(RunConfig)}), notes


def changed_settings(payload: Mapping[str, Any], config: RunConfig) -> list[str]:
    """'flag old -> new' for every run-defining setting that differs from the checkpoint's.

    The network comes from the checkpoint's own ``module`` / ``model_kwargs`` fields; a setting
    an older checkpoint did not record is not compared.
    """
    saved = {**payload["args"], "module": payload["module"], "model_kwargs": payload["model_kwargs"]}
    now = config.to_json()
    return [f"{name} {saved[name]!r} -> {now[name]!r}" for name in RUN_DEFINING if name in saved and saved[name] != now[name]]
