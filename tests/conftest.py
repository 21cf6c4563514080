"""Shared fixtures: a tiny phantom data set in the Synapse layout and a tiny trained run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets.synthetic.synapse import generate_dataset
from utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
# A network small enough that a training epoch on the tiny phantom takes about a second.
TINY_UNET = ["--module", "networks.UNet.UNet", "--model_kwargs", '{"base_channels": 4, "depth": 2}']
TINY_SIZE = 32
# The size, batch, loading and network of every tiny training run in the tests.
TINY_RUN = ["--img_size", str(TINY_SIZE), "--batch_size", "4", "--num_workers", "0", *TINY_UNET]


# One thread per process: exact-equality tests need the same reduction order in every run.
SCRIPT_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a repository script the way a user does, from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=SCRIPT_ENV)


def load_test_script():
    """test.py as a module (``import test`` could find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("test_script", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_train_args(data: dict, output_dir: Path, *extra: str) -> list[str]:
    """``train.py`` and its arguments for the tiny U-Net on a phantom, evaluating every epoch."""
    return [
        "train.py",
        *("--root_path", str(data["train_dir"]), "--test_path", str(data["test_dir"])),
        *("--list_dir", str(data["train_list"].parent), "--output_dir", str(output_dir)),
        *TINY_RUN,
        *("--eval_interval", "1"),
        *extra,
    ]


def phantom_test_args(data: dict, checkpoint: Path, save_dir: Path, *extra: str) -> list[str]:
    """``test.py``'s arguments (without the script) for ``checkpoint`` on a phantom's test volumes."""
    return [
        *("--ckpt", str(checkpoint), "--volume_path", str(data["out_dir"])),
        *("--list_dir", str(data["train_list"].parent), "--test_save_dir", str(save_dir)),
        *extra,
    ]


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> dict:
    """3 training cases and 2 test volumes of 32x32 slices."""
    return generate_dataset(
        tmp_path_factory.mktemp("phantom"), seed=7, size=TINY_SIZE, train_cases=3, test_cases=2, min_slices=6, max_slices=8
    )


@pytest.fixture(scope="session")
def trained_run(phantom, tmp_path_factory) -> Path:
    """The output folder of a 2-epoch training run of a tiny U-Net on the phantom."""
    output_dir = tmp_path_factory.mktemp("run")
    result = run_script(*tiny_train_args(phantom, output_dir, "--max_epochs", "2"))
    assert result.returncode == 0, result.stderr
    return output_dir


def assert_same_weights(first: Path, second: Path) -> None:
    """The two checkpoints hold identical tensors, name for name."""
    a, b = load_checkpoint(first)["model"], load_checkpoint(second)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def tiny_isic_args(data: dict, output_dir: Path, list_dir: Path | None = None, eval_interval: int = 1) -> list[str]:
    """train.py's arguments for one epoch of the tiny U-Net on a synthetic ISIC data set."""
    folder = str(data["out_dir"])
    return [
        *("--dataset", "ISIC2018", "--root_path", folder, "--test_path", folder, "--output_dir", str(output_dir)),
        *("--list_dir", str(list_dir or data["list_dir"]), "--img_size", str(TINY_SIZE), "--batch_size", "2"),
        *("--num_workers", "0", "--eval_interval", str(eval_interval), "--max_epochs", "1", *TINY_UNET),
    ]
