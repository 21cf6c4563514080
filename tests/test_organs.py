"""A chosen set of BTCV organs (datasets.prepare.synapse --organs) and test.py --report_classes:
a 13-organ network scored on the published 8 gives what the 8-class scoring of its predictions gives."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from datasets.catalog import DATASETS, load_dataset_json
from datasets.common import DataError
from datasets.prepare.synapse import BTCV_ORGANS, BTCV_TO_SYNAPSE, main, parse_organs
from datasets.synthetic.btcv import write_raw_btcv
from tests.band_network import IntensityBands
from tests.conftest import load_test_script
from utils.errors import UserError
from utils.evaluation import ImageResult, VolumeResult
from utils.metrics import metrics_for_classes

PUBLISHED_NAMES = DATASETS["Synapse"].class_names
TEST_CASES = ("case0008", "case0022")


@pytest.fixture(scope="module")
def conversions(tmp_path_factory) -> dict:
    """Four raw cases (two standard test, two training) converted with all 13 organs and with the default 8."""
    root = tmp_path_factory.mktemp("btcv13")
    write_raw_btcv(root / "raw", [5, 6, 8, 22], seed=3, size=32, slices=(6, 8))
    main(["--raw", str(root / "raw"), "--out", str(root / "all"), "--organs", "all"])
    main(["--raw", str(root / "raw"), "--out", str(root / "published")])
    return {"raw": root / "raw", "all": root / "all", "published": root / "published", "root": root}


def test_all_organs_keep_the_btcv_ids_and_the_description_names_the_13_classes(conversions):
    info = load_dataset_json(conversions["all"] / "dataset.json")
    assert info.num_classes == 14 and info.class_names == tuple(BTCV_ORGANS.values())
    assert load_dataset_json(conversions["published"] / "dataset.json").class_names == PUBLISHED_NAMES
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(conversions["raw"] / "label0008.nii.gz")))
    assert set(np.unique(raw)) == set(range(14))  # the generator draws every BTCV organ
    with h5py.File(conversions["all"] / "test_vol_h5" / "case0008.npy.h5", "r") as file:
        np.testing.assert_array_equal(file["label"][...], raw)
    with h5py.File(conversions["published"] / "test_vol_h5" / "case0008.npy.h5", "r") as file:
        expected = np.vectorize(lambda i: BTCV_TO_SYNAPSE.get(i, 0))(raw)
        np.testing.assert_array_equal(file["label"][...], expected)


def test_organs_are_chosen_by_name_or_id_in_the_order_given():
    assert parse_organs("liver, 11,Spleen,right_adrenal_gland") == (6, 11, 1, 12)
    assert parse_organs("published") == tuple(sorted(BTCV_TO_SYNAPSE, key=BTCV_TO_SYNAPSE.get))
    with pytest.raises(DataError, match="'heart' is not a BTCV organ"):
        parse_organs("liver,heart")
    with pytest.raises(DataError, match="names 'liver' twice"):
        parse_organs("liver,6")


def test_a_13_organ_network_scored_on_the_published_8_equals_the_8_class_scoring(conversions, tmp_path):
    weights = tmp_path / "bands.pth"
    torch.save(IntensityBands(num_classes=14).state_dict(), weights)
    save_dir = tmp_path / "test"
    status = load_test_script().main(
        [
            *("--ckpt", str(weights), "--module", "tests.band_network.IntensityBands"),
            *("--dataset", str(conversions["all"] / "dataset.json"), "--volume_path", str(conversions["all"])),
            *("--img_size", "32", "--eval_workers", "0", "--test_save_dir", str(save_dir), "--is_savenii"),
            *("--report_classes", ",".join(PUBLISHED_NAMES)),
        ]
    )
    assert status == 0
    reported = json.loads((save_dir / "metrics.json").read_text())
    assert reported["classes"] == {"ids": [8, 4, 3, 2, 6, 11, 1, 7], "names": list(PUBLISHED_NAMES), "of_classes": 13}
    # The 8-class scoring of the same predictions: renumbered to Synapse's ids, against the
    # default conversion's labels.
    to_synapse = np.zeros(14, np.uint8)
    for btcv_id, synapse_id in BTCV_TO_SYNAPSE.items():
        to_synapse[btcv_id] = synapse_id
    scores = []
    for case in TEST_CASES:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(save_dir / f"{case}_pred.nii.gz"))).astype(np.int64)
        with h5py.File(conversions["published"] / "test_vol_h5" / f"{case}.npy.h5", "r") as file:
            label = file["label"][...].astype(np.uint8)
        scores.append(metrics_for_classes(to_synapse[prediction], label, 9))
    expected = VolumeResult(list(PUBLISHED_NAMES), list(TEST_CASES), np.array(scores), "published", "voxels")
    assert 0 < expected.mean_dice < 1  # the band network overlaps the organs partly
    assert reported["mean_dice"] == pytest.approx(expected.mean_dice, abs=1e-12)
    assert reported["mean_hd95"] == pytest.approx(expected.mean_hd95, abs=1e-12)
    for row, (dice, hd95) in zip(reported["per_class"], expected.per_class):
        assert (row["dice"], row["hd95"]) == pytest.approx((dice, hd95), abs=1e-12)


def test_a_class_the_network_lacks_is_refused_before_any_case_is_predicted(conversions, tmp_path, capsys):
    weights = tmp_path / "bands.pth"
    torch.save(IntensityBands(num_classes=14).state_dict(), weights)
    status = load_test_script().main(
        [
            *("--ckpt", str(weights), "--module", "tests.band_network.IntensityBands", "--img_size", "32"),
            *("--dataset", str(conversions["all"] / "dataset.json"), "--volume_path", str(conversions["all"])),
            *("--test_save_dir", str(tmp_path / "test"), "--report_classes", "liver,heart"),
        ]
    )
    assert status == 2
    assert "--report_classes: the network has no class 'heart'" in capsys.readouterr().err
    assert not (tmp_path / "test" / "metrics.json").exists()


def test_select_keeps_the_per_class_scores_and_averages_over_the_chosen_classes():
    scores = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    result = VolumeResult(["a", "b", "c"], ["x", "y"], scores, "published", "voxels")
    chosen = result.select(["c", 1])
    assert chosen.class_names == ["c", "a"] and chosen.ids == [3, 1]
    assert chosen.mean_dice == pytest.approx(np.mean(scores[:, [2, 0], 0]))
    with pytest.raises(UserError, match="no class 'd'"):
        result.select(["d"])


def test_an_image_result_selects_its_classes_the_same_way():
    # pixels of both images pooled: class a TP 2, FP 1, FN 1 -> Dice 4 / 6; class c TP 1, FN 3 -> Dice 2 / 5
    counts = np.array([[[1, 1, 0, 6], [0, 0, 0, 8], [1, 0, 1, 6]], [[1, 0, 1, 6], [5, 0, 0, 3], [0, 0, 2, 6]]])
    chosen = ImageResult(["a", "b", "c"], ["x", "y"], counts).select(["c", "a"])
    assert chosen.class_names == ["c", "a"] and chosen.ids == [3, 1] and chosen.of_classes == 3
    np.testing.assert_array_equal(chosen.counts, counts[:, [2, 0]])
    assert chosen.means["dice"] == pytest.approx((2 / 5 + 4 / 6) / 2)
