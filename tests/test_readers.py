"""datasets.readers: the reader for each kind of data, the old names as aliases, and workers
that leave stopping to the main process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import datasets.isic
import datasets.preprocess
import datasets.synapse
import utils.evaluation
from datasets.catalog import IMAGES, VOLUMES, DatasetInfo, dataset_info
from datasets.isic import ImageCases, ImagePairs
from datasets.readers import evaluation_cases, ignore_stop_signals, training_set
from datasets.synapse import H5Volumes, NpzSlices
from datasets.synthetic.isic import generate_dataset
from datasets.writing import write_training_slices, write_volume
from utils.evaluation import EvalSettings, VolumeEvaluator
from utils.metrics import metrics_for_classes

SYNAPSE = dataset_info("Synapse")
ISIC = dataset_info("ISIC2018")


def volume_data(folder: Path) -> tuple[Path, Path]:
    """Two slices of case0001 for training, case0002 and case0003 for evaluation."""
    image = np.linspace(0, 1, 2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    label = (image > 0.5).astype(np.float32)
    slices = write_training_slices(folder / "train_npz", "case0001", image, label)
    for case in ("case0003", "case0002"):
        write_volume(folder / "test_vol_h5", case, image, label, None)
    (folder / "train.txt").write_text("".join(f"{name}\n" for name in slices))
    (folder / "test.txt").write_text("case0003\ncase0002\n")
    return folder / "train.txt", folder / "test.txt"


def test_volume_kinds_get_the_npz_and_h5_readers(tmp_path):
    train_list, test_list = volume_data(tmp_path)
    train = training_set(SYNAPSE, tmp_path / "train_npz", train_list, 2, (4, 4), "none")
    assert type(train) is NpzSlices and len(train) == 2 and train.names == ["case0001_slice000", "case0001_slice001"]
    assert train.augment_name == "none" and tuple(train[1]["image"].shape) == (1, 4, 4)
    assert training_set(SYNAPSE, tmp_path / "train_npz", train_list, 2, (4, 4), "daeformer").augment_name == "daeformer"
    cases = evaluation_cases(SYNAPSE, tmp_path / "test_vol_h5", test_list, 2)
    assert type(cases) is H5Volumes and cases.names == ["case0003", "case0002"] and len(cases) == 2
    assert cases[1]["case_name"] == "case0002" and cases[1]["image"].shape == (2, 6, 5)


def test_image_kind_gets_the_image_readers_and_none_turns_augmentation_off(tmp_path):
    data = generate_dataset(tmp_path, seed=2, size=40, train_images=4, val_images=2, test_images=3)
    info = DatasetInfo(2, ("lesion",), str(data["list_dir"]), str(tmp_path), str(tmp_path), kind=IMAGES)
    plain = training_set(info, tmp_path, data["list_dir"] / "train.txt", 2, (32, 32), "none")
    assert type(plain) is ImagePairs and plain.augment is False and len(plain) == 4
    assert training_set(info, tmp_path, data["list_dir"] / "train.txt", 2, (32, 32), "daeformer").augment is True
    cases = evaluation_cases(info, tmp_path, data["list_dir"] / "test.txt", 2)
    assert type(cases) is ImageCases and cases.names == data["test"] and len(cases) == 3
    assert cases[0]["image"].shape == (30, 40, 3)  # at its own size


def test_an_unknown_kind_is_one_line_naming_it(tmp_path):
    info = DatasetInfo(2, ("x",), "l", "r", "t", kind="points")
    with pytest.raises(ValueError, match="kind 'points' has no reader; the kinds are volumes, images"):
        evaluation_cases(info, tmp_path, tmp_path / "t.txt", 2)
    assert VOLUMES == SYNAPSE.kind and IMAGES == ISIC.kind


def test_old_names_are_aliases_and_the_preprocessing_is_re_exported():
    assert datasets.synapse.SynapseSlices is NpzSlices and datasets.synapse.SynapseVolumes is H5Volumes
    assert datasets.isic.SkinImages is ImagePairs and datasets.isic.SkinCases is ImageCases
    for name in ("preprocess_slice", "preprocess_batch", "resize_label", "resize_labels"):
        assert getattr(datasets.synapse, name) is getattr(datasets.preprocess, name)
    assert datasets.isic.preprocess_rgb is datasets.preprocess.preprocess_rgb
    # the same numbers as before the move: (x - 0.5) / 0.5
    np.testing.assert_array_equal(datasets.preprocess.preprocess_slice(np.array([[0.0, 1.0]]), (1, 2)), [[-1.0, 1.0]])


class SignalsItself(Dataset):
    """Each item sends SIGTERM to the process reading it, as ``kill -- -PGID`` reaches a worker."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        return index


def test_loader_workers_survive_a_group_sigterm_with_ignore_stop_signals():
    loader = DataLoader(SignalsItself(), batch_size=2, num_workers=1, worker_init_fn=ignore_stop_signals)
    assert [batch.tolist() for batch in loader] == [[0, 1], [2, 3]]
    # Without it the worker dies of the signal, and the main process gets a RuntimeError.
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(DataLoader(SignalsItself(), batch_size=2, num_workers=1))


def metrics_after_a_sigterm(*args, **kwargs):
    """utils.metrics.metrics_for_classes, in a metric worker that a group SIGTERM has reached."""
    os.kill(os.getpid(), signal.SIGTERM)
    return metrics_for_classes(*args, **kwargs)


class Half(torch.nn.Module):
    """Class 1 where the input is above 0 (i.e. above 0.5 before normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


def test_metric_workers_survive_a_group_sigterm(monkeypatch):
    monkeypatch.setattr(utils.evaluation, "metrics_for_classes", metrics_after_a_sigterm)
    image = np.zeros((2, 8, 8), np.float32)
    image[:, 2:6, 2:6] = 1.0
    case = {"image": image, "label": (image > 0.5).astype(np.int64), "case_name": "c1", "spacing": None}
    settings = EvalSettings((8, 8), 1, torch.device("cpu"), workers=1)
    result = VolumeEvaluator(2, ["organ"], settings).evaluate(Half(), [case, {**case, "case_name": "c2"}])
    assert result.scores[:, 0, 0].tolist() == [1.0, 1.0]
