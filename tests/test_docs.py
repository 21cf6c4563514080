"""Documentation that cannot rot: every command line in README.md and docs/ that runs train.py,
test.py, ``python -m MODULE`` or demo.sh is parsed by the parser of what it runs -- the module
must exist and accept every flag as written -- and the commands in ``EXECUTED`` are also run, as
written, on small generated data. Every docs/ link resolves, every page says first what its
reader can do, and no page tells the project's history.

Executed (each test looks its command up in the page, so editing the page without the test
fails): the phantom generator and the data doctor on it (docs/data.md, whose sample report must
match the real one), the standard lists' regeneration (docs/data.md), the demo (README), and
the Python API example from a directory outside the repository (docs/api.md). Every other
command is parsed only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from utils.predictor import Predictor

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = ("train.py", "test.py")
# Modules of other projects a command may run (the test command, the install): they must exist.
EXTERNAL = ("pip", "pytest", "timeit")
PROGRAMS = ("python", "python3", "torchrun", "bash")
WRAPPERS = ("srun", "time")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def shell_lines(text: str) -> list[str]:
    """The command lines of a shell block: continuations joined, comments dropped by shlex."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every shell line of a bash block and every inline `python ...`,
    `torchrun ...` or `bash demo.sh` span of every page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in ("bash", "sh"):
                line_no = text[: match.start()].count("\n") + 1
                found += [(f"{page.name}:{line_no}", line) for line in shell_lines(match.group(2))]
        prose = FENCE.sub("", text)
        for span in INLINE.findall(prose):
            span = " ".join(span.split())
            if re.match(r"(\w+=\S+ )*(time )?(python3? |torchrun |bash demo\.sh)", span):
                found.append((f"{page.name} (inline)", span))
    return found


def split_command(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ;, |), without env assignments or wrappers."""
    tokens = shlex.split(line, comments=True)
    commands, current = [], []
    for token in [*tokens, "&&"]:
        if token in ("&&", ";", "|", "||"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    cleaned = []
    for command in commands:
        while command and (re.match(r"^\w+=", command[0]) or command[0] in WRAPPERS):
            command = command[1:]
        if command and command[0] in PROGRAMS:
            cleaned.append(command)
    return cleaned


def target_of(command: list[str]) -> tuple[str, str, list[str]] | None:
    """("script", path, argv), ("module", name, argv), ("demo", "demo.sh", argv), or None for a
    command that runs none of them (python3 my_script.py)."""
    program, rest = command[0], command[1:]
    if program == "bash":
        return ("demo", rest[0], rest[1:]) if rest and rest[0] == "demo.sh" else None
    if program == "torchrun":
        while rest and not rest[0].endswith(".py"):
            rest = rest[2:] if rest[0].startswith("--") and "=" not in rest[0] else rest[1:]
        return ("script", rest[0], rest[1:]) if rest and rest[0] in SCRIPTS else None
    if rest[:1] == ["-m"]:
        return ("module", rest[1], rest[2:])
    if rest and rest[0] in SCRIPTS:
        return ("script", rest[0], rest[1:])
    return None


COMMANDS = [
    (where, line, target) for where, line in documented_commands() for target in map(target_of, split_command(line)) if target
]


class Parsed(Exception):
    """Raised in place of a parser's return: the command line parsed, nothing ran."""


def parse_as_documented(kind: str, name: str, argv: list[str], monkeypatch) -> None:
    """Run the script or module as ``__main__`` up to its argument parsing, with ``argv``; the
    first ``parse_args`` call parses ``argv`` for real and stops the run there. Modules without
    a ``build_parser`` (and forwarders such as ``datasets.lists``) are covered alike."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, argv))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    try:
        if kind == "script":
            runpy.run_path(str(REPO / name), run_name="__main__")
        else:
            runpy.run_module(name, run_name="__main__", alter_sys=False)
    except Parsed:
        return
    except SystemExit as stop:
        if stop.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{name} {shlex.join(argv)}: the parser refused it (exit {stop.code})")
    pytest.fail(f"{name} ran without parsing a command line")


# runpy warns that the module it runs as __main__ was imported before (by the test process): harmless here.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("where, line, target", COMMANDS, ids=[f"{w} {t[1]}" for w, _, t in COMMANDS])
def test_every_documented_command_parses(where, line, target, monkeypatch, capsys):
    kind, name, argv = target
    if kind == "demo":
        assert (REPO / name).is_file() and not argv, line
        return
    if kind == "script":
        assert (REPO / name).is_file(), f"{where}: {line}: no {name}"
    else:
        assert importlib.util.find_spec(name) is not None, f"{where}: {line}: no module {name}"
        if name.split(".")[0] in EXTERNAL:
            return
    parse_as_documented(kind, name, argv, monkeypatch)


def test_the_documentation_shows_each_kind_of_command():
    # The extraction itself must not rot into finding nothing.
    names = {target[1] for _, _, target in COMMANDS}
    for expected in ("train.py", "test.py", "demo.sh", "datasets.check", "datasets.prepare.synapse", "utils.check_weights"):
        assert expected in names, expected
    assert len(COMMANDS) >= 60


def documented(page: str, command: str) -> str:
    """``command``, after checking that ``page`` shows it exactly."""
    shown = [" ".join(shlex.split(line, comments=True)) for where, line in documented_commands() if where.startswith(page)]
    assert command in shown, f"{page} no longer shows {command!r}: update tests/test_docs.py with it"
    return command


def run_in(folder: Path, command: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` as a user types it in ``folder``, with the repository importable."""
    argv = shlex.split(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=timeout, env=environment)


def test_the_phantom_and_the_data_doctor_run_as_documented(tmp_path):
    generate = documented("data.md", "python -m datasets.synthetic.synapse --out data/phantom")
    check = documented("data.md", "python -m datasets.check --root data/phantom --list_dir data/phantom/lists")
    assert run_in(tmp_path, generate).returncode == 0
    result = run_in(tmp_path, check)
    assert result.returncode == 0, result.stderr
    # The page's sample report is the real one, line for line.
    page = (REPO / "docs" / "data.md").read_text()
    sample = page.split("```\nchecking data/phantom", 1)[1].split("```", 1)[0]
    expected = ("checking data/phantom" + sample).strip().splitlines()
    assert result.stdout.strip().splitlines() == expected


def test_the_standard_lists_regenerate_as_documented(tmp_path):
    command = documented("data.md", "python -m datasets.prepare.synapse_lists --standard --out lists/lists_Synapse")
    result = run_in(tmp_path, command)
    assert result.returncode == 0, result.stderr
    for name in ("train.txt", "test_vol.txt", "all.lst"):
        written = (tmp_path / "lists" / "lists_Synapse" / name).read_text()
        assert written == (REPO / "lists" / "lists_Synapse" / name).read_text(), name
    assert len((tmp_path / "lists" / "lists_Synapse" / "train.txt").read_text().split()) == 2211


def test_the_demo_runs_as_documented(tmp_path):
    command = documented("README.md", "bash demo.sh")
    # One epoch instead of 24 (demo.sh reads EPOCHS, DATA and OUT from the environment).
    result = run_in(REPO, command, {"EPOCHS": "1", "DATA": str(tmp_path / "phantom"), "OUT": str(tmp_path / "run")}, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "run" / "test" / "log.txt").read_text()
    assert "evaluating 4 volume(s)" in log
    assert re.search(r"^\[\S+\] mean +\d+\.\d\d +\d+\.\d\d$", log, re.M), log[-1500:]  # the per-organ table's last row
    metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    assert len(metrics["cases"]) == 4 and len(metrics["per_class"]) == 8


def test_the_python_api_example_runs_outside_the_repository(phantom, trained_run, tmp_path):
    page = (REPO / "docs" / "api.md").read_text()
    assert "PYTHONPATH=~/HSA-Unet python3 my_script.py" in page
    example = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    # The example's relative paths, laid out in a folder outside the repository.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "phantom").symlink_to(phantom["out_dir"])
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "last.pth").symlink_to(trained_run / "last.pth")
    (tmp_path / "my_script.py").write_text(example)
    result = subprocess.run(
        [sys.executable, "my_script.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    predictor = Predictor.from_checkpoint(trained_run / "last.pth")
    assert [line.split(" Dice ")[0].strip() for line in printed] == list(predictor.class_names)
    dice = np.array([float(line.split(" Dice ")[1].split()[0]) for line in printed])
    from datasets.synapse import H5Volumes

    case = H5Volumes(str(phantom["test_dir"]), str(phantom["out_dir"] / "lists" / "test_vol.txt"), predictor.num_classes)[0]
    expected = predictor.evaluator().evaluate(predictor.model, [case]).per_class[:, 0]
    np.testing.assert_allclose(dice, expected, atol=5e-5)
    # Without the path set, the same script fails as it would for a reader who skipped the page.
    bare = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    failed = subprocess.run([sys.executable, "my_script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=bare)
    assert failed.returncode != 0 and "No module named 'datasets'" in failed.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = "python3 -m pip install -r requirements-test.txt && python3 -m pytest"
    assert command in readme
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert "-r requirements-test.txt" in ci[2] and ci[2].startswith("python3 -m pip install")
    assert ci[-1] == "python3 -m pytest"


def test_every_docs_link_resolves():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    readme_links = LINK.findall((REPO / "README.md").read_text())
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme_links, f"README.md does not link docs/{page.name}"


def test_every_page_says_what_its_reader_can_do_and_no_page_tells_history():
    for page in sorted((REPO / "docs").glob("*.md")):
        opening = " ".join(page.read_text().split("\n\n")[1].split())
        assert opening.startswith("After reading this page you can"), page.name
    for page in PAGES:
        text = page.read_text()
        for pattern in (r"\bcommit [0-9a-f]{7}", r"\bissue #?\d+", r"this project's sessions", r"\bbefore and after\b"):
            assert not re.search(pattern, text, re.I), (page.name, pattern)
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
