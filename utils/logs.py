"""Logging set-up for the scripts (library code only calls ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "[%(asctime)s] %(message)s"
DATE_FORMAT = "%H:%M:%S"


def setup_logging(log_file: str | Path | None, enabled: bool = True) -> None:
    """Send the root logger's INFO messages to stderr and, when given, to ``log_file``.

    ``enabled=False`` (the non-zero ranks of a distributed run) keeps warnings and errors only.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if enabled else logging.WARNING)
    formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and enabled:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
