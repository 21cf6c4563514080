"""utils.metrics against medpy (the published reference), hand-computed values and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric.binary import dc as medpy_dc
from medpy.metric.binary import hd95 as medpy_hd95
from scipy import ndimage

from utils.metrics import (
    CONVENTIONS,
    LOCAL_SEARCH_RADIUS,
    calculate_metric_percase,
    dice,
    hd95,
    metrics_for_classes,
)

RTOL = 1e-9
ANISOTROPIC_3D = (2.5, 0.7, 0.7)  # a typical CT: thick slices, fine in-plane pixels
ANISOTROPIC_2D = (0.7, 1.9)


def random_blobs(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Smooth random blobs (often several components) covering about ``fill`` of the array."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=2.0)
    return noise > np.quantile(noise, 1.0 - fill)


def assert_matches_medpy(pred: np.ndarray, gt: np.ndarray, spacing=None) -> None:
    assert dice(pred, gt) == pytest.approx(medpy_dc(pred, gt), rel=RTOL, abs=0)
    expected = medpy_hd95(pred, gt, voxelspacing=spacing)
    assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=RTOL, abs=0)


# --- equality with medpy -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 52), None), ((40, 52), ANISOTROPIC_2D), ((18, 22, 26), None), ((18, 22, 26), ANISOTROPIC_3D)],
)
def test_random_blobs_match_medpy(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    pred = random_blobs(rng, shape, fill=rng.uniform(0.05, 0.4))
    gt = random_blobs(rng, shape, fill=rng.uniform(0.05, 0.4))
    assert_matches_medpy(pred, gt, spacing)


@pytest.mark.parametrize("shift", [1, 3, 5, 8, 12])
@pytest.mark.parametrize("spacing", [None, ANISOTROPIC_3D])
def test_shifted_perturbed_copy_matches_medpy(shift, spacing):
    # A prediction that is a shifted, slightly eroded copy: distances from 0 to beyond the
    # local search, so both the neighbourhood search and the k-d tree settle voxels.
    rng = np.random.default_rng(shift)
    gt = random_blobs(rng, (16, 40, 40), fill=0.2)
    pred = ndimage.binary_erosion(np.roll(gt, (shift // 3, shift, -shift), axis=(0, 1, 2)))
    pred[1, 2, 3] = True  # a false-positive speck far from most of gt
    assert_matches_medpy(pred, gt, spacing)


def test_far_apart_objects_match_medpy():
    # Every distance exceeds the local search radius: all voxels go to the k-d tree.
    pred = np.zeros((10, 30, 60), dtype=bool)
    gt = np.zeros_like(pred)
    pred[2:8, 5:20, 2:15] = True
    gt[3:9, 10:25, 40:58] = True
    assert medpy_hd95(pred, gt) > 4 * LOCAL_SEARCH_RADIUS
    assert_matches_medpy(pred, gt)
    assert_matches_medpy(pred, gt, ANISOTROPIC_3D)


@pytest.mark.parametrize("spacing", [None, ANISOTROPIC_3D])
def test_objects_touching_every_edge_and_corner_match_medpy(spacing):
    # Outside the array counts as background, so voxels on the array edge are border voxels;
    # cropping to the objects' box must not lose that.
    rng = np.random.default_rng(7)
    shape = (9, 12, 14)
    pred = random_blobs(rng, shape, fill=0.3)
    gt = random_blobs(rng, shape, fill=0.3)
    for corner in np.ndindex(2, 2, 2):
        index = tuple(-1 if c else 0 for c in corner)
        pred[index] = True
    gt[0], gt[:, -1], gt[:, :, 0] = True, True, True  # three whole faces
    assert_matches_medpy(pred, gt, spacing)
    full = np.ones(shape, dtype=bool)  # its border is the whole outer shell of the array
    assert_matches_medpy(full, gt, spacing)
    assert_matches_medpy(pred, full, spacing)


@pytest.mark.parametrize("spacing", [None, ANISOTROPIC_3D])
def test_single_voxel_masks_match_medpy(spacing):
    shape = (7, 8, 9)
    corner, inner = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    corner[-1, 0, -1] = True
    inner[3, 4, 2] = True
    assert_matches_medpy(corner, inner, spacing)
    assert_matches_medpy(corner, random_blobs(np.random.default_rng(3), shape, 0.2), spacing)


def test_non_boolean_masks_and_1d_match_medpy():
    rng = np.random.default_rng(11)
    pred = random_blobs(rng, (30, 30), 0.2) * rng.integers(1, 5, size=(30, 30))
    gt = random_blobs(rng, (30, 30), 0.2).astype(np.float32) * 0.5
    assert_matches_medpy(pred, gt)
    assert_matches_medpy(np.array([0, 1, 1, 0, 0, 0, 1]), np.array([1, 1, 0, 0, 0, 0, 0]), (0.5,))


@pytest.mark.parametrize("shape", [(5, 6, 5, 7), (4, 5, 4, 5, 4)])
def test_four_and_five_dimensional_masks_match_medpy(shape):
    rng = np.random.default_rng(len(shape))
    pred, gt = random_blobs(rng, shape, 0.3), random_blobs(rng, shape, 0.3)
    assert_matches_medpy(pred, gt)
    assert_matches_medpy(pred, gt, tuple(rng.uniform(0.5, 3.0, size=len(shape))))


def test_identical_masks():
    gt = random_blobs(np.random.default_rng(5), (12, 20, 20), 0.3)
    assert dice(gt, gt) == 1.0
    assert hd95(gt, gt) == 0.0
    assert hd95(gt, gt, ANISOTROPIC_3D) == 0.0


def test_dice_of_empty_masks():
    # medpy's 0 / 0 gives nan under numpy 2 (with a warning); dice says nan without one.
    empty, one = np.zeros((4, 4)), np.eye(4)
    assert math.isnan(dice(empty, empty))
    assert dice(one, empty) == dice(empty, one) == medpy_dc(one, empty) == 0.0


# --- hand-computed cases -------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, spacing, expected",
    [
        ((3, 4, 0), None, 5.0),
        ((0, 0, LOCAL_SEARCH_RADIUS), None, float(LOCAL_SEARCH_RADIUS)),
        ((0, 0, LOCAL_SEARCH_RADIUS + 1), None, float(LOCAL_SEARCH_RADIUS + 1)),
        ((2, 2, 1), None, 3.0),
        # (1*2.5)^2 + (2*0.7)^2 + (2*0.7)^2 = 6.25 + 1.96 + 1.96
        ((1, 2, 2), ANISOTROPIC_3D, math.sqrt(10.17)),
        ((0, 9, 0), ANISOTROPIC_3D, 6.3),
    ],
)
def test_two_single_voxels_at_known_distance(offset, spacing, expected):
    # Each single voxel is its own border; both directions give the same distance d, so the
    # pooled set is {d, d} and every percentile of it is d.
    pred, gt = np.zeros((4, 12, 12), dtype=bool), np.zeros((4, 12, 12), dtype=bool)
    pred[0, 0, 0] = True
    gt[offset] = True
    assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=RTOL)
    assert dice(pred, gt) == 0.0


def test_voxel_pair_against_one_voxel_interpolates_the_percentile():
    # pred = voxels (0, 0) and (0, 3); gt = voxel (0, 0). Distances pred -> gt: 0 and 3;
    # gt -> pred: 0. Pooled sorted {0, 0, 3}: the 95th percentile sits at position
    # 0.95 * 2 = 1.9, i.e. 0 + 0.9 * (3 - 0) = 2.7. With spacing (1, 2.5) the 3 becomes 7.5
    # and the percentile 0.9 * 7.5 = 6.75. Dice = 2 * 1 / (2 + 1).
    pred, gt = np.zeros((2, 6), dtype=bool), np.zeros((2, 6), dtype=bool)
    pred[0, 0] = pred[0, 3] = True
    gt[0, 0] = True
    assert hd95(pred, gt) == pytest.approx(2.7, rel=RTOL)
    assert hd95(pred, gt, (1.0, 2.5)) == pytest.approx(6.75, rel=RTOL)
    assert dice(pred, gt) == pytest.approx(2.0 / 3.0, rel=RTOL)


def test_square_against_square_shifted_by_one_column():
    # A = rows 2-5 x cols 2-5, B = the same square one column to the right. Each border is the
    # 12-voxel ring. A -> B: the 4 voxels of A's left column and the 2 middle voxels of its right
    # column are 1 away, the 6 remaining voxels of A's top and bottom rows lie on B's ring (0);
    # B -> A likewise. Pooled: 12 zeros and 12 ones; position 0.95 * 23 = 21.85 is among the
    # ones, so HD95 = 1. Dice = 2 * 12 / (16 + 16) = 0.75 (the overlap is 4 rows x 3 cols).
    a, b = np.zeros((8, 9), dtype=bool), np.zeros((8, 9), dtype=bool)
    a[2:6, 2:6] = True
    b[2:6, 3:7] = True
    assert hd95(a, b) == 1.0
    assert dice(a, b) == 0.75


def test_cube_against_its_centre_voxel():
    # A 3x3x3 cube's border is the 26 voxels around its centre. Centre -> cube border: 1.
    # Cube border -> centre: 6 face centres at 1, 12 edge voxels at sqrt 2, 8 corners at sqrt 3.
    # Pooled 27 values sorted: 7 ones, 12 sqrt 2, 8 sqrt 3 (indices 19-26); position
    # 0.95 * 26 = 24.7 lies among the sqrt 3. Dice = 2 * 1 / (1 + 27) = 1 / 14.
    cube, centre = np.zeros((5, 5, 5), dtype=bool), np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    centre[2, 2, 2] = True
    assert hd95(centre, cube) == pytest.approx(math.sqrt(3.0), rel=RTOL)
    assert dice(centre, cube) == pytest.approx(1.0 / 14.0, rel=RTOL)


# --- empty-mask conventions ----------------------------------------------------------------

FILLED = np.pad(np.ones((2, 2, 2), dtype=bool), 1)
EMPTY = np.zeros_like(FILLED)


@pytest.mark.parametrize(
    "pred, gt, published, nan_convention",
    [
        (FILLED, EMPTY, (1.0, 0.0), (0.0, math.nan)),  # false-positive organ
        (EMPTY, FILLED, (0.0, 0.0), (0.0, math.nan)),  # missed organ
        (EMPTY, EMPTY, (0.0, 0.0), (math.nan, math.nan)),  # absent and correctly not predicted
    ],
)
def test_empty_mask_conventions(pred, gt, published, nan_convention):
    assert calculate_metric_percase(pred, gt) == published
    assert calculate_metric_percase(pred, gt, convention="published") == published
    np.testing.assert_equal(calculate_metric_percase(pred, gt, convention="nan"), nan_convention)
    np.testing.assert_equal(calculate_metric_percase(pred, gt, (1.0, 2.0, 3.0), convention="nan"), nan_convention)


def test_both_non_empty_is_the_same_in_both_conventions():
    rng = np.random.default_rng(2)
    pred, gt = random_blobs(rng, (10, 16, 16), 0.2), random_blobs(rng, (10, 16, 16), 0.2)
    expected = (medpy_dc(pred, gt), medpy_hd95(pred, gt, voxelspacing=ANISOTROPIC_3D))
    for convention in CONVENTIONS:
        result = calculate_metric_percase(pred, gt, ANISOTROPIC_3D, convention)
        np.testing.assert_allclose(result, expected, rtol=RTOL, atol=0)
        assert all(isinstance(value, float) for value in result)


def test_hd95_refuses_empty_masks():
    with pytest.raises(ValueError, match="pred"):
        hd95(EMPTY, FILLED)
    with pytest.raises(ValueError, match="gt"):
        hd95(FILLED, EMPTY)


# --- several classes at once ---------------------------------------------------------------


def random_label_volume(rng: np.random.Generator, shape, num_classes: int) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int64)
    for label in range(1, num_classes):
        labels[random_blobs(rng, shape, fill=0.08)] = label
    return labels


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("spacing", [None, ANISOTROPIC_3D])
def test_metrics_for_classes_equals_per_class_loop(convention, spacing):
    rng = np.random.default_rng(4)
    shape, num_classes = (12, 30, 30), 6
    gt = random_label_volume(rng, shape, num_classes)
    pred = random_label_volume(rng, shape, num_classes)
    gt[gt == 2] = 0  # class 2 only predicted (false positive organ)
    pred[pred == 3] = 0  # class 3 only in the reference (missed organ)
    gt[gt == 4] = 0
    pred[pred == 4] = 0  # class 4 in neither
    pred[0, 0, 0] = num_classes + 2  # out of range: ignored, as in the loop
    expected = np.array([calculate_metric_percase(pred == c, gt == c, spacing, convention) for c in range(1, num_classes)])
    result = metrics_for_classes(pred, gt, num_classes, spacing, convention)
    assert result.shape == (num_classes - 1, 2)
    np.testing.assert_allclose(result, expected, rtol=RTOL, atol=0)
    # Float label maps, as read from an h5 file, score the same.
    float_result = metrics_for_classes(pred.astype(np.float32), gt.astype(np.float64), num_classes, spacing, convention)
    np.testing.assert_allclose(float_result, expected, rtol=RTOL, atol=0)


def test_metrics_for_classes_matches_medpy_published_protocol():
    rng = np.random.default_rng(9)
    gt = random_label_volume(rng, (10, 28, 28), 4)
    pred = random_label_volume(rng, (10, 28, 28), 4)
    result = metrics_for_classes(pred, gt, 4)
    for c in range(1, 4):
        expected = medpy_dc(pred == c, gt == c), medpy_hd95(pred == c, gt == c)
        np.testing.assert_allclose(result[c - 1], expected, rtol=RTOL, atol=0)


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: dice(np.ones((3, 3)), np.ones((3, 4))), "pred and gt"),
        (lambda: hd95(np.ones((3, 3)), np.ones((3, 4))), "pred and gt"),
        (lambda: calculate_metric_percase(np.ones((3, 3)), np.ones((4, 3))), "pred and gt"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing=(1.0, 1.0)), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing=1.0), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing=(1.0, 0.0, 1.0)), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing=(1.0, -2, 1.0)), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing=(1, math.nan, 1)), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, spacing="1,1,1"), "spacing"),
        (lambda: hd95(FILLED, FILLED, spacing=(1.0, 1.0, 1.0, 1.0)), "spacing"),
        (lambda: calculate_metric_percase(FILLED, FILLED, convention="monai"), "convention"),
        (lambda: metrics_for_classes(FILLED, FILLED, 3, convention="NaN"), "convention"),
        (lambda: metrics_for_classes(FILLED, FILLED, 1), "num_classes"),
        (lambda: metrics_for_classes(FILLED, FILLED, 2.0), "num_classes"),
        (lambda: metrics_for_classes(FILLED, FILLED[:-1], 3), "pred_volume and gt_volume"),
        (lambda: metrics_for_classes(FILLED * 0.5, FILLED, 3), "pred_volume"),
        (lambda: metrics_for_classes(FILLED, FILLED * math.nan, 3), "gt_volume"),
        (lambda: metrics_for_classes(FILLED, FILLED, 3, spacing=(1.0,)), "spacing"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- the benchmark stays runnable ----------------------------------------------------------


def test_benchmark_agrees_with_medpy_on_a_small_case():
    from bench.metric_speed import time_metrics

    result = time_metrics(depth=24, size=64, repeats=1)
    assert result["shape"] == (24, 64, 64)
    assert result["agree"], result["max_relative_difference"]
    assert result["medpy"].shape == result["ours"].shape == (8, 2)
    assert result["medpy_s"] > 0 and result["ours_s"] > 0
