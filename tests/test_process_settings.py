"""What the scripts set for their own process: host memory reuse (utils.devices.keep_freed_memory:
a freed large block is reused without page faults, numbers do not change, a user's own malloc
settings win) and train.py's OpenMP spin count (set before torch loads, a user's value wins).

Each case runs in a fresh interpreter: the settings are process-wide and must not leak into the
test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import test as test_script
import train as train_script

ROOT = Path(__file__).resolve().parents[1]


def on_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError):  # no such name where the C library is not glibc
        return False


GLIBC = on_glibc()
glibc_only = pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt")

# One 24x9x224x224 float32 tensor (the logits of a training step): 43.35 MB, 10,584 pages of 4 KiB.
PROBE = """
import json, os, resource, sys, torch
from utils.devices import keep_freed_memory
if sys.argv[1] == "keep":
    took = keep_freed_memory()
elif sys.argv[1] == "users":  # each of a user's own settings in turn
    took = []
    for name, value in USERS_SETTINGS:
        os.environ[name] = value
        took.append(keep_freed_memory())
        del os.environ[name]
else:
    took = None
torch.manual_seed(0)
z = torch.randn(24, 9, 224, 224)
first = z.exp().sum().item()  # allocates once, and frees
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    value = z.exp().sum().item()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "faults": faults, "first": first, "value": value}))
"""
PAGES = 24 * 9 * 224 * 224 * 4 // 4096
USERS_SETTINGS = [
    ("MALLOC_MMAP_MAX_", "65536"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096"),
]


def probe(mode: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-c", f"USERS_SETTINGS = {USERS_SETTINGS!r}\n{PROBE}", mode],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@glibc_only
def test_a_freed_large_tensor_is_reused_without_page_faults_and_the_numbers_do_not_change():
    default = probe("default")
    kept = probe("keep")
    assert kept["took"] is True
    # glibc's default maps every 43 MB block afresh: one fault per page, each time
    assert all(count >= 0.9 * PAGES for count in default["faults"]), default["faults"]
    # with the setting, once the heap has grown to the step's peak (a few steps: a small block
    # can take the front of a freed one), the block freed by the previous step is reused
    assert all(count < 0.02 * PAGES for count in kept["faults"][6:]), kept["faults"]
    assert kept["value"] == default["value"] == default["first"]


@glibc_only
def test_a_users_own_malloc_limits_are_left_alone():
    kept = probe("users")
    assert kept["took"] == [False] * len(USERS_SETTINGS)
    assert all(count >= 0.9 * PAGES for count in kept["faults"]), kept["faults"]


@pytest.mark.parametrize("script", [train_script, test_script])
def test_both_scripts_set_it_before_they_do_anything_else(script, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(script, "keep_freed_memory", lambda: calls.append("kept"))
    missing = str(tmp_path / "missing")
    argv = ["--root_path", missing, "--list_dir", missing] if script is train_script else ["--test_path", missing]
    assert script.main([*argv, "--output_dir" if script is train_script else "--test_save_dir", str(tmp_path / "out")]) == 2
    assert calls == ["kept"]


# Records GOMP_SPINCOUNT at the moment anything first imports torch, then imports train.py.
SPIN_PROBE = """
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in sys.modules:
            print("at torch import:", os.environ.get("GOMP_SPINCOUNT"))
        return None
sys.meta_path.insert(0, Watch())
import train
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "10000"), ("300000", "300000")])
def test_train_py_sets_the_openmp_spin_count_before_torch_loads_unless_the_user_did(given, expected):
    environment = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        environment["GOMP_SPINCOUNT"] = given
    result = subprocess.run(
        [sys.executable, "-c", SPIN_PROBE], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[0] == f"at torch import: {expected}"


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_the_scripts_freeze_their_objects_before_the_interpreter_exits(script, tmp_path):
    # the interpreter's last collections would walk every object torch left (0.4 s); frozen, they do not
    code = (
        "import atexit, gc, runpy, sys; "
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 100000)); "
        f"sys.argv = [{script!r}, '--test_path' if {script!r} == 'test.py' else '--root_path', {str(tmp_path)!r}]; "
        f"runpy.run_path({script!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr  # a one-line refusal: main returned
    assert result.stdout.strip().splitlines()[-1] == "frozen at exit: True"
