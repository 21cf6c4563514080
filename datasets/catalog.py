"""The table of data sets the scripts know by ``--dataset``; no data-set name is hard-coded
anywhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What the scripts need to know about a data set.

    Attributes:
        num_classes: classes including background.
        class_names: names of classes 1..num_classes-1, in id order.
        list_dir: folder of ``train.txt`` / ``test_vol.txt``.
        root_path: default folder of the training slices (``--root_path``).
        test_path: default folder of the test volumes (``--test_path`` / ``--volume_path``).
        z_spacing: slice spacing written into saved NIfTI predictions (``--z_spacing``).
    """

    num_classes: int
    class_names: tuple[str, ...]
    list_dir: str
    root_path: str
    test_path: str
    z_spacing: int = 1


DATASETS: dict[str, DatasetInfo] = {
    "Synapse": DatasetInfo(
        num_classes=9,
        class_names=("aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach"),
        list_dir="./lists/lists_Synapse",
        root_path="./data/Synapse/train_npz",
        test_path="./data/Synapse/test_vol_h5",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The table entry of ``--dataset name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"--dataset {name!r} is not known; choose one of {', '.join(DATASETS)}") from None


def class_names(info: DatasetInfo, num_classes: int) -> list[str]:
    """Names of classes 1..num_classes-1; generic names where the table has none."""
    return [info.class_names[c - 1] if c - 1 < len(info.class_names) else f"class {c}" for c in range(1, num_classes)]
