"""Segmentation metrics: Dice and HD95 as the Synapse papers compute them, only much faster.

The published protocol (TransUNet, Swin-Unet, DAE-Former) scores each test case and each organ
with ``medpy.metric.binary.dc`` and ``medpy.metric.binary.hd95``. ``dice`` and ``hd95`` here
return the same numbers (to floating-point rounding) without medpy's cost: medpy runs a
Euclidean distance transform over the whole volume twice per organ, while these functions
crop to the organ's bounding box, find most nearest border voxels by looking at a small
neighbourhood, and only the far ones with a k-d tree. Tests hold them to medpy's values.

HD95 definition (medpy's, kept exactly):

- the border of a mask is the mask minus its binary erosion by the connectivity-1 structuring
  element (the 2 * ndim face neighbours), with voxels outside the array counting as background,
  so an object touching the array edge has a border there;
- for each border voxel of one mask, the Euclidean distance (scaled per axis by ``spacing``) to
  the nearest border voxel of the other mask; both directions pooled into one set;
- the 95th percentile of that set, with numpy's default linear interpolation.

What happens when a mask is empty is a convention, not a measurement; ``calculate_metric_percase``
offers the published one and the one MONAI / nnU-Net use, both pinned by tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

CONVENTION_PUBLISHED = "published"
CONVENTION_NAN = "nan"
CONVENTIONS: tuple[str, ...] = (CONVENTION_PUBLISHED, CONVENTION_NAN)

HD_PERCENTILE = 95.0
# Column order of the rows returned by metrics_for_classes.
METRIC_NAMES: tuple[str, ...] = ("dice", "hd95")
# Background is class 0; a label volume needs it plus at least one foreground class.
MIN_NUM_CLASSES = 2
# Border voxels within this many finest-axis voxels of the other border are matched by looking
# at their neighbourhood (~900 offsets in 3D, nearest first); the rest by a k-d tree. Checking
# one offset costs tens of ns per voxel, a tree query 1-15 us, so a wide neighbourhood pays.
LOCAL_SEARCH_RADIUS = 6
# ...but give up on the neighbourhood once it stops paying: when the last STOP_WINDOW offsets
# settled fewer than STOP_HIT_RATE of the pending voxels per offset (far false positives).
STOP_WINDOW = 64
STOP_HIT_RATE = 0.001
# Largest box of candidate offsets; above 4 dimensions the neighbourhood shrinks to fit.
MAX_SEARCH_BOX = 100_000


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P & G| / (|P| + |G|) of two binary masks (non-zero = foreground).

    Args:
        pred: predicted mask, any shape and dtype.
        gt: reference mask, the same shape as ``pred``.

    Returns:
        Dice in [0, 1], equal to ``medpy.metric.binary.dc``; nan when both masks are empty
        (0 / 0, as medpy gives under numpy 2). For the empty-mask conventions of the papers use
        ``calculate_metric_percase``.
    """
    pred_mask, gt_mask = _binary_pair(pred, gt)
    return _dice_of_masks(pred_mask, gt_mask)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distance of two non-empty binary masks.

    Args:
        pred: predicted mask, any shape (2D, 3D, ...) and dtype; non-zero = foreground.
        gt: reference mask, the same shape as ``pred``.
        spacing: per-axis voxel size (``len(spacing) == pred.ndim``, e.g. mm); ``None`` measures
            in voxels, as the published tables do.

    Returns:
        HD95 in the units of ``spacing`` (voxels if ``None``); equal to
        ``medpy.metric.binary.hd95(pred, gt, voxelspacing=spacing)``.

    Raises:
        ValueError: a mask is empty (the distance is undefined), shapes differ, or ``spacing`` is
            not a sequence of ``ndim`` positive numbers.
    """
    pred_mask, gt_mask = _binary_pair(pred, gt)
    spacing_array = _checked_spacing(spacing, pred_mask.ndim)
    for name, mask in (("pred", pred_mask), ("gt", gt_mask)):
        if not mask.any():
            raise ValueError(
                f"hd95: {name} is an empty mask, so the distance is undefined; use "
                "calculate_metric_percase to score empty masks by a convention"
            )
    box = _union_box(_bounding_box(pred_mask), _bounding_box(gt_mask))
    return _hd95_in_box(pred_mask[box], gt_mask[box], spacing_array)


def calculate_metric_percase(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    convention: str = CONVENTION_PUBLISHED,
) -> tuple[float, float]:
    """(Dice, HD95) of one class in one case, empty masks scored by ``convention``.

    Args:
        pred: predicted binary mask, any shape (usually D x H x W); non-zero = foreground.
        gt: reference binary mask, the same shape as ``pred``.
        spacing: per-axis voxel size in mm (``len == pred.ndim``) for HD95 in mm; ``None``
            measures HD95 in voxels, as the published Synapse tables do.
        convention: how empty masks score.

            ``"published"`` (the TransUNet / Swin-Unet / DAE-Former evaluation, the default):
            both non-empty -> (dice, hd95); pred non-empty and gt empty -> (1.0, 0.0);
            pred empty -> (0.0, 0.0) whether or not gt is empty (so a missed organ gets the
            best possible HD95 -- criticised, but it is what the published tables average).

            ``"nan"`` (as nnU-Net and MONAI treat a class absent from both masks): both empty
            -> (nan, nan), so the class drops out of a nanmean; pred empty and gt non-empty ->
            (0.0, nan); pred non-empty and gt empty -> (0.0, nan). A miss and a false-positive
            organ both score a Dice of 0 here, and their HD95 is nan rather than inf (MONAI's
            choice) because a distance to an empty set is undefined and a single inf would make
            every mean over cases inf; average HD95 with np.nanmean and say how many cases it
            covers.

    Returns:
        ``(dice, hd95)`` as Python floats.

    Raises:
        ValueError: shapes differ, ``spacing`` is not ``ndim`` positive numbers, or
            ``convention`` is not one of ``CONVENTIONS``.
    """
    _check_convention(convention)
    pred_mask, gt_mask = _binary_pair(pred, gt)
    spacing_array = _checked_spacing(spacing, pred_mask.ndim)
    box = _union_box(_bounding_box(pred_mask), _bounding_box(gt_mask))
    if box is None:
        return _empty_case_scores(False, False, convention)
    return _scores_in_box(pred_mask[box], gt_mask[box], spacing_array, convention)


def metrics_for_classes(
    pred_volume: np.ndarray,
    gt_volume: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    convention: str = CONVENTION_PUBLISHED,
) -> np.ndarray:
    """(Dice, HD95) of every foreground class of a predicted label map against the reference.

    Equal to ``calculate_metric_percase(pred_volume == c, gt_volume == c, spacing, convention)``
    for c = 1 .. num_classes - 1, but each volume is scanned once to find every class's bounding
    box, and all other work stays inside the boxes.

    Args:
        pred_volume: predicted label map, integer labels (a float array holding whole numbers is
            accepted), any shape, usually D x H x W. Labels outside 1 .. num_classes - 1 are
            ignored, as in the per-class loop.
        gt_volume: reference label map, the same shape.
        num_classes: number of classes including background (9 for Synapse).
        spacing: per-axis voxel size in mm for HD95 in mm; ``None`` = voxels (published).
        convention: empty-mask convention, see ``calculate_metric_percase``.

    Returns:
        float64 array of shape (num_classes - 1, 2): row c - 1 is (dice, hd95) of class c
        (column order ``METRIC_NAMES``).

    Raises:
        ValueError: bad ``num_classes``, shapes, labels, ``spacing`` or ``convention``.
    """
    _check_convention(convention)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < MIN_NUM_CLASSES:
        raise ValueError(f"num_classes must be >= {MIN_NUM_CLASSES} (background plus at least one class), got {num_classes}")
    pred_labels = _label_map(pred_volume, "pred_volume")
    gt_labels = _label_map(gt_volume, "gt_volume")
    _check_same_shape(pred_labels, gt_labels, "pred_volume", "gt_volume")
    spacing_array = _checked_spacing(spacing, pred_labels.ndim)

    max_label = int(num_classes) - 1
    pred_boxes = ndimage.find_objects(pred_labels, max_label=max_label)
    gt_boxes = ndimage.find_objects(gt_labels, max_label=max_label)
    scores = np.empty((max_label, len(METRIC_NAMES)), dtype=np.float64)
    for label in range(1, max_label + 1):
        pred_box, gt_box = pred_boxes[label - 1], gt_boxes[label - 1]
        if pred_box is None or gt_box is None:
            scores[label - 1] = _empty_case_scores(pred_box is not None, gt_box is not None, convention)
            continue
        box = _union_box(pred_box, gt_box)
        scores[label - 1] = _scores_in_box(pred_labels[box] == label, gt_labels[box] == label, spacing_array, convention)
    return scores


def _scores_in_box(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: np.ndarray,
    convention: str,
) -> tuple[float, float]:
    """(Dice, HD95) of boolean masks already cropped to a box that holds all their voxels."""
    pred_any, gt_any = bool(pred_mask.any()), bool(gt_mask.any())
    if not (pred_any and gt_any):
        return _empty_case_scores(pred_any, gt_any, convention)
    return _dice_of_masks(pred_mask, gt_mask), _hd95_in_box(pred_mask, gt_mask, spacing)


def _empty_case_scores(pred_any: bool, gt_any: bool, convention: str) -> tuple[float, float]:
    """The (Dice, HD95) a convention assigns when at least one mask is empty."""
    if convention == CONVENTION_PUBLISHED:
        if pred_any:  # a prediction where the reference has nothing
            return 1.0, 0.0
        return 0.0, 0.0
    if not pred_any and not gt_any:
        return math.nan, math.nan
    return 0.0, math.nan


def _dice_of_masks(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice of two boolean masks, written as medpy writes it so the rounding is the same."""
    intersection = np.count_nonzero(pred_mask & gt_mask)
    total = np.count_nonzero(pred_mask) + np.count_nonzero(gt_mask)
    if total == 0:
        return math.nan
    return 2.0 * intersection / float(total)


def _hd95_in_box(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: np.ndarray) -> float:
    """HD95 of two non-empty boolean masks cropped to a box that holds all their voxels.

    The crop does not change the borders: everything outside a box that holds every foreground
    voxel is background, and so is everything outside the array under medpy's erosion
    (border_value=0), so the box may be padded with background.
    """
    offsets, step_lengths = _search_offsets(spacing)
    # The borders need a 1-voxel background frame; the search needs room for every offset.
    pad = np.abs(offsets).max(axis=0) + 1
    pred_border = _padded_border(pred_mask, pad)
    gt_border = _padded_border(gt_mask, pad)
    element_strides = np.cumprod((pred_border.shape[1:] + (1,))[::-1])[::-1]
    steps = offsets @ element_strides
    distances = np.concatenate(
        (
            _nearest_distances(pred_border, gt_border, steps, step_lengths, spacing),
            _nearest_distances(gt_border, pred_border, steps, step_lengths, spacing),
        )
    )
    return float(np.percentile(distances, HD_PERCENTILE))


def _nearest_distances(
    query_border: np.ndarray,
    target_border: np.ndarray,
    steps: np.ndarray,
    step_lengths: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """Distance from each query border voxel to the nearest target border voxel.

    Args:
        query_border, target_border: boolean arrays of one shape, padded so that every True
            voxel lies at least ``max |step|`` (per axis) away from the array edge.
        steps: int64 array (K,) of flat-index offsets, sorted by length, holding every offset
            up to ``step_lengths[-1]`` (see ``_search_offsets``).
        step_lengths: float64 array (K,), the length of each offset.
        spacing: float64 array (ndim,) of per-axis voxel sizes.

    Returns:
        float64 array (Q,), one distance per query voxel, in no particular order (a percentile
        needs only the multiset). Most voxels lie within a few voxels of the other border: they
        are settled by looking at the nearest offsets in order of length, so the first hit is
        the nearest voxel. Only the rest go to a k-d tree over all target voxels.
    """
    targets = target_border.ravel()
    pending = np.flatnonzero(query_border)
    hit_counts = np.zeros(len(steps), dtype=np.int64)
    for index, step in enumerate(steps):
        if pending.size == 0:
            break
        hit = targets[pending + step]
        hit_counts[index] = np.count_nonzero(hit)
        pending = pending[~hit]
        recent_hits = hit_counts[max(index + 1 - STOP_WINDOW, 0) : index + 1].sum()
        if index + 1 >= STOP_WINDOW and recent_hits < STOP_HIT_RATE * STOP_WINDOW * pending.size:
            break
    settled = np.repeat(step_lengths, hit_counts)
    if pending.size == 0:
        return settled
    shape = target_border.shape
    query_points = np.stack(np.unravel_index(pending, shape), axis=1)
    target_points = np.stack(np.unravel_index(np.flatnonzero(targets), shape), axis=1)
    tree = cKDTree(target_points * spacing, balanced_tree=False)
    _, nearest = tree.query(query_points * spacing)
    return np.concatenate((settled, _lengths(query_points - target_points[nearest], spacing)))


def _lengths(offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean lengths of integer offsets (N, ndim) scaled by spacing, shape (N,).

    Computed in the order scipy's distance transform uses (scale each axis, square, add axis by
    axis, square root), so that the numbers match medpy's to the last bit.
    """
    scaled = offsets.astype(np.float64) * spacing
    squared = scaled[:, 0] * scaled[:, 0]
    for axis in range(1, scaled.shape[1]):
        squared += scaled[:, axis] * scaled[:, axis]
    return np.sqrt(squared)


def _search_offsets(spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets of the neighbourhood search, sorted by length, the zero offset first.

    Args:
        spacing: float64 array (ndim,) of per-axis voxel sizes.

    Returns:
        int64 array (K, ndim) of every offset whose length (scaled by ``spacing``) is at most
        ``LOCAL_SEARCH_RADIUS`` finest-axis voxels, and float64 array (K,) of the lengths. The
        search may stop after any prefix: a voxel settled at offset k has no target at a
        shorter offset, because every shorter offset came before k.
    """
    for radius_voxels in range(LOCAL_SEARCH_RADIUS, -1, -1):
        radius = radius_voxels * float(spacing.min())
        # The ball reaches radius / spacing voxels along an axis; one more keeps every offset
        # that rounding could put inside the ball within the candidate box.
        reach = np.floor(radius / spacing).astype(np.int64) + 1
        if np.prod(2 * reach + 1) <= MAX_SEARCH_BOX:
            break
    axes = [np.arange(-r, r + 1) for r in reach]
    offsets = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    lengths = _lengths(offsets, spacing)
    inside = lengths <= radius
    order = np.argsort(lengths[inside], kind="stable")
    return offsets[inside][order], lengths[inside][order]


def _padded_border(mask: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """Border of ``mask`` (outside = background), padded by ``pad`` False voxels per side.

    The border is the mask minus its erosion by the face-neighbour cross, as in medpy; a few
    shifted ANDs do that faster than a general morphology pass.
    """
    padded = np.pad(mask, [(int(p), int(p)) for p in pad], mode="constant", constant_values=False)
    interior = padded.copy()
    everything = [slice(None)] * mask.ndim
    for axis in range(mask.ndim):
        lower, upper = list(everything), list(everything)
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        interior[tuple(lower)] &= padded[tuple(upper)]
        interior[tuple(upper)] &= padded[tuple(lower)]
    return padded ^ interior


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box (one slice per axis) holding every True voxel of ``mask``; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=other_axes) if other_axes else mask)
        if len(occupied) == 0:
            return None
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)


def _union_box(first: tuple[slice, ...] | None, second: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding both boxes (either may be None, meaning empty)."""
    if first is None:
        return second
    if second is None:
        return first
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(first, second))


def _binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays (non-zero = foreground), checked to have one shape."""
    pred_array, gt_array = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred_array, gt_array, "pred", "gt")
    if pred_array.ndim == 0:
        raise ValueError("pred and gt must be arrays with at least one axis, got scalars")
    return pred_array.astype(bool, copy=False), gt_array.astype(bool, copy=False)


def _check_same_shape(first: np.ndarray, second: np.ndarray, name1: str, name2: str) -> None:
    if first.shape != second.shape:
        raise ValueError(f"{name1} and {name2} must have the same shape, got {first.shape} and {second.shape}")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _checked_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    """Spacing as a float64 array (ndim,), all ones for None (distances in voxels)."""
    if spacing is None:
        return np.ones(ndim)
    if isinstance(spacing, (str, bytes)) or np.ndim(spacing) != 1 or len(spacing) != ndim:
        raise ValueError(
            f"spacing must be a sequence of {ndim} per-axis voxel sizes (one per mask axis) or None, got {spacing!r}"
        )
    try:
        spacing_array = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must hold numbers, got {spacing!r}") from None
    if not np.all(np.isfinite(spacing_array)) or np.any(spacing_array <= 0):
        raise ValueError(f"spacing must hold finite positive numbers, got {spacing!r}")
    return spacing_array


def _label_map(volume: np.ndarray, name: str) -> np.ndarray:
    """``volume`` as an integer array for find_objects; whole-number floats are converted."""
    array = np.asarray(volume)
    if array.ndim == 0:
        raise ValueError(f"{name} must be a label array with at least one axis, got a scalar")
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        with np.errstate(invalid="ignore"):  # NaN and inf fail the check below instead
            labels = array.astype(np.int64)
        if not np.array_equal(labels, array):
            raise ValueError(f"{name} holds non-integer values; pass a label map (e.g. argmax output), not probabilities")
        return labels
    raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}")
