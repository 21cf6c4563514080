"""Checkpoints: one naming scheme, atomic writes, safe loading, and the published weights.

A checkpoint of this repository describes itself: besides the weights it stores the network's
``--module`` path and constructor arguments, so ``test.py`` rebuilds the network without being
told. The published DAE-Former weights are a plain state dict; they load too, given ``--module``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError
from utils.loader import build_network

FORMAT = "hsa-unet-checkpoint-v1"
LAST = "last.pth"
BEST = "best.pth"
# The largest network rebuilt from a checkpoint's recorded arguments: 2 billion parameters (8 GB
# in float32), 40 times DAE-Former's 48 million.
MAX_PARAMETERS = 2_000_000_000
# DataParallel / DistributedDataParallel prefix every key of a saved state dict with this.
WRAPPER_PREFIX = "module."


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, untrusted or does not fit the network."""


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def epoch_checkpoint_name(model_name: str, epoch: int) -> str:
    """The periodic checkpoint of 0-based ``epoch``, named as the published code names it."""
    return f"{model_name}_epoch_{epoch}.pth"


def find_checkpoint(output_dir: str | Path, model_name: str | None, max_epochs: int) -> Path:
    """The checkpoint ``test.py`` evaluates when no ``--ckpt`` is given: ``best.pth``, else the
    final periodic checkpoint, else ``last.pth`` -- the same names ``train.py`` writes. Without
    ``model_name``, a single ``*_epoch_{max_epochs - 1}.pth`` in the folder is the final one."""
    output_dir = Path(output_dir)
    final = epoch_checkpoint_name(model_name or "*", max_epochs - 1)
    finals = sorted(output_dir.glob(final)) if model_name is None else [output_dir / final]
    candidates = [output_dir / BEST, *(finals if len(finals) == 1 else []), output_dir / LAST]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"no checkpoint in {output_dir} (looked for {BEST}, {final}, {LAST}); pass --ckpt PATH, or the --output_dir "
        "and --max_epochs of a training run"
    )


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: to a temporary file beside ``path``, then rename, so an
    interrupted write never leaves a truncated checkpoint behind.

    The file gets the permissions a plain ``open(path, "wb")`` would give it (0666 less the
    umask, and the folder's default ACL), so colleagues on a shared cluster can read it;
    ``tempfile.mkstemp`` would make it 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            # O_EXCL: never write into a file someone else created; the kernel applies the umask.
            handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as error:
            raise CheckpointError(
                f"could not write the checkpoint {path} ({error.strerror}); fix the folder or its permissions"
            ) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write the checkpoint {path} ({error.strerror or error}); free disk space or fix the folder's "
            "permissions, then rerun with --resume auto"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_checkpoint(source: str | Path, target: str | Path) -> None:
    """Make ``target`` hold what ``source`` holds without writing the payload again: a hard link
    (a copy where the file system has none), put in place atomically. ``source`` is replaced, not
    rewritten, by the next :func:`save_checkpoint`, so ``target`` keeps this version."""
    source, target = Path(source), Path(target)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, so a file
    that would run code when unpickled is refused and its code never runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check --ckpt / --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain containers, which "
            f"could run code when unpickled ({first_line}); only load checkpoints from a source you trust, "
            "re-saved as a plain state dict"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {error}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint or a state dict")
    return payload


def is_self_describing(payload: dict[str, Any]) -> bool:
    """True for a checkpoint written by ``train.py`` (not a bare state dict)."""
    return payload.get("format") == FORMAT


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that a multi-GPU run of the reference puts on every key."""
    if state_dict and all(key.startswith(WRAPPER_PREFIX) for key in state_dict):
        return {key[len(WRAPPER_PREFIX) :]: value for key, value in state_dict.items()}
    return state_dict


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state_dict`` strictly, turning a mismatch into one line that names the tensors."""
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{source} is not a state dict: some values are not tensors")
    try:
        model.load_state_dict(strip_wrapper_prefix(state_dict), strict=True)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        raise CheckpointError(
            f"the weights in {source} do not fit {type(model).__name__} (wrong --module or --num_classes?): {details}"
        ) from None


def check_size(module: str, kwargs: dict[str, Any], source: str | Path) -> None:
    """Refuse a checkpoint whose recorded constructor arguments would build a network above
    ``MAX_PARAMETERS`` -- counted on the meta device, where no memory is allocated -- so a damaged
    or hostile file cannot make the constructor take the machine's memory."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in build_network(module, kwargs, pretrained=False).parameters())
    except UserError:
        raise
    except Exception:  # a network that cannot be built on the meta device is counted when it is built
        return
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source} records constructor arguments {kwargs} that build {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} this program builds from a checkpoint; the file is damaged or not what it claims"
        )


def model_from_payload(
    payload: dict[str, Any], source: str | Path, module: str | None = None, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """Build the network of a loaded checkpoint and load its weights.

    A checkpoint of this repository rebuilds its own network (``module``, when given, must
    agree with it); a plain state dict -- the published DAE-Former weights -- is loaded into
    ``module`` built with ``kwargs``.
    """
    if is_self_describing(payload):
        if module is not None and module != payload["module"]:
            raise CheckpointError(f"{source} holds a {payload['module']} network but --module {module} was given; drop --module")
        check_size(payload["module"], payload["model_kwargs"], source)
        # (its weights come from the checkpoint: pretrained weights its arguments name are not fetched)
        model = build_network(payload["module"], payload["model_kwargs"], pretrained=False)
        load_weights(model, payload["model"], source)
        return model
    if module is None:
        raise CheckpointError(f"{source} is a plain state dict that does not say which network it is for; pass --module")
    model = build_network(module, kwargs or {})
    load_weights(model, payload, source)
    return model
