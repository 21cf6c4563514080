"""test.py's results folder (``--test_save_dir``), written completely or not at all.

Everything an evaluation writes -- predictions, montages, ``metrics.json`` / ``metrics.csv`` --
goes first into ``SAVE_DIR/.incomplete/``. When the evaluation has finished, the files of the
previous evaluation (listed in ``SAVE_DIR/.outputs.json``) are removed and the new ones moved
in. A run that is killed or fails leaves the previous results as they were, beside an
``.incomplete`` folder that says so; the next evaluation removes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from utils.devices import Placement

logger = logging.getLogger(__name__)

INCOMPLETE = ".incomplete"
MANIFEST = ".outputs.json"


class ResultsFolder:
    """Stage an evaluation's outputs and move them into ``target`` when it completes. Under
    torchrun every process writes its share into the one staging folder; process 0 commits."""

    def __init__(self, target: Path, placement: Placement) -> None:
        self.target = target
        self.staging = target / INCOMPLETE
        self.placement = placement

    def open(self) -> Path:
        """The folder to write into (empty); every process calls it."""
        if self.placement.main:
            if self.staging.exists():
                logger.warning("removing %s, the outputs of an evaluation that did not finish", self.staging)
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True)
        self.placement.barrier()
        return self.staging

    def commit(self) -> list[str]:
        """Replace the previous evaluation's outputs by the staged ones; returns their names."""
        self.placement.barrier()
        if not self.placement.main:
            return []
        for name in self.previous():
            (self.target / name).unlink(missing_ok=True)
        names = sorted(path.name for path in self.staging.iterdir())
        for name in names:
            os.replace(self.staging / name, self.target / name)
        manifest = self.target / f"{MANIFEST}.tmp"
        manifest.write_text(json.dumps(names, indent=1) + "\n")
        os.replace(manifest, self.target / MANIFEST)
        self.staging.rmdir()
        return names

    def previous(self) -> list[str]:
        """The files the last completed evaluation wrote into ``target``."""
        try:
            names = json.loads((self.target / MANIFEST).read_text())
        except (OSError, ValueError):
            return []
        return [name for name in names if isinstance(name, str) and "/" not in name and not name.startswith(".")]
