"""python -m utils.export: ONNX and TorchScript files that compute what the PyTorch network
computes, with their input contract beside them."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import torch

from datasets.catalog import DATASETS
from datasets.common import IMAGE_MEAN, IMAGE_STD
from utils.checkpoint import load_checkpoint, model_from_payload
from utils.export import main

# float32 rounding only: a stated bound, well above the ~1e-7 measured on the tiny U-Net.
TOLERANCE = 1e-5


def test_the_exports_match_pytorch_on_a_batch_and_state_their_input_contract(trained_run, tmp_path, capsys):
    checkpoint = trained_run / "last.pth"
    onnx_path, script_path = tmp_path / "net.onnx", tmp_path / "net.pt"
    assert main([str(checkpoint), "--onnx", str(onnx_path), "--torchscript", str(script_path), "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "matches PyTorch on a batch of 3" in printed
    payload = load_checkpoint(checkpoint)
    model = model_from_payload(payload, checkpoint).eval()
    # a batch of its own: neither the traced one nor the command's own check
    batch = (torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(12345)) - IMAGE_MEAN) / IMAGE_STD
    with torch.no_grad():
        expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["logits"], {"image": batch.numpy()})[0]
    from_script = torch.jit.load(str(script_path)).eval()(batch).detach().numpy()
    np.testing.assert_allclose(from_onnx, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(from_script, expected, atol=TOLERANCE, rtol=0)
    contract = json.loads((tmp_path / "net.onnx.json").read_text())
    assert contract["input"]["shape"] == [3, 1, 32, 32] and contract["output"]["shape"] == [3, 9, 32, 32]
    assert (contract["input"]["mean"], contract["input"]["std"]) == (IMAGE_MEAN, IMAGE_STD)
    assert contract["input"]["intensity_clip"] == list(DATASETS["Synapse"].intensity_clip)
    assert contract["output"]["class_names"] == ["background", *DATASETS["Synapse"].class_names]
    assert contract["check"]["max_abs_difference"] <= contract["check"]["atol"]
    assert json.loads((tmp_path / "net.pt.json").read_text())["export"] == "torchscript"


def test_a_daeformer_exports_to_onnx_within_the_tolerance(tmp_path):
    from networks.DAEFormer import DAEFormer

    weights = tmp_path / "dae.pth"
    torch.save(DAEFormer(num_classes=9, img_size=32, dims=(16, 32, 64), depths=(1, 1, 1), heads=4).state_dict(), weights)
    kwargs = json.dumps({"dims": [16, 32, 64], "depths": [1, 1, 1], "heads": 4})  # 9 classes: the Synapse default
    status = main([str(weights), "--model_kwargs", kwargs, "--img_size", "32", "--onnx", str(tmp_path / "dae.onnx")])
    assert status == 0
    check = json.loads((tmp_path / "dae.onnx.json").read_text())["check"]
    assert check["max_abs_difference"] <= 1e-4 and check["same_argmax_fraction"] > 0.99


def test_nothing_to_write_is_a_one_line_error(trained_run, capsys):
    assert main([str(trained_run / "last.pth")]) == 2
    assert capsys.readouterr().err.strip() == (
        "utils.export: error: nothing to write: give --onnx FILE and/or --torchscript FILE"
    )


def test_an_export_that_differs_from_pytorch_fails_the_check(trained_run, tmp_path, capsys, monkeypatch):
    import utils.export as export_module

    real = export_module.run_onnx
    monkeypatch.setattr(export_module, "run_onnx", lambda path, batch: real(path, batch) + 1e-3)
    assert main([str(trained_run / "last.pth"), "--onnx", str(tmp_path / "net.onnx")]) == 2
    err = capsys.readouterr().err
    assert "the export differs from PyTorch by up to 0.001 (more than --atol 0.0001)" in err
