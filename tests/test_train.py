"""train.py end to end on the phantom: outputs, exact resume, torchrun, errors."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

import train as train_script
from tests.conftest import REPO, SCRIPT_ENV, assert_same_weights, run_script, tiny_train_args
from train import build_parser, resolve_config
from utils.checkpoint import load_checkpoint

PUBLISHED_COMMAND = (
    "--root_path ./data/Synapse/train_npz --test_path ./data/Synapse/test_vol_h5 --batch_size 20 "
    "--eval_interval 20 --max_epochs 400 --module networks.DAEFormer.DAEFormer"
).split()


def test_the_published_command_line_parses_with_the_reference_lr_rule():
    config, notes = resolve_config(build_parser().parse_args(PUBLISHED_COMMAND))
    assert config.lr == pytest.approx(0.05 * 20 / 24)
    assert any("0.0416667" in note for note in notes)
    assert (config.num_classes, config.list_dir, config.model_name) == (9, "./lists/lists_Synapse", "DAEFormer")
    off, _ = resolve_config(build_parser().parse_args([*PUBLISHED_COMMAND, "--lr_batch_rule", "off"]))
    assert off.lr == 0.05
    given, _ = resolve_config(build_parser().parse_args([*PUBLISHED_COMMAND, "--num_classes", "5", "--list_dir", "mine"]))
    assert (given.num_classes, given.list_dir) == (5, "mine")  # values the user gave are never overwritten
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


def test_training_writes_its_outputs(phantom, trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"last.pth", "UNet_epoch_0.pth", "UNet_epoch_1.pth", "args.json", "log.txt", "tensorboard"} <= names
    assert "best.pth" not in names  # no validation split: the test set never picks a checkpoint
    payload = load_checkpoint(trained_run / "last.pth")
    assert payload["module"] == "networks.UNet.UNet"
    assert payload["model_kwargs"] == {"num_classes": 9, "img_size": 32, "base_channels": 4, "depth": 2}
    iterations_per_epoch = -(-phantom["num_train_slices"] // 4)
    assert (payload["epoch"], payload["iteration"]) == (1, 2 * iterations_per_epoch)
    assert {"optimizer", "scheduler", "scaler", "rng", "args"} <= payload.keys()
    assert json.loads((trained_run / "args.json").read_text())["max_epochs"] == 2
    log = (trained_run / "log.txt").read_text()
    assert "evaluating on the TEST volumes" in log and "test evaluation after epoch 1" in log


def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(phantom, trained_run, tmp_path):
    result = run_script(
        *tiny_train_args(phantom, tmp_path, "--max_epochs", "2", "--resume", str(trained_run / "UNet_epoch_0.pth"))
    )
    assert result.returncode == 0, result.stderr
    assert "from " + str(trained_run / "UNet_epoch_0.pth") + " at epoch 1" in (tmp_path / "log.txt").read_text()
    assert_same_weights(tmp_path / "last.pth", trained_run / "last.pth")


def test_a_killed_run_resumes_from_last_pth_to_the_same_weights(phantom, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ("--max_epochs", "4")
    assert run_script(*tiny_train_args(phantom, straight, *args)).returncode == 0
    process = subprocess.Popen(
        [sys.executable, *tiny_train_args(phantom, killed, *args)],
        cwd=REPO,
        env=SCRIPT_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (killed / "last.pth").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(killed.glob(".*.tmp"))  # no half-written checkpoint is ever visible as one
    interrupted_at = load_checkpoint(killed / "last.pth")["epoch"]
    assert process.returncode == -signal.SIGKILL and interrupted_at < 3  # killed mid-run, not after it
    result = run_script(*tiny_train_args(phantom, killed, *args, "--resume", str(killed / "last.pth")))
    assert result.returncode == 0, result.stderr
    assert f"epoch {interrupted_at + 1}, iteration" in (killed / "log.txt").read_text()
    assert_same_weights(killed / "last.pth", straight / "last.pth")


def test_validation_cases_pick_best_pth(phantom, tmp_path):
    assert train_script.main(tiny_train_args(phantom, tmp_path, "--max_epochs", "1", "--val_cases", "1")[1:]) == 0
    assert (tmp_path / "val_cases.txt").read_text().split() == [phantom["train_case_ids"][-1]]
    assert (tmp_path / "best.pth").exists()
    assert "validation evaluation after epoch 0 (1 case(s)" in (tmp_path / "log.txt").read_text()


def test_torchrun_with_two_cpu_processes_ends_with_identical_weights(phantom, tmp_path):
    # --val_cases 1: one evaluation case for two processes, so process 1 evaluates none
    result = run_script(
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        *tiny_train_args(phantom, tmp_path, "--max_epochs", "1", "--device", "cpu", "--val_cases", "1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "log.txt").read_text()
    assert "2 process(es)" in log and "validation evaluation after epoch 0 (1 case(s)" in log
    assert "weights identical on all 2 processes: yes" in log


def test_a_non_finite_loss_stops_the_run_with_a_clear_message(phantom, tmp_path, capsys):
    assert train_script.main(tiny_train_args(phantom, tmp_path, "--max_epochs", "1", "--base_lr", "1e30")[1:]) == 2
    stderr = capsys.readouterr().err
    assert "train.py: error: the loss became" in stderr and "lower --base_lr" in stderr
    assert "train.py: error: the loss became" in (tmp_path / "log.txt").read_text()  # the message reaches the log


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--module", "networks.Nope.Net"], "no module named 'networks.Nope'"),
        (["--module", "DAEFormer"], "is not a dotted path"),
        (["--model_kwargs", "{bad"], "--model_kwargs is not valid JSON"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
    ],
)
def test_bad_flags_are_one_line_errors_before_any_data_is_read(tmp_path, capsys, flags, message):
    argv = ["--root_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"), *flags]
    assert train_script.main(argv) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_list_is_a_one_line_error_from_the_shell(tmp_path):
    result = run_script(
        "train.py",
        "--root_path",
        str(tmp_path),
        "--list_dir",
        str(tmp_path / "lists"),
        "--output_dir",
        str(tmp_path / "out"),
        "--module",
        "networks.UNet.UNet",
    )
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: ") and str(tmp_path / "lists" / "train.txt") in last_line
    assert "Traceback" not in result.stderr
