"""Nothing lost, nothing mixed up: a run's folder is its own, the lock is atomic, --resume auto
converges after a failure in the first epoch, test.py's results are written whole, environment
failures are one line, and a signal to the whole process group stops a run cleanly."""

from __future__ import annotations

import errno
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_script
from tests.conftest import REPO, SCRIPT_ENV, assert_same_weights, load_test_script, phantom_test_args, tiny_train_args
from utils.checkpoint import load_checkpoint, save_checkpoint, sha256
from utils.errors import UserError
from utils.evaluation import VolumeEvaluator
from utils.runs import RunLock

GROUP_SIGNAL_NET = "tests.plugin_networks.SignalGroupAt"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


# -- a run's folder is its own ---------------------------------------------------------------


def test_overwrite_removes_the_runs_files_and_nothing_else(phantom, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "daeformer_synapse.pth").write_bytes(b"the user's own weights")
    (run / "notes.txt").write_text("kept")
    (run / "test").mkdir(exist_ok=True)
    (run / "test" / "metrics.json").write_text("{}")  # the old run's test.py results
    old = json.loads((run / "args.json").read_text())["run_id"]
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--overwrite")[1:]) == 0
    assert (run / "daeformer_synapse.pth").read_bytes() == b"the user's own weights"
    assert (run / "notes.txt").read_text() == "kept"
    assert not (run / "test").exists() and not (run / "UNet_epoch_1.pth").exists()
    log = (run / "log.txt").read_text()
    assert f"--overwrite: removed run {old} from {run}" in log and "UNet_epoch_1.pth" in log  # said in the new log


def test_a_checkpoint_of_another_run_is_not_resumed_into_a_folder_holding_a_run(phantom, trained_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert train_script.main(tiny_train_args(phantom, other, "--max_epochs", "1")[1:]) == 0
    before = snapshot(other)
    args = tiny_train_args(phantom, other, "--max_epochs", "3", "--resume", str(trained_run / "last.pth"))[1:]
    assert train_script.main(args) == 2
    message = last_error(capsys)
    assert f"continues run {load_checkpoint(trained_run / 'last.pth')['run_id']}" in message and "--overwrite" in message
    after = snapshot(other)
    assert {k: v for k, v in after.items() if k != "log.txt"} == {k: v for k, v in before.items() if k != "log.txt"}
    # --overwrite says to replace the folder's run with the continuation of the other one
    assert train_script.main([*args, "--overwrite"]) == 0
    assert load_checkpoint(other / "last.pth")["run_id"] == load_checkpoint(trained_run / "last.pth")["run_id"]


def _contend(folder: str, barrier, results) -> None:
    barrier.wait()
    try:
        with RunLock(Path(folder)):
            results.put("won")
            time.sleep(0.3)
    except UserError:
        results.put("refused")


def test_of_many_runs_started_at_once_exactly_one_takes_the_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(20):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        barrier, results = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_contend, args=(str(folder), barrier, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        outcomes = sorted(results.get(timeout=5) for _ in workers)
        assert outcomes == ["refused", "refused", "refused", "won"], f"try {attempt}: {outcomes}"
        assert not (folder / ".train.lock").exists()  # released by its owner, and no private copy left
        assert list(folder.iterdir()) == []


def test_a_lock_that_holds_no_pid_is_a_one_line_error(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").write_text("garbage")
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 2
    message = last_error(capsys)
    assert message.startswith("train.py: error: the lock") and "remove it if no run is using" in message


# -- --resume auto converges ---------------------------------------------------------------


def test_resume_auto_starts_afresh_after_a_run_that_died_before_its_first_checkpoint(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    died = tiny_train_args(phantom, run, "--max_epochs", "1", "--resume", "auto", "--base_lr", "1e30")[1:]
    assert train_script.main(died) == 2  # a NaN stop in epoch 0: args.json and log.txt, no checkpoint
    assert (run / "args.json").exists() and not (run / "last.pth").exists()
    (run / ".last.pth.999.dead.tmp").write_bytes(b"half")  # a kill during the first checkpoint write
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--resume", "auto")[1:]) == 0
    log = (run / "log.txt").read_text()
    assert "wrote no checkpoint (it stopped in its first epoch); starting fresh" in log
    assert not list(run.glob(".*.tmp")) and (run / "last.pth").exists()


def test_without_resume_a_refusal_suggests_it_and_removes_leftover_temporary_files(phantom, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".last.pth.999.dead.tmp").write_bytes(b"half")
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 2
    assert "--resume auto to continue it" in last_error(capsys)
    assert not list(run.glob(".*.tmp"))


def test_every_configuration_check_runs_before_anything_is_written(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1", "--num_classes", "300")[1:]) == 2
    assert "at most 256 classes" in last_error(capsys)
    assert not (run / "args.json").exists() and not list(run.glob("*.pth"))


def test_a_resume_with_other_workers_says_it_is_not_draw_for_draw(phantom, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    args = tiny_train_args(phantom, run, "--max_epochs", "3", "--resume", "auto")[1:]
    args[args.index("--num_workers") + 1] = "1"
    assert train_script.main(args) == 0
    assert "--num_workers 1 where the checkpoint ran with 0" in (run / "log.txt").read_text()


# -- environment failures are one line -----------------------------------------------------


@pytest.mark.parametrize("case", ["file", "below_a_file", "dangling_link", "cannot_be_created"])
def test_an_output_dir_that_cannot_be_one_is_a_one_line_error(phantom, tmp_path, capsys, case):
    target = {
        "file": tmp_path / "a_file",
        "below_a_file": tmp_path / "a_file" / "run",
        "dangling_link": tmp_path / "link",
        "cannot_be_created": Path("/proc/hsa-unet-test-run"),
    }[case]
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert train_script.main(tiny_train_args(phantom, target, "--max_epochs", "1")[1:]) == 2
    message = last_error(capsys)
    assert message.startswith(f"train.py: error: --output_dir {target}") and "Traceback" not in message
    code = load_test_script().main(phantom_test_args(phantom, tmp_path / "missing.pth", target))
    assert code == 2 and last_error(capsys).startswith(f"test.py: error: --test_save_dir {target}")


def test_a_full_disk_at_a_checkpoint_write_is_one_line_in_the_log_too(phantom, tmp_path, capsys, monkeypatch):
    def full(payload, stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    assert train_script.main(tiny_train_args(phantom, run, "--max_epochs", "1")[1:]) == 2
    message = last_error(capsys)
    assert "could not write the checkpoint" in message and "No space left on device" in message
    assert message in (run / "log.txt").read_text() and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("field", ["model", "model_kwargs"])
def test_a_checkpoint_missing_a_field_is_a_one_line_error(phantom, trained_run, tmp_path, capsys, field):
    payload = load_checkpoint(trained_run / "last.pth")
    del payload[field]
    save_checkpoint(tmp_path / "damaged.pth", payload)
    assert load_test_script().main(phantom_test_args(phantom, tmp_path / "damaged.pth", tmp_path / "out")) == 2
    message = last_error(capsys)
    assert f"without {field}" in message and "damaged.pth" in message


def test_a_checkpoint_whose_arguments_would_take_the_machines_memory_is_refused_unbuilt(phantom, trained_run, tmp_path, capsys):
    payload = load_checkpoint(trained_run / "last.pth")
    payload["model_kwargs"] = {**payload["model_kwargs"], "base_channels": 200_000}  # ~10^12 parameters
    save_checkpoint(tmp_path / "hostile.pth", payload)
    start = time.perf_counter()
    assert load_test_script().main(phantom_test_args(phantom, tmp_path / "hostile.pth", tmp_path / "out")) == 2
    assert time.perf_counter() - start < 60  # counted on the meta device, never allocated
    assert "more than the 2,000,000,000" in last_error(capsys)


# -- test.py's results are written whole ---------------------------------------------------


def test_metrics_json_names_the_checkpoint_it_scores(phantom, trained_run, tmp_path):
    checkpoint = trained_run / "last.pth"
    assert load_test_script().main(phantom_test_args(phantom, checkpoint, tmp_path)) == 0
    source = json.loads((tmp_path / "metrics.json").read_text())["source"]
    assert source == {
        "checkpoint": str(checkpoint.resolve()),
        "sha256": sha256(checkpoint),
        "run_id": load_checkpoint(checkpoint)["run_id"],
    }


def test_an_evaluation_that_fails_leaves_the_previous_results_whole(phantom, trained_run, tmp_path, monkeypatch):
    test_script = load_test_script()
    assert test_script.main(phantom_test_args(phantom, trained_run / "last.pth", tmp_path, "--save_png")) == 0
    before = snapshot(tmp_path)
    real_predict, calls = VolumeEvaluator.predict, []

    def fail_on_second(self, model, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or any failure, half-way through
        return real_predict(self, model, image)

    monkeypatch.setattr(VolumeEvaluator, "predict", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        test_script.main(
            phantom_test_args(phantom, trained_run / "UNet_epoch_0.pth", tmp_path, "--save_png", "--eval_workers", "0")
        )
    after = snapshot(tmp_path)
    kept = {name: data for name, data in after.items() if not name.startswith(".incomplete/") and name != "log.txt"}
    assert kept == {name: data for name, data in before.items() if name != "log.txt"}
    assert any(name.startswith(".incomplete/") for name in after)  # the unfinished evaluation is marked as such
    monkeypatch.undo()
    # the next evaluation removes the unfinished one, and replaces the previous files it lists
    assert test_script.main(phantom_test_args(phantom, trained_run / "UNet_epoch_0.pth", tmp_path)) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert ".incomplete" not in names and not any(name.endswith(".png") for name in names)  # no montage was asked for
    assert json.loads((tmp_path / "metrics.json").read_text())["source"]["sha256"] == sha256(trained_run / "UNet_epoch_0.pth")


def test_a_failed_metrics_write_keeps_the_previous_pair(phantom, trained_run, tmp_path, monkeypatch, capsys):
    test_script = load_test_script()
    assert test_script.main(phantom_test_args(phantom, trained_run / "last.pth", tmp_path)) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "metrics.csv")}

    def quota(stream):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr("utils.evaluation.csv.writer", quota)
    assert test_script.main(phantom_test_args(phantom, trained_run / "UNet_epoch_0.pth", tmp_path)) == 2
    assert "Disk quota exceeded" in last_error(capsys)
    assert {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "metrics.csv")} == before


# -- a signal to the whole process group ----------------------------------------------------


def group_run(args: list[str]) -> subprocess.CompletedProcess:
    """Run a command in a process group of its own, as a scheduler starts a job."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300, start_new_session=True
    )


def signalled_args(phantom: dict, folder: Path, once_file: Path, *extra: str) -> list[str]:
    kwargs = json.dumps({"base_channels": 4, "depth": 2, "signal_at": 3, "once_file": str(once_file)})
    args = tiny_train_args(phantom, folder, "--max_epochs", "2", "--resume", "auto", *extra)
    at = args.index("--model_kwargs")
    args[at - 1 : at + 2] = [GROUP_SIGNAL_NET, "--model_kwargs", kwargs]
    args[args.index("--num_workers") + 1] = "2"
    return args


def test_a_sigterm_to_the_whole_group_stops_at_a_step_and_resumes_exactly(phantom, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    (tmp_path / "never").touch()
    assert group_run(signalled_args(phantom, straight, tmp_path / "never")).returncode == 0
    first = group_run(signalled_args(phantom, stopped, tmp_path / "once"))
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-2000:]
    assert "RuntimeError" not in first.stderr and "Traceback" not in first.stderr
    assert "stopped by SIGTERM inside epoch 0" in (stopped / "log.txt").read_text()
    assert group_run(signalled_args(phantom, stopped, tmp_path / "once")).returncode == 0
    assert_same_weights(stopped / "last.pth", straight / "last.pth")


def test_under_torchrun_a_sigterm_to_the_whole_group_stops_every_process_cleanly(phantom, tmp_path):
    stopped = tmp_path / "stopped"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"]
    result = group_run([*torchrun, *signalled_args(phantom, stopped, tmp_path / "once", "--device", "cpu")])
    assert result.returncode != 0 and (tmp_path / "once").exists()
    log = (stopped / "log.txt").read_text()
    assert "stopped by SIGTERM" in log, result.stderr[-3000:]
    assert "DataLoader worker" not in result.stderr  # no worker died of the signal
    payload = load_checkpoint(stopped / "last.pth")  # complete and loadable
    assert payload["run_id"] == json.loads((stopped / "args.json").read_text())["run_id"]
    assert group_run([*torchrun, *signalled_args(phantom, stopped, tmp_path / "once", "--device", "cpu")]).returncode == 0
    assert load_checkpoint(stopped / "last.pth")["epoch"] == 1 and (stopped / "SignalGroupAt_epoch_1.pth").exists()


# -- the network is checked once, where it is built ------------------------------------------


@pytest.mark.parametrize(
    ("network", "said"),
    [
        ("tests.plugin_networks.HalfSizeLogits", "returned logits of shape (2, 9, 16, 16) for a (2, 1, 32, 32) input"),
        ("tests.plugin_networks.CountsOnly", "returned tuple(Tensor(2, 9), Tensor(2))"),
    ],
)
def test_a_network_that_breaks_the_contract_is_one_line_before_anything_is_written(phantom, tmp_path, capsys, network, said):
    args = tiny_train_args(phantom, tmp_path / "run", "--max_epochs", "1")
    args[args.index("--module") + 1] = network
    assert train_script.main(args[1:]) == 2
    message = last_error(capsys)
    assert message.startswith("train.py: error: ") and said in message
    assert not (tmp_path / "run" / "args.json").exists()


def test_test_py_and_the_api_check_a_checkpoints_network_too(phantom, trained_run, tmp_path, capsys):
    payload = load_checkpoint(trained_run / "last.pth")
    payload["module"] = "tests.plugin_networks.HalfSizeLogits"  # same weights, a forward that breaks the contract
    save_checkpoint(tmp_path / "half.pth", payload)
    assert load_test_script().main(phantom_test_args(phantom, tmp_path / "half.pth", tmp_path / "out")) == 2
    assert "HalfSizeLogits in train mode returned logits of shape (2, 9, 16, 16)" in last_error(capsys)
    from utils.predictor import Predictor

    with pytest.raises(UserError, match=r"the contract is \(2, 9, 32, 32\)"):
        Predictor.from_checkpoint(tmp_path / "half.pth")


def test_the_check_leaves_no_trace_on_batchnorm_statistics_or_random_streams():
    from utils.contract import check_network

    # in train mode this network moves its BatchNorm statistics and draws dropout masks
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5)).eval()
    torch.nn.init.constant_(model[0].bias, 2.0)  # a zero batch then moves the running mean
    before = [buffer.clone() for buffer in model.buffers()]
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    check_network(model, 3, 1, 32, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected_draw)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert not model.training
    model.train()(torch.zeros(1, 1, 4, 4))  # the same forward outside the check does move them
    assert not torch.equal(before[0], model[1].running_mean)


def test_a_mistyped_volume_path_is_named_not_a_file_of_the_default_list(phantom, trained_run, tmp_path, capsys):
    missing = tmp_path / "Synapse_typo"
    args = ["--ckpt", str(trained_run / "last.pth"), "--volume_path", str(missing), "--test_save_dir", str(tmp_path / "out")]
    assert load_test_script().main(args) == 2
    message = last_error(capsys)
    assert message.startswith(f"test.py: error: --test_path (--volume_path) {missing} does not exist; pass a NIfTI scan")
    assert "case0008" not in message
