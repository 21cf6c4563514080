"""HDF5 volumes are read and written without file locking: NFS / Lustre mounts without lock
support otherwise fail with an error that looks like a corrupt file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datasets.synapse import H5Volumes
from datasets.synthetic.synapse import generate_dataset
from datasets.writing import write_volume


@pytest.fixture
def opened(monkeypatch) -> list[dict]:
    """The keyword arguments of every h5py.File opened while the test runs."""
    calls: list[dict] = []
    real = h5py.File

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)  # the keyword alone must do it
    return calls


def test_volumes_are_written_and_read_without_locking(opened, tmp_path):
    image = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    label = (image > 0.5).astype(np.float32)
    write_volume(tmp_path, "case0001", image, label, (2.5, 0.8, 0.8))
    (tmp_path / "test_vol.txt").write_text("case0001\n")
    case = H5Volumes(tmp_path, tmp_path / "test_vol.txt", 2)[0]
    np.testing.assert_array_equal(case["image"], image)
    np.testing.assert_array_equal(case["label"], label.astype(np.int64))
    assert case["spacing"] == pytest.approx((2.5, 0.8, 0.8))
    assert len(opened) >= 2 and all(call.get("locking") is False for call in opened)


def test_the_phantom_writes_without_locking(opened, tmp_path):
    generate_dataset(tmp_path, size=32, train_cases=1, test_cases=1, min_slices=2, max_slices=2)
    assert len(opened) == 1 and opened[0].get("locking") is False
