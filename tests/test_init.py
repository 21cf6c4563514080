"""train.py --init: a new run that starts from another run's (or the published) weights."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import train as train_script
from tests.conftest import run_script, tiny_train_args
from tests.test_networks import published_state_dict
from utils.checkpoint import CheckpointError, load_checkpoint, sha256
from utils.checkpointer import initialise_from
from utils.config import resolve_config
from utils.devices import Placement
from utils.errors import UserError
from utils.loader import build_network
from utils.loop import build_run
from utils.runs import StopSignal

FEWER_CLASSES = 4


def fewer_classes_copy(phantom: dict, folder: Path, num_classes: int) -> dict:
    """The phantom with every organ id >= ``num_classes`` turned into background."""
    train_dir, test_dir = folder / "train_npz", folder / "test_vol_h5"
    train_dir.mkdir(parents=True)
    for path in sorted(Path(phantom["train_dir"]).glob("*.npz")):
        with np.load(path) as data:
            label = np.where(data["label"] < num_classes, data["label"], 0)
            np.savez(train_dir / path.name, image=data["image"], label=label)
    shutil.copytree(phantom["test_dir"], test_dir)
    for path in test_dir.glob("*.h5"):
        with h5py.File(path, "r+", locking=False) as file:
            label = file["label"][...]
            file["label"][...] = np.where(label < num_classes, label, 0)
    shutil.copytree(Path(phantom["train_list"]).parent, folder / "lists")
    return {**phantom, "train_dir": train_dir, "test_dir": test_dir, "train_list": folder / "lists" / "train.txt"}


def test_a_9_class_run_fine_tuned_into_a_4_class_run_loads_every_other_tensor(phantom, trained_run, tmp_path, caplog):
    source = trained_run / "last.pth"
    data = fewer_classes_copy(phantom, tmp_path / "data", FEWER_CLASSES)
    args = tiny_train_args(data, tmp_path / "run", "--num_classes", str(FEWER_CLASSES), "--init", str(source))
    config = resolve_config(train_script.build_parser().parse_args(args[1:]))[0]
    (tmp_path / "run").mkdir()
    with caplog.at_level(logging.INFO), StopSignal() as stop:
        _, state = build_run(config, Placement(torch.device("cpu")), stop)
    theirs, ours = load_checkpoint(source)["model"], state.model.state_dict()
    assert theirs.keys() == ours.keys()
    for name in ours:
        if name.startswith("head."):
            assert ours[name].shape[0] == FEWER_CLASSES and theirs[name].shape[0] == 9
        else:
            assert torch.equal(ours[name], theirs[name]), name
    assert "re-initialised head.weight" in caplog.text and "re-initialised head.bias" in caplog.text
    assert (state.epoch, state.iteration) == (0, 0)
    recorded = json.loads((tmp_path / "run" / "args.json").read_text())
    assert recorded["init"] == str(source) and recorded["init_sha256"] == sha256(source)


def test_the_fine_tuned_run_trains_and_its_checkpoint_records_where_it_started(phantom, trained_run, tmp_path):
    source = trained_run / "last.pth"
    data = fewer_classes_copy(phantom, tmp_path / "data", FEWER_CLASSES)
    extra = ("--num_classes", str(FEWER_CLASSES), "--init", str(source), "--max_epochs", "1")
    result = run_script(*tiny_train_args(data, tmp_path / "run", *extra))
    assert result.returncode == 0, result.stderr
    assert "re-initialised head.weight" in (tmp_path / "run" / "log.txt").read_text()
    payload = load_checkpoint(tmp_path / "run" / "last.pth")
    assert payload["args"]["init_sha256"] == sha256(source)
    assert payload["epoch"] == 0 and payload["model"]["head.weight"].shape[0] == FEWER_CLASSES


def test_a_plain_state_dict_with_module_prefixes_loads_every_tensor(trained_run, tmp_path):
    weights = load_checkpoint(trained_run / "last.pth")["model"]
    plain = tmp_path / "weights.pth"
    torch.save({"module." + name: tensor for name, tensor in weights.items()}, plain)
    model = build_network("networks.UNet.UNet", {"num_classes": 9, "base_channels": 4, "depth": 2})
    report = initialise_from(model, plain)
    assert report.reinitialised == {} and len(report.loaded) == len(weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_weights_of_another_architecture_are_a_one_line_error_naming_the_tensors(trained_run):
    deeper = build_network("networks.UNet.UNet", {"num_classes": 9, "base_channels": 4, "depth": 3})
    with pytest.raises(CheckpointError, match=r"does not fit UNet .*missing down\.2\.") as error:
        initialise_from(deeper, trained_run / "last.pth")
    assert "\n" not in str(error.value)


def test_init_with_resume_is_refused(phantom, trained_run, tmp_path):
    args = tiny_train_args(phantom, tmp_path, "--init", str(trained_run / "last.pth"), "--resume", "auto")
    with pytest.raises(UserError, match="--init .* and --resume auto contradict"):
        resolve_config(train_script.build_parser().parse_args(args[1:]))


def test_the_published_weights_start_a_4_class_1_channel_daeformer(tmp_path):
    published = published_state_dict()
    path = tmp_path / "published.pth"
    torch.save({"module." + name: tensor for name, tensor in published.items()}, path)
    model = build_network("networks.DAEFormer.DAEFormer", {"num_classes": FEWER_CLASSES, "in_chans": 1})
    report = initialise_from(model, path)
    assert set(report.reinitialised) == {
        "backbone.patch_embed1.proj.weight",
        "decoder_0.last_layer.weight",
        "decoder_0.last_layer.bias",
    }
    for name, tensor in model.state_dict().items():
        if name not in report.reinitialised:
            assert torch.equal(tensor, published[name]), name
