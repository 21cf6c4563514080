"""The run library (utils/config.py, utils/checkpointer.py, utils/loop.py) and what the scripts
promise about it: one write of the payload per epoch, the plan's evaluation schedule, one
precedence rule for checkpoint against flag, test.py shared by torchrun, and scripts whose
functions stay small."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import train as train_script
from tests.conftest import REPO, load_test_script, phantom_test_args, run_script, tiny_train_args
from tests.test_engine import assert_same_metrics
from utils.checkpointer import Checkpointer, TrainState
from utils.config import resolve_config
from utils.devices import Placement
from utils.errors import UserError
from utils.loop import TEST, VALIDATION, Plan

SCRIPTS = ("train.py", "test.py")
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6


def tiny_config(phantom: dict, output_dir: Path, *extra: str):
    return resolve_config(train_script.build_parser().parse_args(tiny_train_args(phantom, output_dir, *extra)[1:]))[0]


def test_an_evaluated_best_epoch_writes_its_payload_once_and_links_the_other_names(phantom, tmp_path, monkeypatch):
    config = tiny_config(phantom, tmp_path, "--model_name", "net")
    model = torch.nn.Conv2d(1, 2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10)
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), "run-1", epoch=3)
    writes = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda payload, stream: writes.append(payload) or real_save(payload, stream))
    Checkpointer(config, Placement(torch.device("cpu"))).save(state, best=True, periodic=True)
    assert len(writes) == 1
    inodes = {(tmp_path / name).stat().st_ino for name in ("last.pth", "best.pth", "net_epoch_3.pth")}
    assert len(inodes) == 1
    assert not list(tmp_path.glob(".*.tmp"))
    # the next epoch replaces last.pth; best.pth and the epoch file keep epoch 3
    state.epoch = 4
    Checkpointer(config, Placement(torch.device("cpu"))).save(state)
    assert len(writes) == 2
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 4


def test_the_training_run_links_its_periodic_checkpoint_to_last_pth(trained_run):
    # the tiny run evaluates every epoch; its final epoch's checkpoint is the same file as last.pth
    assert (trained_run / "UNet_epoch_1.pth").stat().st_ino == (trained_run / "last.pth").stat().st_ino
    assert (trained_run / "UNet_epoch_0.pth").stat().st_ino != (trained_run / "last.pth").stat().st_ino


@pytest.mark.parametrize(
    ("kind", "interval", "max_epochs", "last_epoch", "due"),
    [
        (TEST, 20, 400, 399, [199, 219, 239, 259, 279, 299, 319, 339, 359, 379, 399]),  # the published schedule
        (VALIDATION, 20, 100, 99, [19, 39, 59, 79, 99]),  # held-out cases: from the start
        (TEST, 3, 7, 6, [5, 6]),  # half-way (3.5) rounds up to epoch 6 done; the last epoch always
        (TEST, 0, 5, 4, []),  # 0: never
        (VALIDATION, 4, 10, 5, [3, 5]),  # --max_iterations ends the run at epoch 5: it is evaluated
    ],
)
def test_the_plan_evaluates_on_the_published_schedule(kind, interval, max_epochs, last_epoch, due):
    plan = Plan(10, 10 * (last_epoch + 1), last_epoch, interval, max_epochs, kind)
    assert [epoch for epoch in range(last_epoch + 1) if plan.evaluation_due(epoch)] == due


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--module", "networks.DAEFormer.DAEFormer"], "--module networks.DAEFormer.DAEFormer contradicts"),
        (["--num_classes", "5"], "--num_classes 5 contradicts"),
        (["--dataset", "ACDC"], "--dataset ACDC contradicts"),
        (["--img_size", "64"], "--img_size 64 contradicts"),
        (["--model_kwargs", '{"base_channels": 8}'], "--base_channels 8 contradicts"),
    ],
)
def test_a_flag_that_contradicts_the_checkpoint_is_an_error_naming_both_values(
    phantom, trained_run, tmp_path, capsys, flags, named
):
    code = load_test_script().main(phantom_test_args(phantom, trained_run / "last.pth", tmp_path, *flags))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("test.py: error: ") and named in err and "(the checkpoint decides)" in err and len(err.splitlines()) == 1
    )


def test_a_flag_that_agrees_with_the_checkpoint_is_accepted(phantom, trained_run, tmp_path):
    agreeing = ["--module", "networks.UNet.UNet", "--num_classes", "9", "--dataset", "Synapse", "--img_size", "32"]
    agreeing += ["--model_kwargs", '{"base_channels": 4}']
    assert load_test_script().main(phantom_test_args(phantom, trained_run / "last.pth", tmp_path, *agreeing)) == 0


def test_torchrun_shares_test_py_and_writes_what_one_process_writes(phantom, trained_run, tmp_path):
    checkpoint = trained_run / "last.pth"
    one, two = tmp_path / "one", tmp_path / "two"
    assert load_test_script().main(phantom_test_args(phantom, checkpoint, one, "--eval_workers", "0")) == 0
    result = run_script(
        *("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561", "test.py"),
        *phantom_test_args(phantom, checkpoint, two, "--eval_workers", "0", "--device", "cpu", "--save_png"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    single, shared = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert [c["case"] for c in shared["cases"]] == [c["case"] for c in single["cases"]] == phantom["test_case_ids"]
    assert_same_metrics(single, shared)
    # each process wrote the montages of its own share
    assert sorted(path.stem for path in two.glob("*.png")) == sorted(phantom["test_case_ids"])


def functions(path: Path) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text(), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_stay_thin(script):
    """Every function of the scripts fits on a screen and takes at most a handful of arguments;
    only the declarative argument parser may be long."""
    for node in functions(REPO / script):
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        assert len(arguments) <= MAX_PARAMETERS, f"{script}:{node.name} takes {len(arguments)} arguments"
        if node.name != "build_parser":
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{script}:{node.name} is {length} lines"


def test_the_shape_rule_catches_a_long_function(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f(a, b, c, d, e, f, g):\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    (node,) = functions(long)
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and len(node.args.args) > MAX_PARAMETERS


def test_the_config_checks_itself_where_it_is_built(phantom, tmp_path):
    config = tiny_config(phantom, tmp_path)
    with pytest.raises(UserError, match="--num_classes must be at least 2"):
        type(config)(**{**config.__dict__, "num_classes": 1})
    with pytest.raises(UserError, match="--eval_interval must be at least 0, got -1"):
        type(config)(**{**config.__dict__, "eval_interval": -1})


def test_a_run_records_its_networks_cost_for_the_comparison_table(trained_run):
    from utils.checkpoint import load_checkpoint, model_from_payload
    from utils.profile import network_cost

    recorded = json.loads((trained_run / "args.json").read_text())["network_cost"]
    model = model_from_payload(load_checkpoint(trained_run / "last.pth"), trained_run / "last.pth")
    assert recorded == network_cost(model, None, 32)
    assert recorded["params"] == sum(p.numel() for p in model.parameters()) > 0
