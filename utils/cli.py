"""Command-line pieces both scripts share: the flags the published scripts parse that have no
meaning here, declared once, so a command line copied from the published repository, a script
or a paper's appendix parses unchanged."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

IGNORED = "accepted for compatibility with the published scripts and ignored"

# flag -> argparse keywords; every one is accepted and ignored (a log line names those given).
PUBLISHED_IGNORED_FLAGS: dict[str, dict] = {
    "--zip": {"action": "store_true", "help": f"{IGNORED} (zipped data sets of Swin's loader)"},
    "--cache-mode": {"choices": ("no", "full", "part"), "help": f"{IGNORED} (Swin's zip cache)"},
    "--amp-opt-level": {"choices": ("O0", "O1", "O2"), "help": f"{IGNORED} (apex); use --amp bf16|fp16"},
    "--tag": {"help": f"{IGNORED} (Swin's experiment tag); name runs with --output_dir"},
    "--eval": {"action": "store_true", "help": f"{IGNORED}; evaluate with test.py"},
    "--throughput": {"action": "store_true", "help": f"{IGNORED}; see python -m bench.train_speed"},
    "--opts": {"nargs": "+", "metavar": "KEY VALUE", "help": f"{IGNORED} (Swin's config overrides); use the flags"},
    "--n_gpu": {"type": int, "help": f"{IGNORED}; several GPUs run through torchrun --nproc_per_node N"},
    "--z_spacing": {"type": int, "help": f"{IGNORED} by train.py (test.py writes it into saved NIfTI files)"},
    # Training flags the published test.py parses too; they mean nothing to an evaluation.
    "--max_iterations": {"type": int, "help": f"{IGNORED} by test.py (a training setting)"},
    "--base_lr": {"type": float, "help": f"{IGNORED} by test.py (a training setting)"},
    "--resume": {"help": f"{IGNORED} by test.py; name the checkpoint with --ckpt"},
    "--accumulation-steps": {"type": int, "help": f"{IGNORED} by test.py (a training setting)"},
    "--use-checkpoint": {"action": "store_true", "help": f"{IGNORED} by test.py (a training setting)"},
    "--seed": {"type": int, "help": f"{IGNORED} by test.py: inference draws no random numbers"},
}


# The Swin-style config flags both published scripts parse.
SWIN_CONFIG_FLAGS = ("--zip", "--cache-mode", "--amp-opt-level", "--tag", "--eval", "--throughput", "--opts")


# Where the documentation lists the flags --help leaves out.
COMPATIBILITY_DOC = "docs/training.md (Flags accepted for compatibility)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, every option's default after its help (except defaults
    that say nothing: None, False), and short metavars, so each option fits on one or two lines."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        if action.type is int:
            return "N"
        if action.type is float:
            return "X"
        return "PATH" if action.dest.endswith(("_path", "_dir")) else action.dest.upper()


def compatibility_epilog(flags: tuple[str, ...]) -> str:
    """The one line of --help that says the hidden compatibility flags exist."""
    return (
        f"{len(flags)} more flags of the published scripts are accepted and ignored (a log line names any given); "
        f"{COMPATIBILITY_DOC} lists them."
    )


def add_ignored_flags(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    """Declare ``flags`` (keys of ``PUBLISHED_IGNORED_FLAGS``): parsed, but left out of the usage
    line and the listing, so --help shows only the flags that do something."""
    for flag in flags:
        group_help = {**PUBLISHED_IGNORED_FLAGS[flag], "help": argparse.SUPPRESS}
        parser.add_argument(flag, default=None, **group_help)
    parser.epilog = compatibility_epilog(flags)


def ignored_given(args: argparse.Namespace | Mapping[str, Any], flags: tuple[str, ...]) -> list[str]:
    """The ignored flags that were given on the command line."""
    values = args if isinstance(args, Mapping) else vars(args)
    given = []
    for flag in flags:
        value = values[flag.lstrip("-").replace("-", "_")]
        if value not in (None, False):
            given.append(flag)
    return given


def ignored_note(args: argparse.Namespace | Mapping[str, Any], flags: tuple[str, ...]) -> list[str]:
    """A log line naming the ignored flags that were given, if any."""
    given = ignored_given(args, flags)
    return [f"ignored (accepted for compatibility with the published scripts): {', '.join(given)}"] if given else []
