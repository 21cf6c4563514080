"""test.py end to end: numbers equal to the published protocol computed with medpy, batched
inference equal to slice-by-slice, checkpoints of every kind, NIfTI in and out."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from medpy.metric.binary import dc, hd95
from scipy.ndimage import zoom

from datasets.common import CT_WINDOW, normalise_volume
from networks.DAEFormer import DAEFormer
from tests.band_network import IntensityBands
from tests.conftest import REPO, TINY_SIZE, load_test_script, run_script
from utils.checkpoint import load_checkpoint, model_from_payload
from utils.inference import predict_volume

TEST_SCRIPT = load_test_script()

BANDS = "tests.band_network.IntensityBands"


def protocol_prediction(model: torch.nn.Module, image: np.ndarray, size: int) -> np.ndarray:
    """The published slice-by-slice loop, written out with scipy directly."""
    out = np.zeros(image.shape, dtype=np.int64)
    for z, section in enumerate(image):
        h, w = section.shape
        x = zoom(section, (size / h, size / w), order=3) if (h, w) != (size, size) else section
        x = torch.from_numpy(((x - 0.5) / 0.5).astype(np.float32))[None, None]
        with torch.no_grad():
            label = model(x).argmax(dim=1)[0].numpy()
        out[z] = zoom(label, (h / size, w / size), order=0) if (h, w) != (size, size) else label
    return out


def protocol_metric(pred: np.ndarray, gt: np.ndarray, spacing=None) -> tuple[float, float]:
    """The published per-case rules around medpy."""
    if pred.sum() > 0 and gt.sum() > 0:
        return dc(pred, gt), hd95(pred, gt, voxelspacing=spacing)
    if pred.sum() > 0:
        return 1.0, 0.0
    return 0.0, 0.0


def read_volumes(phantom: dict) -> list[dict]:
    cases = []
    for name in phantom["test_case_ids"]:
        with h5py.File(phantom["test_dir"] / f"{name}.npy.h5") as f:
            cases.append(
                {
                    "name": name,
                    "image": f["image"][()],
                    "label": f["label"][()].astype(np.int64),
                    "spacing": tuple(f.attrs["spacing"]),
                }
            )
    return cases


@pytest.fixture(scope="module")
def bands_ckpt(tmp_path_factory):
    """The published weights' form: a plain state dict, here with the multi-GPU 'module.' prefix."""
    path = tmp_path_factory.mktemp("bands") / "bands.pth"
    torch.save({f"module.{k}": v for k, v in IntensityBands(9, TINY_SIZE).state_dict().items()}, path)
    return path


def evaluate(phantom, output_dir, *flags: str) -> dict:
    code = TEST_SCRIPT.main(
        [
            "--volume_path",
            str(phantom["out_dir"]),
            "--list_dir",
            str(phantom["test_list"].parent),
            "--output_dir",
            str(output_dir),
            *flags,
        ]
    )
    assert code == 0
    return json.loads((output_dir / "test" / "metrics.json").read_text())


@pytest.mark.parametrize("convention, spacing", [("published", None), ("nan", "file")])
def test_every_number_equals_the_published_protocol_with_medpy(phantom, bands_ckpt, tmp_path, convention, spacing):
    flags = [
        "--ckpt",
        str(bands_ckpt),
        "--module",
        BANDS,
        "--img_size",
        "48",
        "--workers",
        "2",
        "--metric_convention",
        convention,
        "--spacing",
        spacing or "voxel",
    ]
    metrics = evaluate(phantom, tmp_path, *flags)
    model = IntensityBands(9, 48).eval()
    expected = []
    for case in read_volumes(phantom):
        prediction = protocol_prediction(model, case["image"], 48)
        rows = []
        for c in range(1, 9):
            pred, gt = prediction == c, case["label"] == c
            if convention == "nan" and not pred.any() and not gt.any():
                rows.append((np.nan, np.nan))
            elif convention == "nan" and not (pred.any() and gt.any()):
                rows.append((0.0, np.nan))
            else:
                rows.append(protocol_metric(pred, gt, case["spacing"] if spacing else None))
        expected.append(rows)
    expected = np.array(expected)
    got = np.array([[case["dice"], case["hd95"]] for case in metrics["cases"]]).transpose(0, 2, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    mean = np.nanmean if convention == "nan" else np.mean
    per_class = mean(expected, axis=0)
    assert metrics["mean_dice"] == pytest.approx(mean(per_class[:, 0]), rel=1e-9)
    assert metrics["mean_hd95"] == pytest.approx(mean(per_class[:, 1]), rel=1e-9)
    assert [row["name"] for row in metrics["per_class"]][:3] == ["aorta", "gallbladder", "left kidney"]
    assert metrics["convention"] == convention and metrics["hd95_unit"] == ("mm" if spacing else "voxels")
    assert 0 < metrics["mean_dice"] < 1 and metrics["mean_hd95"] > 0  # the test exercises real overlaps
    csv_rows = (tmp_path / "test" / "metrics.csv").read_text().splitlines()
    assert csv_rows[0] == "case,class,name,dice,hd95" and len(csv_rows) == 1 + 2 * 8 + 8 + 1


@pytest.mark.parametrize("network", ["unet", "daeformer"])
def test_batched_prediction_equals_one_slice_at_a_time(phantom, trained_run, network):
    if network == "unet":
        model = model_from_payload(load_checkpoint(trained_run / "last.pth"), "ckpt").eval()
    else:
        torch.manual_seed(0)
        model = DAEFormer(num_classes=9, dims=(16, 32, 64), depths=(1, 1, 1), heads=4).eval()
    image = read_volumes(phantom)[0]["image"]
    single = predict_volume(model, image, (TINY_SIZE, TINY_SIZE), batch_size=1)
    np.testing.assert_array_equal(predict_volume(model, image, (TINY_SIZE, TINY_SIZE), batch_size=5), single)
    np.testing.assert_array_equal(single, protocol_prediction(model, image, TINY_SIZE))


def test_a_training_run_is_found_and_evaluated_without_ckpt(phantom, trained_run):
    metrics = evaluate(phantom, trained_run, "--max_epochs", "2", "--save_png", "--is_savenii", "--workers", "0")
    log = (trained_run / "test" / "log.txt").read_text()
    assert "UNet_epoch_1.pth: networks.UNet.UNet" in log
    assert len(metrics["cases"]) == 2
    name = phantom["test_case_ids"][0]
    for suffix in ("_pred.nii.gz", "_img.nii.gz", "_gt.nii.gz", ".png"):
        assert (trained_run / "test" / f"{name}{suffix}").exists(), suffix
    saved = sitk.ReadImage(str(trained_run / "test" / f"{name}_gt.nii.gz"))
    assert saved.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), read_volumes(phantom)[0]["label"])


def test_published_layout_state_dict_with_module_prefix_evaluates(phantom, tmp_path):
    small = {"dims": [16, 32, 64], "depths": [1, 1, 1], "heads": 4}
    torch.manual_seed(0)
    model = DAEFormer(num_classes=9, img_size=TINY_SIZE, **small)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "weights.pth")
    metrics = evaluate(
        phantom,
        tmp_path,
        "--ckpt",
        str(tmp_path / "weights.pth"),
        "--module",
        "networks.DAEFormer.DAEFormer",
        "--model_kwargs",
        json.dumps(small),
        "--img_size",
        str(TINY_SIZE),
    )
    assert len(metrics["per_class"]) == 8


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned_by_test_py",))


def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(phantom, tmp_path):
    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    result = run_script(
        "test.py", "--ckpt", str(tmp_path / "evil.pth"), "--volume_path", str(phantom["out_dir"]), "--output_dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "refused to load" in result.stderr and "Traceback" not in result.stderr
    assert not (REPO / "pwned_by_test_py").exists() and not list(tmp_path.rglob("pwned_by_test_py"))


def test_new_nifti_scans_come_out_as_nifti_with_their_geometry(phantom, bands_ckpt, tmp_path):
    volume = read_volumes(phantom)[0]["image"]
    hu = (volume * 400 - 125).astype(np.float32)  # back to Hounsfield units of the window
    scan = sitk.GetImageFromArray(hu)
    scan.SetSpacing((0.7, 0.8, 2.5))
    scan.SetOrigin((-10.0, 20.0, 5.0))
    scan.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(scan, str(scans / "patient7.nii.gz"))
    result = run_script(
        "test.py",
        "--ckpt",
        str(bands_ckpt),
        "--module",
        BANDS,
        "--img_size",
        "48",
        "--volume_path",
        str(scans),
        "--output_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "test" / "metrics.json").exists()
    out = sitk.ReadImage(str(tmp_path / "test" / "patient7_pred.nii.gz"))
    assert out.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    assert out.GetOrigin() == pytest.approx((-10.0, 20.0, 5.0))
    assert out.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))
    expected = protocol_prediction(IntensityBands(9, 48).eval(), normalise_volume(hu, CT_WINDOW), 48)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ckpt", "missing.pth"], "missing.pth does not exist"),
        (["--module", "networks.Nope.X"], "no module named 'networks.Nope'"),
        (["--spacing", "1,2"], "--spacing '1,2' must be"),
    ],
)
def test_bad_input_is_a_one_line_error(phantom, tmp_path, capsys, flags, message):
    assert TEST_SCRIPT.main(["--volume_path", str(phantom["out_dir"]), "--output_dir", str(tmp_path), *flags]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1
