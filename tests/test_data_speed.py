"""bench.data_speed runs end to end on tiny slices (so it cannot rot); timings are not asserted."""

import pytest

from bench.data_speed import run


def test_data_speed_reads_every_slice_through_both_pipelines():
    rows = run(slices=3, size=48, img_size=32, augmentations=["daeformer", "none"], repeats=2, seed=0)
    assert [row["augment"] for row in rows] == ["daeformer", "none"]
    for row in rows:
        assert row["slices"] == 3
        assert row["published_s"] > 0 and row["ours_s"] > 0


def test_data_speed_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--slices must be >= 1, got 0"):
        run(slices=0, size=48, img_size=32, augmentations=["none"], repeats=1, seed=0)
    with pytest.raises(ValueError, match="--augment 'imgaug' is unknown"):
        run(slices=1, size=48, img_size=32, augmentations=["imgaug"], repeats=1, seed=0)
