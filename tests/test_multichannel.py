"""Several input channels per case (issue 21, item 3): nnU-Net's NAME_0000 / NAME_0001 images
converted by datasets.prepare.nifti into (C, H, W) slices and (D, C, H, W) volumes, read,
resized and augmented channel by channel with one geometric draw, trained by train.py and
evaluated by test.py with ``in_chans`` from the dataset.json."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import train as train_script
from datasets.augment import TransUNetAugmentation
from datasets.common import DataError
from datasets.daeformer_augment import TorchvisionPairAugmentation, daeformer_transforms
from datasets.prepare.nifti import convert, find_cases
from datasets.preprocess import preprocess_batch
from datasets.resize import zoom_images
from datasets.synapse import H5Volumes, NpzSlices, slices_to_volumes
from datasets.synthetic.acdc import make_case
from tests.conftest import TINY_RUN, TINY_SIZE, load_test_script
from tests.test_prepare_nifti import CLASSES, two_class_label
from utils.checkpoint import load_checkpoint
from utils.inference import predict_volume

NUM_CASES = 4
CHANNELS = 2


def _write(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = (1.0, 1.0, 8.0)) -> None:
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing(spacing)
    sitk.WriteImage(volume, str(path))


def _sequences(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two intensity transforms of the phantom, like two MRI sequences of one anatomy: a linear
    one and an inverted, squared one in other units."""
    return (image * 600 - 200).astype(np.float32), (2000 * (1 - image) ** 2).astype(np.float32)


@pytest.fixture(scope="module")
def two_channel_folder(tmp_path_factory) -> dict:
    """4 cases imagesTr/heartK_0000.nii.gz + heartK_0001.nii.gz, labelsTr/heartK.nii.gz."""
    root = tmp_path_factory.mktemp("two_channels")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    raw = {}
    for k in range(NUM_CASES):
        image, label = make_case(np.random.default_rng(k), TINY_SIZE, 4)
        first, second = _sequences(image)
        _write(first, root / "imagesTr" / f"heart{k}_0000.nii.gz")
        _write(second, root / "imagesTr" / f"heart{k}_0001.nii.gz")
        _write(two_class_label(label), root / "labelsTr" / f"heart{k}.nii.gz")
        raw[f"heart{k}"] = (first, second, two_class_label(label))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return {"root": root, "raw": raw}


def _scaled(volume: np.ndarray) -> np.ndarray:
    values = volume.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_two_channels_are_converted_trained_and_evaluated(two_channel_folder, tmp_path):
    root = two_channel_folder["root"]
    out = tmp_path / "data"
    info = convert(root / "imagesTr", root / "labelsTr", root / "classes.json", out, 0.25)
    description = json.loads((out / "dataset.json").read_text())
    assert description == {"class_names": ["cavity", "wall"], "intensity_clip": None, "channels": 2}
    assert info.in_chans == CHANNELS
    test_cases = (out / "lists" / "test_vol.txt").read_text().split()
    assert test_cases == ["heart2"]
    first, second, label = two_channel_folder["raw"]["heart2"]
    with h5py.File(out / "test_vol_h5" / "heart2.npy.h5") as file:
        image = file["image"][()]
        assert image.shape == (4, CHANNELS, TINY_SIZE, TINY_SIZE)
        # each channel min-max scaled by its own range
        np.testing.assert_allclose(image[:, 0], _scaled(first), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(image[:, 1], _scaled(second), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(file["label"][()], label)
    with np.load(out / "train_npz" / "heart0_slice000.npz") as slice_file:
        assert slice_file["image"].shape == (CHANNELS, TINY_SIZE, TINY_SIZE)
        assert slice_file["label"].shape == (TINY_SIZE, TINY_SIZE)

    run = tmp_path / "run"
    args = ["--dataset", str(out / "dataset.json"), "--output_dir", str(run), *TINY_RUN, "--max_epochs", "1"]
    assert train_script.main(args) == 0
    log = (run / "log.txt").read_text()
    assert "--in_chans 2 (from --dataset" in log
    weights = load_checkpoint(run / "last.pth")["model"]
    # the first convolution takes the two channels (every later one takes 4 or more)
    assert sum(1 for w in weights.values() if w.ndim == 4 and w.shape[1] == CHANNELS) == 1

    assert load_test_script().main(["--output_dir", str(run), "--workers", "0"]) == 0
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert [case["case"] for case in metrics["cases"]] == ["heart2"]
    assert [row["name"] for row in metrics["per_class"]] == ["cavity", "wall"]
    assert all(0.0 <= row["dice"] <= 1.0 for row in metrics["per_class"])


def test_channels_on_different_grids_are_a_one_line_error(two_channel_folder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    first, second, label = two_channel_folder["raw"]["heart0"]
    for k in range(2):
        _write(first, images / f"c{k}_0000.nii.gz")
        _write(second, images / f"c{k}_0001.nii.gz", spacing=(1.0, 1.0, 8.0) if k == 0 else (1.0, 1.0, 5.0))
    labels = tmp_path / "labels"
    labels.mkdir()
    for k in range(2):
        _write(label, labels / f"c{k}.nii.gz")
    with pytest.raises(DataError) as error:
        convert(images, labels, two_channel_folder["root"] / "classes.json", tmp_path / "out", 0.5)
    message = str(error.value)
    assert "c1_0000.nii.gz and" in message and "c1_0001.nii.gz differ in spacing" in message
    assert "resample them onto the first" in message and "\n" not in message


def test_cases_group_their_channels_and_refuse_gaps_and_unequal_counts(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a_0000", "a_0001", "b_0000", "b_0001", "patient_0001"):
        (images / f"{name}.nii.gz").touch()
    for name in ("a", "b", "patient_0001"):
        (labels / f"{name}.nii.gz").touch()
    with pytest.raises(DataError, match="case a has 2 channels but patient_0001 has 1; every case needs the same channels"):
        find_cases(images, labels)
    (images / "patient_0001.nii.gz").unlink()
    (labels / "patient_0001.nii.gz").unlink()
    cases = find_cases(images, labels)
    assert [(name, [p.name for p in paths]) for name, paths, _ in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]
    (images / "b_0001.nii.gz").rename(images / "b_0002.nii.gz")
    with pytest.raises(DataError, match="case b has channels \\[0, 2\\]; they must be b_0000 .. b_0001"):
        find_cases(images, labels)


def test_resize_and_preprocessing_treat_each_channel_as_its_own_slice():
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(3, CHANNELS, 20, 26, generator=generator, dtype=torch.float64)
    resized = zoom_images(batch, (32, 32))
    assert resized.shape == (3, CHANNELS, 32, 32)
    for c in range(CHANNELS):
        assert torch.equal(resized[:, c], zoom_images(batch[:, c], (32, 32)))
    network_input = preprocess_batch(batch, (32, 32))
    assert network_input.shape == (3, CHANNELS, 32, 32)
    assert torch.equal(network_input[:, 1:2], preprocess_batch(batch[:, 1], (32, 32)))


def _stripes(size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric image and its label, so that every flip, turn and warp changes them."""
    y, x = np.mgrid[:size, :size]
    image = ((x + 2 * y) % 7 / 6.0).astype(np.float32) * (x > 5)
    label = ((x > 8) & (y < 15)).astype(np.int64)
    return image, label


@pytest.mark.parametrize("recipe", ["transunet", "daeformer_geometric"])
def test_augmentation_moves_every_channel_with_one_draw(recipe):
    image, label = _stripes()
    if recipe == "transunet":
        augment = TransUNetAugmentation()
    else:
        # The recipe's geometric operations only (noise is drawn per channel, on purpose),
        # all of them at once, in order.
        from torchvision.transforms import v2

        geometric = [t for t in daeformer_transforms() if not isinstance(t, (v2.GaussianNoise, v2.GaussianBlur))]
        geometric = [t for t in geometric if type(t).__name__ != "RandomLinearContrast"]
        assert len(geometric) == 7
        augment = TorchvisionPairAugmentation(v2.Compose(geometric))
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        alone, alone_label = augment(image, label)
        torch.manual_seed(seed)
        both, both_label = augment(np.stack([image, image]), label)
        assert both.shape == (2, *image.shape) and both_label.shape == label.shape
        # the channels stay identical, and each is what the one-channel slice became
        np.testing.assert_array_equal(both[0], both[1])
        np.testing.assert_array_equal(both[0], alone)
        np.testing.assert_array_equal(both_label, alone_label)
        changed += int(not np.array_equal(alone, image))
    assert changed >= 4  # the draws did move the slice


def _two_channel_files(folder: Path) -> tuple[Path, Path]:
    """Two (2, 20, 20) slices of one case, channel 1 = 1 - channel 0, and a (3, 2, 20, 20) volume."""
    train, test = folder / "train", folder / "test"
    train.mkdir()
    test.mkdir()
    rng = np.random.default_rng(3)
    names = []
    for index in range(2):
        grey = rng.random((20, 20)).astype(np.float32)
        np.savez(train / f"case1_slice00{index}.npz", image=np.stack([grey, 1 - grey]), label=(grey > 0.5).astype(np.float32))
        names.append(f"case1_slice00{index}")
    (folder / "train.txt").write_text("\n".join(names) + "\n")
    volume = rng.random((3, 2, 20, 20)).astype(np.float32)
    with h5py.File(test / "case9.npy.h5", "w") as file:
        file["image"] = volume
        file["label"] = (volume[:, 0] > 0.5).astype(np.float32)
    (folder / "test_vol.txt").write_text("case9\n")
    return train, test


def test_readers_keep_the_channel_axis(tmp_path):
    train, test = _two_channel_files(tmp_path)
    slices = NpzSlices(train, tmp_path / "train.txt", num_classes=2, img_size=(32, 32), augment=None)
    item = slices[0]
    assert item["image"].shape == (2, 32, 32) and item["label"].shape == (32, 32)
    # channel 1 stored as 1 - channel 0: the zoom is linear and the normalisation maps
    # x -> 2x - 1, so the network sees -(channel 0) up to float32 rounding
    np.testing.assert_allclose(item["image"][1].numpy(), -item["image"][0].numpy(), atol=1e-5)
    first = NpzSlices(train, tmp_path / "train.txt", num_classes=2, img_size=(32, 32), augment=None, augment_first=True)
    np.testing.assert_allclose(first[0]["image"].numpy(), item["image"].numpy(), atol=1e-5)
    (volume,) = slices_to_volumes(train, ["case1_slice000", "case1_slice001"], ["case1"], 2)
    assert volume["image"].shape == (2, 2, 20, 20) and volume["label"].shape == (2, 20, 20)
    case = H5Volumes(test, tmp_path / "test_vol.txt", num_classes=2)[0]
    assert case["image"].shape == (3, 2, 20, 20) and case["label"].shape == (3, 20, 20)


class _SecondChannel(torch.nn.Module):
    """Logits (x, -x) of one input channel: class 1 where it is below the middle grey."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x[:, self.channel]
        return torch.stack([grey, -grey], dim=1)


def test_predict_volume_feeds_every_channel(tmp_path):
    rng = np.random.default_rng(5)
    volume = rng.random((5, 2, 20, 28)).astype(np.float32)
    prediction = predict_volume(_SecondChannel(1), volume, (32, 32), batch_size=2)
    assert prediction.shape == (5, 20, 28)
    # the same as predicting the second channel alone: it reached the network untouched
    alone = predict_volume(_SecondChannel(0), volume[:, 1], (32, 32), batch_size=2)
    np.testing.assert_array_equal(prediction, alone)
    assert 0.3 < prediction.mean() < 0.7


def test_new_scans_of_several_channels_are_segmented_as_their_converted_volumes(two_channel_folder, tmp_path):
    root = two_channel_folder["root"]
    out, run = tmp_path / "data", tmp_path / "run"
    convert(root / "imagesTr", root / "labelsTr", root / "classes.json", out, 0.25)
    args = ["--dataset", str(out / "dataset.json"), "--output_dir", str(run), *TINY_RUN, "--max_epochs", "1"]
    assert train_script.main(args) == 0
    test_script = load_test_script()
    # the converted test volume heart2, predicted by the evaluation and saved as NIfTI ...
    assert (
        test_script.main(["--output_dir", str(run), "--workers", "0", "--is_savenii", "--test_save_dir", str(tmp_path / "eval")])
        == 0
    )
    evaluated = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "eval" / "heart2_pred.nii.gz")))
    # ... and the raw scans, NAME_0000 + NAME_0001 per case, segmented as new scans
    assert (
        test_script.main(
            ["--output_dir", str(run), "--test_path", str(root / "imagesTr"), "--test_save_dir", str(tmp_path / "new")]
        )
        == 0
    )
    written = sorted(path.name for path in (tmp_path / "new").glob("*_pred.nii.gz"))
    assert written == [f"heart{k}_pred.nii.gz" for k in range(NUM_CASES)]
    segmented = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "new" / "heart2_pred.nii.gz")))
    assert segmented.shape == evaluated.shape == (4, TINY_SIZE, TINY_SIZE)
    np.testing.assert_array_equal(segmented, evaluated)


def test_a_scan_missing_a_channel_is_a_one_line_error(two_channel_folder, tmp_path):
    from datasets.catalog import DatasetInfo
    from utils.errors import UserError
    from utils.scans import channel_files, scan_inputs

    only_first = tmp_path / "scan_0000.nii.gz"
    only_first.write_bytes(b"")
    with pytest.raises(UserError, match=r"scan_0001.nii.gz does not exist: the network takes 2 channels"):
        channel_files(only_first, 2)
    with pytest.raises(UserError, match="name a scan's channels NAME_0000.nii.gz"):
        channel_files(tmp_path / "scan.nii.gz", 2)
    files = [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz", tmp_path / "b_0000.nii.gz", tmp_path / "b_0001.nii.gz"]
    assert scan_inputs(files, "volumes", 2) == [files[0], files[2]]
    assert scan_inputs(files, "volumes", 1) == files
    # the channels the readers give: in_chans, else one grey slice
    assert DatasetInfo(2, ("x",), "l", "r", "t", in_chans=2).channels == 2
    assert DatasetInfo(2, ("x",), "l", "r", "t").channels == 1
