"""What a researcher reads and types: --help grouped with defaults and without the compatibility
flags (which still parse and are still logged), data folders that carry their own lists, and the
warning that names an organ the network never predicted."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

import train as train_script
from tests.conftest import TINY_RUN, load_test_script, run_script
from utils.cli import PUBLISHED_IGNORED_FLAGS
from utils.config import resolve_config
from utils.evaluation import VolumeResult

TEST_SCRIPT = load_test_script()


@pytest.mark.parametrize("script", [train_script, TEST_SCRIPT], ids=["train.py", "test.py"])
def test_help_is_grouped_shows_defaults_and_hides_the_compatibility_flags(script):
    parser = script.build_parser()
    text = parser.format_help()
    titles = " | ".join(group.title for group in parser._action_groups)
    for group in ("data", "network", "evaluation", "output", "hardware"):
        assert group in titles, (group, titles)
    shown = set(re.findall(r"--[\w-]+", text))
    for flag in script.IGNORED_FLAGS:
        assert flag not in shown, flag
    last = text.splitlines()[-1]
    assert last.startswith(f"{len(script.IGNORED_FLAGS)} more flags of the published scripts are accepted and ignored")
    assert "docs/training.md" in last
    assert "(default: auto)" in text  # --device


def test_train_help_fits_a_screen_and_states_the_recipe(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal: measure an 80-column one
    text = train_script.build_parser().format_help()
    assert len(text.splitlines()) <= 90
    flat = " ".join(text.split())
    for shown in ("--max_epochs N epochs (default: 400)", "--batch_size N", "(default: 24)", "SGD learning rate (default: 0.05)"):
        assert shown in flat, shown
    assert "random seed (default: 1234)" in flat and "(default: daeformer)" in flat
    titles = [group.title for group in train_script.build_parser()._action_groups]
    assert "output and runs" in titles and "hardware" in titles and "training (the published recipe by default)" in titles


def test_the_hidden_flags_still_parse_and_are_logged_when_given():
    every = ["--zip", "--cache-mode", "part", "--amp-opt-level", "O1", "--tag", "t", "--eval", "--throughput"]
    every += ["--opts", "K", "V", "--n_gpu", "1", "--z_spacing", "3"]
    args = train_script.build_parser().parse_args(every)
    assert (args.zip, args.cache_mode, args.amp_opt_level, args.tag, args.opts, args.n_gpu, args.z_spacing) == (
        True,
        "part",
        "O1",
        "t",
        ["K", "V"],
        1,
        3,
    )
    _, notes = resolve_config(args, train_script.IGNORED_FLAGS)
    assert notes[0] == (
        "ignored (accepted for compatibility with the published scripts): --zip, --cache-mode, --amp-opt-level, "
        "--tag, --eval, --throughput, --opts, --n_gpu, --z_spacing"
    )
    test_args = TEST_SCRIPT.build_parser().parse_args(["--max_iterations", "5", "--base_lr", "0.1", "--seed", "3", "--zip"])
    assert (test_args.max_iterations, test_args.base_lr, test_args.seed, test_args.zip) == (5, 0.1, 3, True)
    # Every hidden flag is a flag of the published scripts this repository declares once.
    assert set(train_script.IGNORED_FLAGS) | set(TEST_SCRIPT.IGNORED_FLAGS) == set(PUBLISHED_IGNORED_FLAGS)


def test_a_data_folder_with_its_own_lists_needs_no_list_dir(phantom, tmp_path):
    args = train_script.build_parser().parse_args(
        ["--root_path", str(phantom["train_dir"]), "--test_path", str(phantom["test_dir"]), *TINY_RUN]
    )
    config, notes = resolve_config(args)
    lists = phantom["out_dir"] / "lists"
    assert config.list_dir == str(lists)
    assert f"--list_dir {lists} (the lists beside the training data)" in notes
    # A flag the user gives still wins, and a folder without lists falls back to the table's.
    given, _ = resolve_config(train_script.build_parser().parse_args(["--list_dir", "mine", *TINY_RUN]))
    assert given.list_dir == "mine"
    bare, _ = resolve_config(train_script.build_parser().parse_args(["--root_path", str(tmp_path / "train_npz"), *TINY_RUN]))
    assert bare.list_dir == "./lists/lists_Synapse"


def test_test_py_reads_the_lists_beside_its_data(phantom, trained_run, tmp_path):
    # No --list_dir: without the lists beside the data, test.py would look for the 12 Synapse cases.
    out = tmp_path / "out"
    result = run_script(
        "test.py", "--ckpt", str(trained_run / "last.pth"), "--volume_path", str(phantom["out_dir"]), "--test_save_dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    log = (out / "log.txt").read_text()
    assert f"--list_dir {phantom['out_dir'] / 'lists'} (the lists beside the test data)" in log
    assert f"evaluating {len(phantom['test_case_ids'])} volume(s)" in log


def result_of(scores: list, convention: str) -> VolumeResult:
    return VolumeResult(["aorta", "liver", "spleen"], ["a", "b"], np.array(scores, dtype=float), convention, "voxels")


def test_never_predicted_is_read_from_the_scores():
    # published: a missed organ is (0, 0) in every case; a predicted one has Dice > 0 or HD95 > 0 somewhere.
    published = result_of([[[0, 0], [0.9, 2.5], [0, 0]], [[0, 0], [0, 7.0], [1, 0]]], "published")
    assert published.never_predicted == ["aorta"]
    # nan: a missed organ is (0, NaN) or (NaN, NaN); a predicted one has a finite HD95 where present.
    nan = np.nan
    unpredicted = result_of([[[0, nan], [0.9, 2.5], [nan, nan]], [[nan, nan], [0, 7.0], [0, nan]]], "nan")
    assert unpredicted.never_predicted == ["aorta", "spleen"]


def test_the_evaluation_log_warns_about_organs_never_predicted(caplog):
    result = result_of([[[0, 0], [0.9, 2.5], [0, 0]], [[0, 0], [0.5, 7.0], [0, 0]]], "published")
    with caplog.at_level(logging.INFO, logger="utils.evaluation"):
        result.log("test volumes")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        "never predicted in any case that holds it: aorta, spleen -- under the published convention a missed organ "
        "scores Dice 0 and HD95 0, which lowers the mean Dice and also the mean HD95"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.evaluation"):
        result_of([[[0.1, 3], [0.9, 2.5], [0, 4]], [[0, 0], [0.5, 7.0], [0, 0]]], "published").log("test volumes")
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


def test_test_py_names_the_organs_a_network_never_predicts(phantom, tmp_path):
    # The band network with flat weights and the liver's bias highest predicts liver everywhere.
    from tests.band_network import IntensityBands

    model = IntensityBands(9, 32)
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.bias[5] = 1.0
    ckpt = tmp_path / "liver_only.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    flags = ["--ckpt", str(ckpt), "--module", "tests.band_network.IntensityBands", "--img_size", "32"]
    result = run_script("test.py", *flags, "--volume_path", str(phantom["out_dir"]), "--test_save_dir", str(out))
    assert result.returncode == 0, result.stderr
    warned = [line for line in (out / "log.txt").read_text().splitlines() if "never predicted" in line]
    assert len(warned) == 1
    assert "aorta, gallbladder, left kidney, right kidney, pancreas, spleen, stomach --" in warned[0]
