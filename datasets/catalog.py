"""The table of data sets the scripts know by ``--dataset``; no data-set name is hard-coded
anywhere else.

``--dataset`` is a name of the table (``Synapse``, ``ACDC``, ``ISIC2018``) or the path of a
``dataset.json`` that ``python -m datasets.prepare.nifti`` (volumes) or ``python -m
datasets.prepare.images`` (2D images, ``"kind": "images"``) writes next to a user's converted
data; its entry is built from that file, with the data folders beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from datasets.common import CT_WINDOW
from datasets.lists import LIST_DIR, TEST_DIR, TRAIN_DIR

VOLUMES = "volumes"  # 2D training slices (.npz), 3D test volumes (.npy.h5); Dice and HD95 per class
IMAGES = "images"  # 2D images (.jpg) with masks (_segmentation.png); pooled pixel metrics
KINDS = (VOLUMES, IMAGES)
# The 2D image reader gives the network RGB (a grey image repeated), as ISIC's entry says.
IMAGE_CHANNELS = 3
DATASET_JSON = "dataset.json"
JSON_SUFFIX = ".json"


@dataclass(frozen=True)
class DatasetInfo:
    """What the scripts need to know about a data set.

    Attributes:
        num_classes: classes including background.
        class_names: names of classes 1..num_classes-1, in id order.
        list_dir: folder of the list files.
        root_path: default folder of the training data (``--root_path``).
        test_path: default folder of the test data (``--test_path`` / ``--volume_path``).
        kind: ``VOLUMES`` (Synapse format) or ``IMAGES`` (2D RGB images with masks).
        in_chans: input channels given to the network; None leaves the network's default (a
            1-channel image is repeated to what the network takes).
        train_list, test_list: file names of the training and test lists in ``list_dir``.
        val_list: list of validation cases or images for train.py's periodic evaluation and
            best.pth; None evaluates on the test list, as the published Synapse code does.
        intensity_clip: (low, high) window applied before the per-volume min-max scaling to
            [0, 1] of NIfTI scans; None scales the raw range (MRI).
    """

    num_classes: int
    class_names: tuple[str, ...]
    list_dir: str
    root_path: str
    test_path: str
    kind: str = VOLUMES
    in_chans: int | None = None
    train_list: str = "train.txt"
    test_list: str = "test_vol.txt"
    val_list: str | None = None
    intensity_clip: tuple[float, float] | None = None

    @property
    def channels(self) -> int:
        """Channels of the slices the readers give the network: ``in_chans``, else one grey slice."""
        return self.in_chans or 1


DATASETS: dict[str, DatasetInfo] = {
    "Synapse": DatasetInfo(
        num_classes=9,
        class_names=("aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach"),
        list_dir="./lists/lists_Synapse",
        root_path="./data/Synapse/train_npz",
        test_path="./data/Synapse/test_vol_h5",
        intensity_clip=CT_WINDOW,
    ),
    # Cardiac cine MRI (ACDC 2017), converted by datasets.prepare.acdc: ED and ES frames,
    # 70 / 10 / 20 training / validation / test patients.
    "ACDC": DatasetInfo(
        num_classes=4,
        class_names=("right ventricle", "myocardium", "left ventricle"),
        list_dir="./lists/lists_ACDC",
        root_path="./data/ACDC/train_npz",
        test_path="./data/ACDC/test_vol_h5",
        val_list="val_vol.txt",
    ),
    # Dermoscopy (ISIC 2018 task 1): DATA/images/NAME.jpg, DATA/masks/NAME_segmentation.png.
    "ISIC2018": DatasetInfo(
        num_classes=2,
        class_names=("lesion",),
        list_dir="./lists/lists_ISIC2018",
        root_path="./data/ISIC2018",
        test_path="./data/ISIC2018",
        kind=IMAGES,
        in_chans=IMAGE_CHANNELS,
        test_list="test.txt",
        val_list="val.txt",
    ),
}


def _json_error(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"--dataset {path}: {problem}; write it with python -m datasets.prepare.nifti or "
        'datasets.prepare.images (it holds e.g. {"class_names": ["liver", "tumour"]})'
    )


def _is_window(clip: object) -> bool:
    """Two finite numbers (not booleans, which JSON's true would be), low < high."""
    if not isinstance(clip, list) or len(clip) != 2:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in clip):
        return False
    return clip[0] < clip[1]


def load_dataset_json(path: str | Path) -> DatasetInfo:
    """The entry of a user's data set from its ``dataset.json``.

        The file holds ``class_names`` (names of classes 1..K, background excluded) and optionally
        ``kind``: ``"volumes"`` (the default) or ``"images"``. Volumes may give ``intensity_clip``
        ([low, high] or null); their data lie beside the file in ``train_npz/``, ``test_vol_h5/`` and
        ``lists/``, and ``channels`` (C > 1 images per case, stored (C, H, W) / (D, C, H, W); it sets
    ``in_chans``). Images may give ``channels`` (3, what the reader gives); their data lie beside it
        in ``images/``, ``masks/`` and ``lists/`` (train.txt, val.txt, test.txt).

        Raises:
            ValueError: the file is missing, not JSON, or its fields are malformed (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise _json_error(path, "the file does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _json_error(path, f"not valid JSON ({error})") from None
    names = content.get("class_names") if isinstance(content, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _json_error(path, "'class_names' must be a non-empty list of names of classes 1..K")
    clip = content.get("intensity_clip")
    if clip is not None and not _is_window(clip):
        # NaN, an infinity or true slipped through before, and every new scan became an empty mask.
        raise _json_error(path, f"'intensity_clip' must be null or [low, high]: two finite numbers with low < high, got {clip!r}")
    folder = path.parent
    kind = content.get("kind", VOLUMES)
    if kind not in KINDS:
        raise _json_error(path, f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == IMAGES:
        channels = content.get("channels", IMAGE_CHANNELS)
        if channels != IMAGE_CHANNELS:
            raise _json_error(
                path,
                f"'channels' of 2D images must be {IMAGE_CHANNELS} (the reader gives RGB, a grey "
                f"image repeated), got {channels!r}",
            )
        isic = DATASETS["ISIC2018"]
        return DatasetInfo(
            num_classes=len(names) + 1,
            class_names=tuple(names),
            list_dir=str(folder / LIST_DIR),
            root_path=str(folder),
            test_path=str(folder),
            kind=IMAGES,
            in_chans=IMAGE_CHANNELS,
            train_list=isic.train_list,
            test_list=isic.test_list,
            val_list=isic.val_list,
        )
    channels = content.get("channels")
    valid = isinstance(channels, int) and not isinstance(channels, bool) and channels >= 1
    if channels is not None and not valid:
        raise _json_error(path, f"'channels' of volumes must be a whole number >= 1 (the images per case), got {channels!r}")
    return DatasetInfo(
        num_classes=len(names) + 1,
        class_names=tuple(names),
        list_dir=str(folder / LIST_DIR),
        root_path=str(folder / TRAIN_DIR),
        test_path=str(folder / TEST_DIR),
        # Absent for one channel: the network keeps its default, as before channels existed.
        in_chans=channels,
        intensity_clip=None if clip is None else (float(clip[0]), float(clip[1])),
    )


def dataset_info(name: str) -> DatasetInfo:
    """The table entry of ``--dataset name``, or the entry a ``dataset.json`` path describes.

    Raises:
        ValueError: an unknown name or a bad ``dataset.json`` (one line).
    """
    if name.endswith(JSON_SUFFIX):
        return load_dataset_json(name)
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"--dataset {name!r} is not known; choose one of {', '.join(DATASETS)} or give the path of a {DATASET_JSON}"
        ) from None


def class_names(info: DatasetInfo, num_classes: int) -> list[str]:
    """Names of classes 1..num_classes-1; generic names where the table has none."""
    return [info.class_names[c - 1] if c - 1 < len(info.class_names) else f"class {c}" for c in range(1, num_classes)]
