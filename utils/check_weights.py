"""Check a checkpoint against the published DAE-Former layout, without evaluating it.

::

    python -m utils.check_weights daeformer_synapse.pth

The data doctor's checkpoint half (``python -m datasets.check`` checks the data; ``datasets``
must not import the network, so this lives in ``utils``). It compares every tensor name and shape
with ``networks.DAEFormer.DAEFormer`` in the published configuration (9 classes, dims 128 / 320 /
512), accepts what the published file legitimately holds -- a ``module.`` prefix from a
multi-GPU run, and the tensors of modules the reference builds but never calls, which the
network's load pre-hooks drop -- and names every missing, unexpected or mis-shaped tensor. It
prints the file's sha256, so a copy can be compared with the one a paper used.

Exit status: 0 the weights fit, 1 problems found, 2 the file cannot be read as a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.checkpoint import (
    WRAPPER_PREFIX,
    CheckpointError,
    is_self_describing,
    load_checkpoint,
    sha256,
    strip_wrapper_prefix,
)
from utils.loader import DAEFORMER, build_network

PUBLISHED_KWARGS: dict = {}  # the constructor's defaults are the published Synapse configuration
HEAD = "decoder_0.last_layer."


@dataclass
class WeightsReport:
    """What the comparison found; ``problems`` are one line each, ``facts`` the summary."""

    sha256: str
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def compare_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, report: WeightsReport) -> None:
    """Fill ``report`` with the differences between ``state_dict`` and ``model``'s tensors.

    Which extra tensors are legitimately dropped is decided by the network's own load pre-hooks
    (not by a second list here): the state dict is loaded non-strictly into a throwaway ``model``
    and whatever is neither a model tensor nor reported unexpected was dropped by a hook.
    """
    own = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    probe = {}
    for name, tensor in state_dict.items():
        if name in own and tuple(tensor.shape) != own[name]:
            report.mis_shaped.append(name)
            report.problems.append(
                f"mis-shaped tensor {name}: {list(tensor.shape)} in the file, "
                f"{list(own[name])} in the published network" + _head_hint(name, tensor)
            )
            continue  # load_state_dict would stop at it; shapes are what is compared here
        probe[name] = tensor
    result = model.load_state_dict(probe, strict=False)
    report.unexpected = sorted(result.unexpected_keys)
    report.missing = [name for name in own if name in result.missing_keys and name not in report.mis_shaped]
    report.dropped = [name for name in state_dict if name not in own and name not in result.unexpected_keys]
    for name in report.missing:
        report.problems.append(f"missing tensor {name} {list(own[name])}: the file lacks it")
    for name in report.unexpected:
        report.problems.append(
            f"unexpected tensor {name} {list(state_dict[name].shape)}: the published network "
            "has no such tensor (renamed, or another network?)"
        )


def _head_hint(name: str, tensor: torch.Tensor) -> str:
    if name.startswith(HEAD) and tensor.ndim >= 1:
        return f" (a {tensor.shape[0]}-class head; the published Synapse network has 9 classes)"
    return ""


def check_weights(path: str | Path) -> WeightsReport:
    """Compare the checkpoint ``path`` with the published DAE-Former layout.

    Args:
        path: a plain state dict (the published weights, ``module.`` prefixes allowed) or a
            checkpoint written by ``train.py``.

    Returns:
        The report (``clean`` when every tensor fits).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no state dict of tensors.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    report = WeightsReport(sha256=sha256(path))
    report.facts.append(f"{path}: sha256 {report.sha256}")
    if is_self_describing(payload):
        report.facts.append(
            f"a train.py checkpoint of {payload['module']} (epoch {payload.get('epoch')}); "
            "its weights are compared with the published layout"
        )
        state_dict = payload["model"]
    else:
        state_dict = payload
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; pass a .pth with the network's weights")
    stripped = strip_wrapper_prefix(state_dict)
    if stripped is not state_dict:
        state_dict = stripped
        report.facts.append(f"every name carries the '{WRAPPER_PREFIX}' prefix of a multi-GPU run: fine, stripped on load")
    model = build_network(DAEFORMER, PUBLISHED_KWARGS)
    compare_state_dict(state_dict, model, report)
    own = len(model.state_dict())
    fitting = own - len(report.missing) - len(report.mis_shaped)
    report.facts.append(
        f"{len(state_dict)} tensors: {fitting} of the {own} tensors of {DAEFORMER} "
        "(published configuration) present with their shapes"
    )
    if report.dropped:
        report.facts.append(
            f"{len(report.dropped)} tensors of modules the reference builds but never calls "
            "(as in the published checkpoint): dropped on load, fine"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.check_weights",
        description="Check a checkpoint against the published DAE-Former layout (names, shapes, "
        "'module.' prefix, the reference's unused tensors) and print its sha256. "
        "Exit 0 fits, 1 problems found, 2 unreadable.",
    )
    parser.add_argument("weights", type=Path, help="a .pth file: the published weights or a train.py checkpoint")
    args = parser.parse_args(argv)
    try:
        report = check_weights(args.weights)
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    lines = report.facts + [f"PROBLEM {problem}" for problem in report.problems]
    lines.append(
        "clean: the weights fit the published network"
        if report.clean
        else f"{len(report.problems)} problems found ({len(report.missing)} missing, "
        f"{len(report.unexpected)} unexpected, {len(report.mis_shaped)} mis-shaped)"
    )
    print("\n".join(lines))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
