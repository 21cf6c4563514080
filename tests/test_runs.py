"""Runs that survive clusters and mistakes: folders never silently reused, a lock, run ids,
preemption with an exact mid-epoch resume, resume that checks, distributed evaluation that does
not time out, evaluation data validated before the first step, failures in log.txt."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from unittest import mock

import h5py
import pytest
import torch

import train as train_script
from tests.conftest import TINY_RUN, assert_same_weights, load_test_script, run_script, tiny_train_args
from utils.checkpoint import load_checkpoint
from utils.config import changed_settings
from utils.loop import LOG_EVERY
from utils.training import poly_lr, restore_rng_state, rng_state

SIGNAL_NET = "tests.plugin_networks.SignalAt"


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_used_folder_exits_2_and_changes_nothing(phantom, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 2
    message = capsys.readouterr().err
    assert f"--output_dir {run} already holds a run" in message and "--overwrite" in message and "--resume auto" in message
    assert snapshot(run) == before


def test_overwrite_replaces_the_old_run_and_its_best_pth(phantom, tmp_path):
    run = tmp_path / "run"
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--val_cases", "1")[1:]) == 0
    first = json.loads((run / "args.json").read_text())["run_id"]
    assert (run / "best.pth").exists()
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--overwrite")[1:]) == 0
    second = json.loads((run / "args.json").read_text())["run_id"]
    assert second != first
    assert not (run / "best.pth").exists()  # the old run's best can no longer be picked by test.py
    assert load_checkpoint(run / "last.pth")["run_id"] == load_checkpoint(run / "UNet_epoch_0.pth")["run_id"] == second
    assert (run / "log.txt").read_text().count(first) == 1  # the old run's log is gone; the new one names what it removed


def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_lock_is_taken_over(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this test process is alive
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 2
    assert f"another run (process {os.getpid()} on {socket.gethostname()}) is writing into {run}" in capsys.readouterr().err
    assert not (run / "args.json").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".train.lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    (run / ".last.pth.123.abcd.tmp").write_bytes(b"half a checkpoint")
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 0
    assert not (run / ".train.lock").exists() and not list(run.glob(".*.tmp"))


def test_test_py_names_the_run_and_refuses_a_best_pth_of_another_run(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--val_cases", "1")[1:]) == 0
    old_best = tmp_path / "old_best.pth"
    shutil.copy(run / "best.pth", old_best)
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--val_cases", "1", "--overwrite")[1:]) == 0
    latest = json.loads((run / "args.json").read_text())["run_id"]
    older = load_checkpoint(old_best)["run_id"]
    shutil.copy(old_best, run / "best.pth")  # an older run's best.pth left in the folder
    test_args = [
        "--output_dir",
        str(run),
        "--volume_path",
        str(phantom["out_dir"]),
        "--list_dir",
        str(phantom["train_list"].parent),
        "--workers",
        "0",
        "--max_epochs",
        "1",
    ]
    assert load_test_script().main(test_args) == 2
    message = capsys.readouterr().err
    assert f"was written by run {older}, but the latest run in {run} is {latest}" in message
    assert load_test_script().main([*test_args, "--ckpt", str(run / "last.pth")]) == 0


def test_sigterm_mid_epoch_then_the_same_command_ends_with_the_uninterrupted_weights(phantom, trained_run, tmp_path):
    # The signal comes during the second step of epoch 1, the last. The uninterrupted run is
    # trained_run: the same 2 epochs of the same U-Net (SignalAt only adds the signal).
    per_epoch = -(-phantom["num_train_slices"] // 4)

    def command(folder, once_file):
        kwargs = json.dumps({"base_channels": 4, "depth": 2, "signal_at": per_epoch + 2, "once_file": str(once_file)})
        args = tiny_train_args(phantom, folder, "--max_epochs", "2", "--resume", "auto")
        at = args.index("--model_kwargs")
        args[at - 1 : at + 2] = [SIGNAL_NET, "--model_kwargs", kwargs]
        return args

    stopped = tmp_path / "stopped"
    first = run_script(*command(stopped, tmp_path / "once"))
    assert first.returncode == 128 + 15, first.stderr
    payload = load_checkpoint(stopped / "last.pth")
    assert payload["within_epoch"] == {"epoch": 1, "batches_done": 2} and payload["iteration"] == per_epoch + 2
    log = (stopped / "log.txt").read_text()
    assert "received SIGTERM: stopping after the current step" in log and "stopped by SIGTERM inside epoch 1" in log
    second = run_script(*command(stopped, tmp_path / "once"))
    assert second.returncode == 0, second.stderr
    assert (
        "resumed run" in (stopped / "log.txt").read_text()
        and "inside epoch 1 after 2 batches" in (stopped / "log.txt").read_text()
    )
    assert_same_weights(stopped / "last.pth", trained_run / "last.pth")


def test_under_torchrun_sigterm_stops_every_process_where_they_read_the_losses_and_resume_is_exact(phantom, tmp_path):
    # Epochs here are shorter than LOG_EVERY steps, so the processes first agree on stopping at
    # the end of the epoch the signal came in, not after the step (asking at every step would
    # make every step wait for the GPU).
    def command(folder, once_file, epochs=2):
        kwargs = json.dumps({"base_channels": 4, "depth": 2, "signal_at": 2, "once_file": str(once_file)})
        args = tiny_train_args(phantom, folder, "--max_epochs", str(epochs), "--resume", "auto", "--device", "cpu")
        at = args.index("--model_kwargs")
        args[at - 1 : at + 2] = [SIGNAL_NET, "--model_kwargs", kwargs]
        return args

    def torchrun(args, port):
        return run_script("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args, timeout=300)

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    (tmp_path / "never").touch()
    assert LOG_EVERY > -(-phantom["num_train_slices"] // 8)
    assert torchrun(command(straight, tmp_path / "never"), 29536).returncode == 0
    first = torchrun(command(stopped, tmp_path / "once"), 29537)
    assert first.returncode != 0 and (tmp_path / "once").exists()
    payload = load_checkpoint(stopped / "last.pth")
    assert payload["epoch"] == 0 and payload.get("within_epoch") is None
    assert "stopped by SIGTERM after epoch 0" in (stopped / "log.txt").read_text()
    second = torchrun(command(stopped, tmp_path / "once"), 29538)
    assert second.returncode == 0, second.stderr[-2000:]
    assert_same_weights(stopped / "last.pth", straight / "last.pth")
    # one process continuing a two-process run: process 0's streams go on, and the log says so
    assert train_script.main(command(straight, tmp_path / "never", epochs=3)[1:]) == 0
    assert "holds the random streams of 2 process(es) and this run has 1" in (straight / "log.txt").read_text()


def test_a_longer_run_continues_the_poly_schedule_instead_of_lr_0(phantom, trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    run = tmp_path / "run"
    payload = load_checkpoint(run / "last.pth")
    per_epoch, lr0 = payload["iteration"] // 2, payload["args"]["lr"]
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "4", "--resume", "auto")[1:]) == 0
    log = (run / "log.txt").read_text()
    resumed_lr = poly_lr(lr0, 2 * per_epoch, 4 * per_epoch)
    assert f"the poly schedule continues as if planned so from the start, at lr {resumed_lr:.3e}" in log
    final = load_checkpoint(run / "last.pth")
    assert final["iteration"] == 4 * per_epoch
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the end of the new plan
    epoch_2 = load_checkpoint(run / "UNet_epoch_2.pth")["optimizer"]["param_groups"][0]["lr"]
    assert epoch_2 == pytest.approx(poly_lr(lr0, 3 * per_epoch, 4 * per_epoch), rel=1e-9)


def test_a_changed_run_is_refused_naming_each_change(phantom, trained_run, tmp_path, capsys):
    args = tiny_train_args(
        phantom, tmp_path, "--max_epochs", "3", "--resume", str(trained_run / "last.pth"), "--batch_size", "2", "--base_lr", "0.1"
    )[1:]
    assert train_script.main(args) == 2
    message = capsys.readouterr().err
    assert "batch_size 4 -> 2" in message and "base_lr 0.05 -> 0.1" in message and "--resume_accept_changes" in message
    assert not (tmp_path / "last.pth").exists()
    assert train_script.main([*args, "--resume_accept_changes", "--amp", "bf16"]) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "resuming with a changed setting (--resume_accept_changes): batch_size 4 -> 2" in log
    assert "--amp bf16 where the checkpoint trained with off: a fresh gradient scaler" in log


def test_gpu_random_streams_are_restored_for_the_visible_gpus_only():
    state = {**rng_state(), "cuda": [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]}  # 8 GPUs then
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.device_count", return_value=1),
        mock.patch("torch.cuda.set_rng_state") as set_state,
    ):
        restore_rng_state(state)
    assert [(call.args[0][0].item(), call.args[1]) for call in set_state.call_args_list] == [(0, 0)]


def test_an_evaluation_slower_than_the_collective_timeout_does_not_kill_torchrun(phantom, tmp_path):
    # Each of the two processes evaluates one test volume, 6-8 slices at 2.5 s each: about 15-20 s
    # of evaluation against a 12 s timeout. Before, rank 1 waited in a barrier for rank 0's 35 s.
    args = tiny_train_args(phantom, tmp_path, "--max_epochs", "1", "--device", "cpu", "--dist_timeout", "0.2")
    at = args.index("--model_kwargs")
    args[at - 1 : at + 2] = [
        "tests.plugin_networks.SlowEval",
        "--model_kwargs",
        '{"base_channels": 4, "depth": 2, "seconds": 2.5}',
    ]
    result = run_script("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "log.txt").read_text()
    assert "test evaluation after epoch 0 (2 case(s)" in log and "weights identical on all 2 processes: yes" in log
    metrics = json.loads((tmp_path / "eval" / "epoch_0" / "metrics.json").read_text())
    assert [case["case"] for case in metrics["cases"]] == phantom["test_case_ids"]  # gathered in list order


def test_bad_evaluation_data_stop_the_run_before_the_first_step(phantom, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom["out_dir"], data)
    case = phantom["test_case_ids"][1]
    with h5py.File(data / "test_vol_h5" / f"{case}.npy.h5", "r+") as file:
        label = file["label"][()]
        label[0, 0, 0] = 12  # outside the 9 classes
        file["label"][...] = label
    run = tmp_path / "run"
    args = [
        "--root_path",
        str(data / "train_npz"),
        "--test_path",
        str(data / "test_vol_h5"),
        "--list_dir",
        str(data / "lists"),
        "--output_dir",
        str(run),
        *TINY_RUN,
    ]
    assert train_script.main(args) == 2
    message = capsys.readouterr().err
    assert f"{case}.npy.h5" in message and "label values span" in message
    assert not list(run.glob("*.pth"))
    assert "train.py: error:" in (run / "log.txt").read_text()  # the reason reaches the log, not only stderr


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    assert (
        train_script.main(["--output_dir", str(tmp_path), "--resume", "auto", "--overwrite", "--module", "networks.UNet.UNet"])
        == 2
    )
    assert "--resume auto and --overwrite contradict each other" in capsys.readouterr().err


def test_a_checkpoint_of_the_previous_format_is_compared_on_what_it_recorded(phantom, trained_run):
    payload = load_checkpoint(trained_run / "last.pth")
    config, _ = train_script.resolve_config(train_script.build_parser().parse_args(tiny_train_args(phantom, trained_run)[1:]))
    older = {
        **payload,
        "args": {k: v for k, v in payload["args"].items() if k not in ("train_list_sha256", "accumulation_steps")},
    }
    older["args"]["model_kwargs"] = '{"base_channels": 4, "depth": 2}'  # the flag's JSON text, as it was saved then
    assert changed_settings(older, config) == []
    older["args"]["batch_size"] = 8
    assert changed_settings(older, config) == ["batch_size 8 -> 4"]
