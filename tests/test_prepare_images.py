"""Your own 2D images (python -m datasets.prepare.images): colour masks through a palette, class-id
masks, grey 16-bit TIFF and RGB PNG inputs, read back by the 2D reader with the right ids; bad
input is one line naming the file, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from datasets.catalog import IMAGES, dataset_info
from datasets.check import main as doctor
from datasets.common import DataError
from datasets.isic import ImageCases, ImagePairs, read_pair
from datasets.prepare.images import convert, main

RED, GREEN, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 0)
PALETTE = {"#000000": "background", "#ff0000": "liver", "[0, 255, 0]": "tumour"}
SIZE = (12, 10)  # (H, W)


def truth(number: int) -> np.ndarray:
    """Class ids (H, W) of image ``number``: a liver block, a tumour block in a number-dependent place."""
    ids = np.zeros(SIZE, np.int64)
    ids[2:8, 1:6] = 1
    ids[number % 4 : number % 4 + 3, 6:9] = 2
    return ids


def write_pairs(folder, count: int = 6, colour: bool = True) -> tuple:
    images, masks = folder / "img", folder / "lab"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        ids = truth(n)
        if n % 2:  # RGB PNG
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), "RGB").save(images / f"scan{n}.png")
        else:  # 16-bit grey TIFF
            Image.fromarray(rng.integers(0, 4000, SIZE).astype(np.uint16)).save(images / f"scan{n}.tif")
        if colour:
            rgb = np.array([BLACK, RED, GREEN], np.uint8)[ids]
            Image.fromarray(rgb, "RGB").save(masks / f"scan{n}_mask.png")
        else:
            Image.fromarray(ids.astype(np.uint8), "L").save(masks / f"scan{n}.png")
    return images, masks


def test_colour_masks_convert_and_read_back_with_their_class_ids(tmp_path, capsys):
    images, masks = write_pairs(tmp_path)
    (tmp_path / "palette.json").write_text(json.dumps(PALETTE))
    out = tmp_path / "mine"
    main(["--images", str(images), "--masks", str(masks), "--out", str(out), "--palette", str(tmp_path / "palette.json")])
    assert capsys.readouterr().out.strip() == (
        f"4 train, 1 val, 1 test images of 3 classes in {out}; use --dataset {out / 'dataset.json'}"
    )
    assert json.loads((out / "dataset.json").read_text()) == {"kind": "images", "class_names": ["liver", "tumour"], "channels": 3}
    info = dataset_info(str(out / "dataset.json"))
    assert (info.kind, info.num_classes, info.class_names, info.in_chans) == (IMAGES, 3, ("liver", "tumour"), 3)
    assert (info.root_path, info.list_dir, info.train_list, info.val_list, info.test_list) == (
        str(out),
        str(out / "lists"),
        "train.txt",
        "val.txt",
        "test.txt",
    )
    # 70 / 10 / 20 by position in sorted name order: 2 -> val, 5 -> test
    assert (out / "lists" / "val.txt").read_text().split() == ["scan1"]
    assert (out / "lists" / "test.txt").read_text().split() == ["scan4"]
    for n in range(6):
        rgb, label = read_pair(out, f"scan{n}", info.num_classes)
        np.testing.assert_array_equal(label, truth(n))
        assert rgb.shape == (*SIZE, 3)
    cases = ImageCases(out, out / "lists" / "test.txt", info.num_classes)
    np.testing.assert_array_equal(cases[0]["label"], truth(4))
    train = ImagePairs(out, out / "lists" / "train.txt", info.num_classes, SIZE, augment=False)
    item = train[0]
    assert item["case_name"] == "scan0" and item["image"].shape == (3, *SIZE)
    np.testing.assert_array_equal(item["label"].numpy(), truth(0))
    # grey 16-bit scaled to 8 bits per image, repeated to RGB: min -> -1, max -> 1 after normalisation
    assert float(item["image"].min()) == -1.0 and float(item["image"].max()) == 1.0
    assert torch_equal_channels(item["image"])
    assert doctor(["--root", str(out), "--dataset", str(out / "dataset.json")]) == 0
    assert "masks: class ids [0, 1, 2] present" in capsys.readouterr().out


def torch_equal_channels(image) -> bool:
    return bool((image[0] == image[1]).all() and (image[1] == image[2]).all())


def test_class_id_masks_and_a_binary_mask_keeps_the_isic_convention(tmp_path):
    images, masks = write_pairs(tmp_path, colour=False)
    result = convert(images, masks, tmp_path / "ids", classes=["liver", "tumour"])
    assert result["class_names"] == ["liver", "tumour"] and result["channels"] == 3
    np.testing.assert_array_equal(read_pair(tmp_path / "ids", "scan3", 3)[1], truth(3))
    for path in masks.iterdir():  # keep the tumour only: a 2-class data set
        ids = np.asarray(Image.open(path))
        Image.fromarray((ids == 2).astype(np.uint8), "L").save(path)
    convert(images, masks, tmp_path / "binary")
    stored = np.asarray(Image.open(tmp_path / "binary" / "masks" / "scan2_segmentation.png"))
    assert set(np.unique(stored)) == {0, 255}  # what the ISIC reader thresholds at 128
    assert dataset_info(str(tmp_path / "binary" / "dataset.json")).class_names == ("class 1",)
    np.testing.assert_array_equal(read_pair(tmp_path / "binary", "scan2", 2)[1], truth(2) == 2)


@pytest.mark.parametrize(
    "break_input, message",
    [
        (
            lambda img, lab: Image.new("RGB", (3, 3)).save(lab / "scan2_mask.png"),
            r"scan2_mask.png is 3x3 but its image scan2.tif is 10x12; they must be the same size",
        ),
        (
            lambda img, lab: Image.new("RGB", (10, 12), (1, 2, 3)).save(lab / "scan3_mask.png"),
            r"scan3_mask.png holds colour\(s\) #010203 that --palette does not map",
        ),
        (lambda img, lab: (img / "scan4.tif").write_bytes(b"not a tiff"), r"scan4.tif is not a readable image"),
        (lambda img, lab: (lab / "scan5_mask.png").unlink(), r"scan5.png has no mask in --masks"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, break_input, message):
    images, masks = write_pairs(tmp_path)
    (tmp_path / "palette.json").write_text(json.dumps(PALETTE))
    break_input(images, masks)
    with pytest.raises(DataError, match=message):
        convert(images, masks, tmp_path / "out", palette=tmp_path / "palette.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "lab", "palette.json"]


def test_an_id_beyond_the_named_classes_and_a_bad_palette(tmp_path, capsys):
    images, masks = write_pairs(tmp_path, colour=False)
    with pytest.raises(DataError, match=r"scan0.png holds class id 2, but --classes names ids 1..1"):
        convert(images, masks, tmp_path / "out", classes=["liver"])
    (tmp_path / "palette.json").write_text(json.dumps({"#00000": 0}))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--images",
                str(images),
                "--masks",
                str(masks),
                "--out",
                str(tmp_path / "out"),
                "--palette",
                str(tmp_path / "palette.json"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "colour '#00000' is neither #rrggbb" in err
    assert not (tmp_path / "out").exists()


def test_a_volume_dataset_json_still_reads_as_volumes(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": ["a"]}))
    assert dataset_info(str(tmp_path / "dataset.json")).kind == "volumes"
    (tmp_path / "dataset.json").write_text(json.dumps({"kind": "images", "class_names": ["a"], "channels": 1}))
    with pytest.raises(ValueError, match="'channels' of 2D images must be 3"):
        dataset_info(str(tmp_path / "dataset.json"))
