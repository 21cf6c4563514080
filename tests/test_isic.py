"""ISIC 2018: the pixel metrics, the image reader and lists, the synthetic lesion generator, and
train.py + test.py end to end with --dataset ISIC2018."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import train as train_script
from datasets.common import DataError
from datasets.isic import ImagePairs, read_pair
from datasets.prepare.isic_lists import write_isic_lists
from datasets.synthetic.isic import generate_dataset, make_image
from tests.conftest import load_test_script, tiny_isic_args
from utils.checkpoint import load_checkpoint
from utils.images import confusion, scores

ISIC_SMALL = dict(seed=2, size=40, train_images=4, val_images=2, test_images=3)


def test_metrics_on_a_hand_counted_case():
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    prediction = np.array([[1, 0, 1, 0], [1, 1, 0, 0]])
    counts = confusion(prediction, truth, 2)
    np.testing.assert_array_equal(counts, [[3, 1, 1, 3]])  # TP, FP, FN, TN
    np.testing.assert_allclose(scores(counts)[0], [6 / 8, 3 / 5, 3 / 4, 3 / 4, 6 / 8])
    # no lesion in truth or prediction: nothing to find, nothing wrongly found
    np.testing.assert_allclose(scores(confusion(np.zeros((2, 2)), np.zeros((2, 2)), 2))[0], [1, 1, 1, 1, 1])


def test_pooling_counts_pixels_not_images():
    big = confusion(np.ones((10, 10)), np.ones((10, 10)), 2)  # 100 TP
    small = confusion(np.zeros((2, 2)), np.ones((2, 2)), 2)  # 4 FN
    pooled = scores(big + small)[0]
    assert pooled[0] == pytest.approx(200 / 204)  # Dice of the pooled matrix ...
    assert np.mean([scores(big)[0][0], scores(small)[0][0]]) == pytest.approx(0.5)  # ... not the mean of images


def test_generated_images_have_dark_lesions_and_binary_masks(tmp_path):
    rgb, mask = make_image(np.random.default_rng(0), 64)
    assert rgb.shape == (48, 64, 3) and mask.shape == (48, 64)
    assert set(np.unique(mask)) == {0, 255}
    assert rgb[mask > 0].mean() < rgb[mask == 0].mean() - 20  # pigmented lesion on lighter skin
    first = generate_dataset(tmp_path / "a", **ISIC_SMALL)
    generate_dataset(tmp_path / "b", **ISIC_SMALL)  # same seed: compared file by file below
    assert first["val"] == ["ISIC_0000005", "ISIC_0000006"]
    assert (first["list_dir"] / "test.txt").read_text().split() == ["ISIC_0000007", "ISIC_0000008", "ISIC_0000009"]
    for name in first["test"]:
        np.testing.assert_array_equal(read_pair(tmp_path / "a", name)[0], read_pair(tmp_path / "b", name)[0])
    split = write_isic_lists(tmp_path / "a", tmp_path / "lists")  # the 70/10/20 rule on the sorted names
    assert split["test"] == ["ISIC_0000005"] and split["val"] == ["ISIC_0000002"]
    assert (tmp_path / "lists" / "val.txt").read_text().split() == ["ISIC_0000002"]


def test_the_reader_gives_rgb_tensors_and_checks_sizes(tmp_path):
    data = generate_dataset(tmp_path, **ISIC_SMALL)
    item = ImagePairs(tmp_path, data["list_dir"] / "train.txt", 2, (32, 32), augment=False)[0]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
    assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert set(item["label"].unique().tolist()) == {0, 1}
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "ISIC_0000001_segmentation.png")
    with pytest.raises(DataError, match="ISIC_0000001_segmentation.png is 5x5 but its image is 40x30"):
        read_pair(tmp_path, "ISIC_0000001")


@pytest.fixture(scope="module")
def isic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("isic")
    return generate_dataset(root, **ISIC_SMALL)


def test_train_and_test_end_to_end_with_dataset_isic2018(isic, tmp_path):
    run = tmp_path / "run"
    code = train_script.main(tiny_isic_args(isic, run))
    assert code == 0
    assert load_checkpoint(run / "last.pth")["model_kwargs"]["in_chans"] == 3  # RGB from the table
    log = (run / "log.txt").read_text()
    assert "validation evaluation after epoch 0 (2 images, pixels pooled): dice" in log
    assert (run / "best.pth").exists()

    save = tmp_path / "test"
    code = load_test_script().main(
        [
            "--output_dir",
            str(run),
            "--volume_path",
            str(isic["out_dir"]),
            "--list_dir",
            str(isic["list_dir"]),
            "--test_save_dir",
            str(save),
            "--save_png",
        ]
    )
    assert code == 0
    metrics = json.loads((save / "metrics.json").read_text())
    # recount from the saved predictions and the masks, by hand
    totals = np.zeros(4)
    for name in isic["test"]:
        pred = np.asarray(Image.open(save / f"{name}_pred.png")) > 0
        gt = np.asarray(Image.open(isic["out_dir"] / "masks" / f"{name}_segmentation.png")) > 0
        totals += [(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum(), (~pred & ~gt).sum()]
    tp, fp, fn, tn = totals
    assert metrics["per_class"][0]["tp"] == tp and metrics["per_class"][0]["tn"] == tn
    expected = {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "accuracy": (tp + tn) / totals.sum(),
    }
    for metric, value in expected.items():
        assert metrics[metric] == pytest.approx(value), metric
    assert [case["case"] for case in metrics["cases"]] == isic["test"]
    rows = (save / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,class,name,dice,iou,sensitivity,specificity,accuracy" and rows[-1].startswith("pooled,1,lesion,")


def test_val_cases_is_refused_for_image_data(tmp_path, capsys):
    assert train_script.main(["--dataset", "ISIC2018", "--val_cases", "2", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--val_cases is for volume data" in err and err.count("\n") == 1


def test_the_old_list_command_forwards_to_datasets_prepare_isic_lists(tmp_path, capsys):
    import datasets.isic

    generate_dataset(tmp_path / "a", **ISIC_SMALL)
    datasets.isic.main(["--root", str(tmp_path / "a"), "--out", str(tmp_path / "lists")])  # python -m datasets.isic
    assert (tmp_path / "lists" / "test.txt").read_text().split() == ["ISIC_0000005"]
    assert "7 train, 1 val, 1 test images" in capsys.readouterr().out
