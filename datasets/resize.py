"""The protocol's slice resizes, exactly, as batched torch operations on any device.

The Synapse protocol resizes every slice with ``scipy.ndimage.zoom`` at its defaults (spline
prefilter, ``mode="constant"``, ``cval=0``, ``grid_mode=False``): order 3 for the image going
into the network, order 0 for the predicted labels coming back. Both are separable, so a batch
can be resized by matrix products and gathers instead of one ``zoom`` call per slice:

- order 3 is linear, and ``zoom`` prefilters and interpolates one axis at a time, so
  ``zoom(x) == A_h @ x @ A_w.T`` where column j of ``A`` (out x in) is the 1-D ``zoom`` of the
  j-th unit vector. ``zoom`` derives each axis's sampling step from the sizes alone,
  ``(in - 1) / (out - 1)``, after rounding ``in * factor`` to the output size, so the 1-D zoom
  with factor ``out / in`` samples exactly where the 2-D zoom does along that axis.
- order 0 picks, for each output row (column), one input row (column): the indices are the
  1-D ``zoom`` of the ramp ``1..in`` (a 0 there is the fill ``cval``, see below).

A quirk the operators reproduce rather than fix: for some sizes the last sample position,
``(out - 1) * (in - 1) / (out - 1)``, rounds to a hair above ``in - 1``, outside the slice, so
``mode="constant"`` returns ``cval = 0`` there. 512 -> 224 is such a size: the protocol's
network input has its last row and column set to 0 (intensity 0, -1 after normalisation), and
a 512 -> 224 label resize gives class 0 there. 224 -> 512 has no such row.

Subnormal numbers: the cached matrices hold none in their compute dtype (entries below the
smallest normal number are set to 0, ``flush_subnormals``): on CPUs that handle subnormal
operands in microcode they made a float32 512 -> 224 resize 13x slower (an Intel Xeon, issue 18), and they are far below the
rounding of any sum they take part in. ``python -m bench.resize_speed --subnormals`` times each operator
against a copy of itself with the subnormals kept, on the machine at hand.

Precision: ``zoom`` filters in float64 and rounds once to the output dtype; the matrices are
built in float64 and, by default, applied in float64 too, so a float32 result equals scipy's
to about one float32 rounding (see ``bench/resize_speed.py`` for what float32 products change).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import zoom

SPLINE_ORDER = 3  # the protocol's image interpolation
NEAREST_ORDER = 0  # the protocol's label interpolation
FILL = 0  # zoom's default cval: what a sample outside the slice reads
OPERATOR_CACHE_SIZE = 32  # (size pair, device, dtype) combinations kept; a run uses a handful


def check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
        raise ValueError(f"{name} must be two positive ints (H, W), got {tuple(size)}")
    return int(size[0]), int(size[1])


def _check_length(n: int, name: str) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return int(n)


def _zoom_1d(vector: np.ndarray, n_out: int, order: int) -> np.ndarray:
    """``zoom`` of a 1-D array to ``n_out`` samples, with the factor the 2-D call would use."""
    out = zoom(vector, n_out / vector.shape[0], order=order)
    # Only reachable if round(n_in * (n_out / n_in)) != n_out, which float64 rules out for any
    # slice size; checked because every result below depends on it.
    if out.shape != (n_out,):
        raise ValueError(f"zoom of {vector.shape[0]} samples gave {out.shape[0]}, not {n_out}")
    return out


def spline_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The 1-D order-3 ``zoom`` from ``n_in`` to ``n_out`` samples as a matrix.

    Returns:
        float64 (n_out, n_in) ``A`` with ``A @ v == zoom(v, n_out / n_in, order=3)`` for any
        vector v (up to float64 rounding): column j is the zoom of the j-th unit vector.
    """
    n_in, n_out = _check_length(n_in, "n_in"), _check_length(n_out, "n_out")
    identity = np.eye(n_in)
    return np.stack([_zoom_1d(identity[:, j], n_out, SPLINE_ORDER) for j in range(n_in)], axis=1)


def nearest_zoom_indices(n_in: int, n_out: int) -> np.ndarray:
    """The input index each output sample of a 1-D order-0 ``zoom`` reads.

    Returns:
        int64 (n_out,) in [-1, n_in): -1 where ``zoom`` reads outside the slice and fills
        ``cval`` (see the module docstring). Found by zooming the ramp 1..n_in, so the indices
        are scipy's own rounding, not a re-derivation of it.
    """
    n_in, n_out = _check_length(n_in, "n_in"), _check_length(n_out, "n_out")
    ramp = np.arange(1, n_in + 1, dtype=np.float64)
    return np.rint(_zoom_1d(ramp, n_out, NEAREST_ORDER)).astype(np.int64) - 1


def flush_subnormals(operator: torch.Tensor) -> torch.Tensor:
    """``operator`` with every entry whose magnitude is below the smallest normal number of its
    dtype (``torch.finfo(dtype).tiny``) set to 0, in place; returned for chaining.

    Why: many CPUs (Intel's among them) multiply a subnormal operand in microcode, tens of times
    slower than a normal one, so a matrix product with a few thousand subnormal entries can take
    ten times as long. Zeroing them changes a product's entry by at most (entries per row) x
    ``tiny`` x max|x| -- 6e-36 for a 512-entry float32 row and x in [0, 1] -- far below the
    rounding of any value it is added to, so only results that are themselves ~0 can differ
    (``bench.resize_speed --subnormals`` prints the largest difference). Done on the operator itself, never with ``torch.set_flush_denormal``, which would change the arithmetic
    of the caller's whole process.
    """
    if operator.is_floating_point():
        operator[operator.abs() < torch.finfo(operator.dtype).tiny] = 0
    return operator


def subnormal_count(operator: torch.Tensor) -> int:
    """Entries of a floating-point tensor that are subnormal in its own dtype (0 is not)."""
    if not operator.is_floating_point():
        return 0
    magnitude = operator.abs()
    return int(((magnitude > 0) & (magnitude < torch.finfo(operator.dtype).tiny)).sum())


@lru_cache(maxsize=OPERATOR_CACHE_SIZE)
def _spline_operator(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # The prefilter's inverse decays geometrically away from the diagonal: rounded to float32,
    # thousands of entries of a 512 -> 224 matrix are subnormal (down to 1.4e-45). Flushed in
    # the compute dtype, before the move, so every device gets the same normal-only operator.
    matrix = torch.from_numpy(spline_zoom_matrix(n_in, n_out)).to(dtype=dtype)
    return flush_subnormals(matrix).to(device=device)


def spline_operator(
    n_in: int, n_out: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The cached (n_out, n_in) order-3 operator that ``zoom_images`` multiplies by: the
    ``spline_zoom_matrix`` in ``dtype`` on ``device``, with no subnormal entry. Shared, not a
    copy: do not modify it."""
    n_in, n_out = _check_length(n_in, "n_in"), _check_length(n_out, "n_out")
    return _spline_operator(n_in, n_out, torch.device(device), dtype)


@lru_cache(maxsize=OPERATOR_CACHE_SIZE)
def _nearest_operator(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gather indices (fill positions clamped to 0) and the fill positions (None if none)."""
    indices = nearest_zoom_indices(n_in, n_out)
    fill = np.flatnonzero(indices < 0)
    gather = torch.from_numpy(np.maximum(indices, 0)).to(device)
    return gather, (torch.from_numpy(fill).to(device) if fill.size else None)


def check_batch(tensor: torch.Tensor, name: str, channels: bool = False) -> None:
    """A tensor (B, H, W), or with ``channels`` also (B, C, H, W); ValueError otherwise."""
    dims = (3, 4) if channels else (3,)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in dims:
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        also = " (or (B, C, H, W) for slices of several channels)" if channels else ""
        raise ValueError(f"{name} must be a tensor (B, H, W), got {shape}{also}")


def zoom_images(images: torch.Tensor, size: Sequence[int], compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Order-3 ``zoom`` of every slice of a batch to ``size``, as the protocol does it.

    Equal to ``zoom(images[b], (S_h / H, S_w / W), order=3)`` for each b, to about one rounding
    of the output dtype when ``compute_dtype`` is float64. Returned unchanged (not copied)
    when the batch already has that size, as ``datasets.preprocess.preprocess_slice`` does.

    Args:
        images: (B, H, W), or (B, C, H, W) for slices of several channels (each channel zoomed
            alike), floating point, on any device.
        size: (S_h, S_w) output size.
        compute_dtype: dtype of the matrix products; float64 matches scipy's own arithmetic,
            float32 is about twice as fast on a CPU and much faster on most GPUs.

    Returns:
        (B, S_h, S_w) or (B, C, S_h, S_w), the dtype and device of ``images``.
    """
    # The products below act on the last two axes and broadcast over the leading ones, so a
    # channel axis needs no other change.
    check_batch(images, "images", channels=True)
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got {images.dtype}")
    out_h, out_w = check_size(size, "size")
    height, width = images.shape[-2:]
    if (height, width) == (out_h, out_w):
        return images
    rows = _spline_operator(height, out_h, images.device, compute_dtype)
    cols = _spline_operator(width, out_w, images.device, compute_dtype)
    # The two products give the same result in either order; pick the one with fewer
    # multiply-adds (they differ for non-square sizes).
    work = images.to(compute_dtype)
    if out_h * width * (height + out_w) <= out_w * height * (width + out_h):
        resized = (rows @ work) @ cols.T
    else:
        resized = rows @ (work @ cols.T)
    return resized.to(images.dtype)


def zoom_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Order-0 (nearest) ``zoom`` of every label map of a batch to ``size``, exactly.

    Equal to ``zoom(labels[b], (S_h / H, S_w / W), order=0)`` for each b, element for element,
    including the rows or columns that ``zoom`` fills with 0 (see the module docstring).
    Returned unchanged (not copied) when the batch already has that size.

    Args:
        labels: (B, H, W) class ids of any dtype, on any device.
        size: (S_h, S_w) output size.

    Returns:
        (B, S_h, S_w), the dtype and device of ``labels``.
    """
    check_batch(labels, "labels")
    out_h, out_w = check_size(size, "size")
    height, width = labels.shape[-2:]
    if (height, width) == (out_h, out_w):
        return labels
    rows, fill_rows = _nearest_operator(height, out_h, labels.device)
    cols, fill_cols = _nearest_operator(width, out_w, labels.device)
    # One gather over the (row, column) grid: about twice as fast as two index_selects,
    # which write the label-sized intermediate once more.
    resized = labels[:, rows[:, None], cols[None, :]]
    if fill_rows is not None:
        resized[:, fill_rows, :] = FILL
    if fill_cols is not None:
        resized[:, :, fill_cols] = FILL
    return resized
