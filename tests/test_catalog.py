"""The --dataset table: entries consistent with themselves, Synapse unchanged, dataset.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.catalog import DATASETS, IMAGES, KINDS, dataset_info, load_dataset_json
from datasets.common import CT_WINDOW, normalise_volume


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_entry_names_each_foreground_class(name):
    info = DATASETS[name]
    assert len(info.class_names) == info.num_classes - 1
    assert info.kind in KINDS and info.list_dir.endswith(f"lists_{name}")


def test_the_entries_of_the_issue():
    synapse, acdc, isic = dataset_info("Synapse"), dataset_info("ACDC"), dataset_info("ISIC2018")
    # Synapse exactly as before: the published lists, test volumes as the periodic evaluation
    assert (synapse.num_classes, synapse.test_list, synapse.val_list, synapse.in_chans) == (9, "test_vol.txt", None, None)
    assert acdc.class_names == ("right ventricle", "myocardium", "left ventricle")
    assert (isic.kind, isic.in_chans, isic.num_classes, isic.val_list, isic.test_list) == (IMAGES, 3, 2, "val.txt", "test.txt")


def test_the_synapse_window_is_the_ct_window_and_scales_it_to_0_1():
    assert dataset_info("Synapse").intensity_clip == CT_WINDOW == (-125.0, 275.0)
    hu = np.array([[[-1000.0, -125.0], [75.0, 1500.0]]])
    np.testing.assert_array_equal(normalise_volume(hu, CT_WINDOW), [[[0.0, 0.0], [0.5, 1.0]]])
    mri = np.array([[[10.0, 20.0], [30.0, 50.0]]])
    np.testing.assert_allclose(normalise_volume(mri), [[[0.0, 0.25], [0.5, 1.0]]])
    np.testing.assert_array_equal(normalise_volume(np.full((1, 2, 2), 7.0)), np.zeros((1, 2, 2)))


def test_a_dataset_json_describes_the_folder_beside_it(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": ["liver", "tumour"], "intensity_clip": [-100, 200]}))
    info = dataset_info(str(tmp_path / "dataset.json"))
    assert info == load_dataset_json(tmp_path / "dataset.json")
    assert (info.num_classes, info.class_names, info.intensity_clip) == (3, ("liver", "tumour"), (-100.0, 200.0))
    assert (info.root_path, info.test_path, info.list_dir) == (
        str(tmp_path / "train_npz"),
        str(tmp_path / "test_vol_h5"),
        str(tmp_path / "lists"),
    )
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": ["a"], "intensity_clip": [5, 1]}))
    with pytest.raises(ValueError, match=r"'intensity_clip' must be null or \[low, high\]"):
        dataset_info(str(tmp_path / "dataset.json"))


@pytest.mark.parametrize(
    "clip", ["[NaN, 275]", "[-125, Infinity]", "[true, 275]", "[-125, 275, 300]", '["-125", 275]', "[275, 275]"]
)
def test_the_intensity_window_must_be_two_finite_numbers_low_below_high(tmp_path, clip):
    # Python's json reads NaN and Infinity, as a user's tool may have written them.
    (tmp_path / "dataset.json").write_text('{"class_names": ["liver"], "intensity_clip": ' + clip + "}")
    with pytest.raises(ValueError) as info:
        load_dataset_json(tmp_path / "dataset.json")
    message = str(info.value)
    assert "'intensity_clip' must be null or [low, high]: two finite numbers with low < high, got [" in message
    assert "\n" not in message and str(tmp_path / "dataset.json") in message
