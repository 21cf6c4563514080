"""The layering of the repository, written down once and checked on every module's imports.

train.py, test.py  (scripts: nothing imports them)
    -> bench/      (measurements: may use everything below)
    -> utils/      (library: loader, evaluation engine, training step, checkpoints, metrics)
    -> datasets/   (readers, converters, generators: data only, never networks or utils)
    -> torch & friends
networks/          (torch and einops only: a network never depends on the data or the scripts)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROJECT = ("networks", "datasets", "utils", "bench", "train", "test")
# What each part may import from the project, besides itself.
ALLOWED_PROJECT = {
    "networks": set(),
    "datasets": set(),
    "utils": {"datasets", "networks"},
    "bench": {"utils", "datasets", "networks"},
    "train": {"utils", "datasets"},
    "test": {"utils", "datasets"},
}
# Third-party packages a network may use.
NETWORK_THIRD_PARTY = {"torch", "einops"}
RELATIVE = "."  # the root recorded for a relative import: the project uses none, so the rule can read every import


def modules() -> list[tuple[str, Path]]:
    """(part, file) of every Python module of the project (tests excluded)."""
    found = [("train", REPO / "train.py"), ("test", REPO / "test.py")]
    for part in ("networks", "datasets", "utils", "bench"):
        found += [(part, path) for path in sorted((REPO / part).rglob("*.py"))]
    return found


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, at any depth of the file."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0] if node.level == 0 and node.module else RELATIVE)
    return roots


def violations(part: str, path: Path) -> set[str]:
    """What ``path``, a module of ``part``, imports against the rule."""
    roots = imported_roots(path)
    found = {root for root in roots if root in PROJECT} - {part} - ALLOWED_PROJECT[part]
    if part == "networks":
        found |= {root for root in roots if root not in sys.stdlib_module_names and root not in PROJECT} - NETWORK_THIRD_PARTY
    return found | (roots & {RELATIVE})


def test_the_project_has_the_parts_the_rule_names():
    parts = {part for part, _ in modules()}
    assert parts == set(PROJECT)
    assert len(modules()) > 40


@pytest.mark.parametrize(("part", "path"), modules(), ids=lambda value: str(value).replace(str(REPO) + "/", ""))
def test_imports_point_one_way(part, path):
    assert not violations(part, path), f"{path.relative_to(REPO)} imports {sorted(violations(part, path))}"


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom train import main\n\ndef f():\n    from utils.metrics import dice\n    from ..utils import cli\n"
    )
    assert imported_roots(bad) == {"os", "train", "utils", RELATIVE}
    assert violations("datasets", bad) == {"train", "utils", RELATIVE}
    assert violations("bench", bad) == {"train", RELATIVE}
    network = tmp_path / "network.py"
    network.write_text("import torch\nimport numpy as np\nfrom datasets.common import IMAGE_MEAN\n")
    assert violations("networks", network) == {"numpy", "datasets"}


def test_importing_one_utils_module_stays_light():
    code = (
        "import sys\nimport utils\nfrom utils.errors import UserError\nfrom utils.cli import add_ignored_flags\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'h5py', 'scipy', 'SimpleITK') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_scripts_and_the_gpu_report_import_without_simpleitk_or_medpy():
    # GPU images carry torch but not every pin: .npz / .h5 training and evaluation must not need them.
    code = (
        "import importlib.util, sys\n"
        "for name in ('train', 'test'):\n"
        "    spec = importlib.util.spec_from_file_location(name + '_script', name + '.py')\n"
        "    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "import bench.gpu_report\n"  # it writes its own phantom
        "print(sorted(m for m in ('SimpleITK', 'medpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
