"""One evaluation engine: the numbers train.py logs after its last epoch are the numbers test.py
writes for that epoch's checkpoint on the same cases, for volumes and for 2D images."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import train as train_script
from datasets.synthetic.isic import generate_dataset as generate_images
from tests.conftest import load_test_script, phantom_test_args, tiny_isic_args
from utils.errors import UserError
from utils.evaluation import EvalSettings, ImageResult, VolumeEvaluator, VolumeResult, prefetched
from utils.metrics import metrics_for_classes

TOLERANCE = 1e-9


def numbers(metrics: dict) -> list[float]:
    """Every number of a metrics.json, in a fixed order."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key in sorted(value):
                if key != "source":  # what was scored (a run's epoch, a checkpoint's hash), not a score
                    walk(value[key])
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(float(value))

    walk(metrics)
    return found


def assert_same_metrics(first: dict, second: dict) -> None:
    a, b = numbers(first), numbers(second)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)


def test_volumes_train_py_logs_what_test_py_writes_for_the_same_checkpoint(phantom, trained_run, tmp_path):
    trained = json.loads((trained_run / "eval" / "epoch_1" / "metrics.json").read_text())
    code = load_test_script().main(phantom_test_args(phantom, trained_run / "UNet_epoch_1.pth", tmp_path))
    assert code == 0
    tested = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["case"] for c in trained["cases"]] == [c["case"] for c in tested["cases"]] == phantom["test_case_ids"]
    assert_same_metrics(trained, tested)
    # the log line of the last evaluation is the same mean, rounded
    log = (trained_run / "log.txt").read_text()
    logged = re.findall(r"test evaluation after epoch 1 \(2 case\(s\), convention 'published'\): mean Dice ([\d.]+)", log)
    assert logged == [f"{tested['mean_dice']:.4f}"]


def test_images_train_py_logs_what_test_py_writes_for_the_same_checkpoint(tmp_path):
    data = generate_images(tmp_path / "isic", seed=2, size=40, train_images=4, val_images=2, test_images=3)
    lists = tmp_path / "lists"
    shutil.copytree(data["list_dir"], lists)
    shutil.copy(lists / "val.txt", lists / "test.txt")  # test.py scores what train.py validated on
    run = tmp_path / "run"
    assert train_script.main(tiny_isic_args(data, run, lists)) == 0
    trained = json.loads((run / "eval" / "epoch_0" / "metrics.json").read_text())
    assert (
        load_test_script().main(
            [
                "--ckpt",
                str(run / "UNet_epoch_0.pth"),
                "--volume_path",
                str(data["out_dir"]),
                "--list_dir",
                str(lists),
                "--test_save_dir",
                str(tmp_path / "test"),
            ]
        )
        == 0
    )
    tested = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert [c["case"] for c in tested["cases"]] == data["val"]
    assert_same_metrics(trained, tested)


class Constant(torch.nn.Module):
    """A 'network' whose argmax is class 1 where the input is above 0 (intensity > 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def test_volume_result_means_and_files_by_hand(tmp_path):
    image = np.zeros((2, 8, 8), np.float32)
    image[:, 2:6, 2:6] = 1.0
    label = np.zeros((2, 8, 8), np.int64)
    label[:, 2:6, 2:4] = 1  # half of the predicted square
    case = {"image": image, "label": label, "case_name": "c1", "spacing": None}
    settings = EvalSettings((8, 8), 1, torch.device("cpu"))
    result = VolumeEvaluator(2, ["organ"], settings).evaluate(Constant(), [case, {**case, "case_name": "c2"}])
    # Dice = 2 * 16 / (32 + 16) per case, by hand
    assert result.scores[:, 0, 0].tolist() == pytest.approx([2 / 3, 2 / 3])
    # HD95 by hand: of the 48 surface distances (both slices are surface), the prediction's
    # columns 2-3 lie 0 from the label, 4 lie 1 and 5 lie 2; the label's 16 lie 0 from the
    # prediction. 32 zeros, 8 ones, 8 twos: the 95th percentile is 2.
    assert result.mean_hd95 == 2.0
    assert metrics_for_classes(np.where(image > 0.5, 1, 0), label, 2)[0, 1] == 2.0
    result.write(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["mean_dice"] == pytest.approx(2 / 3) and [c["case"] for c in written["cases"]] == ["c1", "c2"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,class,name,dice,hd95" and rows[-1].startswith("mean,,all,0.666667")


def test_nan_convention_averages_with_nanmean():
    scores = np.array([[[1.0, 2.0], [np.nan, np.nan]], [[0.5, 4.0], [0.0, 1.0]]])
    result = VolumeResult(["a", "b"], ["x", "y"], scores, "nan", "voxels")
    np.testing.assert_allclose(result.per_class, [[0.75, 3.0], [0.0, 1.0]])
    assert result.mean_dice == pytest.approx(0.375)


def test_image_result_pools_counts():
    counts = np.array([[[1, 0, 1, 2]], [[3, 1, 0, 0]]])  # TP FP FN TN of two images, one class
    result = ImageResult(["lesion"], ["a", "b"], counts)
    assert result.means["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert result.per_image[:, 0, 0].tolist() == pytest.approx([2 / 3, 6 / 7])


def test_prefetched_keeps_order_and_raises_the_readers_error():
    assert list(prefetched(iter([{"k": 1}, {"k": 2}, {"k": 3}]))) == [{"k": 1}, {"k": 2}, {"k": 3}]

    def broken():
        yield {"k": 1}
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        list(prefetched(broken()))


def test_more_classes_than_a_byte_holds_is_refused_instead_of_wrapping():
    settings = EvalSettings((32, 32), 1, torch.device("cpu"), "off")
    assert VolumeEvaluator(256, [], settings).num_classes == 256
    with pytest.raises(UserError, match="at most 256 classes, got 257"):
        VolumeEvaluator(257, [], settings)
