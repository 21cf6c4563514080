"""python -m utils.check_weights: the published layout fits, a 'module.' prefix is fine, and every
renamed, missing or mis-shaped tensor is named."""

from __future__ import annotations

import hashlib

import pytest
import torch

from networks.DAEFormer import DAEFormer
from tests.conftest import run_script
from tests.test_networks import published_layout
from utils.check_weights import check_weights, main

PUBLISHED_TENSORS, NETWORK_TENSORS = 629, 429


def published_file_stand_in() -> dict[str, torch.Tensor]:
    """Zero tensors of exactly the published names and shapes. Each is a stride-0 view of one
    element, so the saved file is a few hundred kB instead of the real 192 MB."""
    return {name: torch.zeros(1).expand(shape) for name, shape in published_layout()}


def run(path, capsys) -> tuple[int, list[str]]:
    code = main([str(path)])
    return code, capsys.readouterr().out.splitlines()


def test_the_published_layout_fits_and_its_dead_tensors_are_dropped(tmp_path, capsys):
    path = tmp_path / "daeformer_synapse.pth"
    torch.save(published_file_stand_in(), path)
    code, lines = run(path, capsys)
    assert code == 0, lines
    assert lines[0] == f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert lines[1] == (
        f"{PUBLISHED_TENSORS} tensors: {NETWORK_TENSORS} of the {NETWORK_TENSORS} tensors of "
        "networks.DAEFormer.DAEFormer (published configuration) present with their shapes"
    )
    assert lines[2].startswith(f"{PUBLISHED_TENSORS - NETWORK_TENSORS} tensors of modules the reference builds")
    assert lines[-1] == "clean: the weights fit the published network"


def test_a_module_prefix_and_a_state_dict_of_the_network_itself(tmp_path, capsys):
    own = DAEFormer().state_dict()
    path = tmp_path / "multi_gpu.pth"
    torch.save({f"module.{name}": tensor for name, tensor in own.items()}, path)
    code, lines = run(path, capsys)
    assert code == 0 and any("'module.' prefix of a multi-GPU run: fine" in line for line in lines)
    report = check_weights(path)
    assert report.dropped == [] and report.clean


def test_renamed_missing_and_mis_shaped_tensors_are_named(tmp_path, capsys):
    weights = published_file_stand_in()
    weights["backbone.norm1.weight_renamed"] = weights.pop("backbone.norm1.weight")
    weights["decoder_1.layer_former_1.attn.queries.bias"] = torch.zeros(7)
    del weights["decoder_0.last_layer.bias"]
    path = tmp_path / "edited.pth"
    torch.save(weights, path)
    code, lines = run(path, capsys)
    found = [line for line in lines if line.startswith("PROBLEM")]
    assert code == 1 and lines[-1] == "4 problems found (2 missing, 1 unexpected, 1 mis-shaped)"
    assert found == [
        "PROBLEM mis-shaped tensor decoder_1.layer_former_1.attn.queries.bias: [7] in the file, [320] in the published network",
        "PROBLEM missing tensor backbone.norm1.weight [128]: the file lacks it",
        "PROBLEM missing tensor decoder_0.last_layer.bias [9]: the file lacks it",
        "PROBLEM unexpected tensor backbone.norm1.weight_renamed [128]: the published network has no such tensor "
        "(renamed, or another network?)",
    ]


def test_a_14_class_head_is_explained(tmp_path, capsys):
    path = tmp_path / "btcv14.pth"
    torch.save(DAEFormer(num_classes=14).state_dict(), path)
    code, lines = run(path, capsys)
    assert code == 1
    assert (
        "PROBLEM mis-shaped tensor decoder_0.last_layer.weight: [14, 128, 1, 1] in the file, [9, 128, 1, 1] in "
        "the published network (a 14-class head; the published Synapse network has 9 classes)"
    ) in lines


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_an_unreadable_file_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    result = run_script("-m", "utils.check_weights", str(path))
    assert result.returncode == 2 and str(path) in result.stderr and result.stderr.count("\n") == 1
