"""Batched torch resizes against scipy's zoom: the operators, the quirks, the round trip."""

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from datasets.preprocess import (
    preprocess_batch,
    preprocess_slice,
    resize_label,
    resize_labels,
)
from datasets.resize import (
    flush_subnormals,
    nearest_zoom_indices,
    spline_operator,
    spline_zoom_matrix,
    subnormal_count,
    zoom_images,
    zoom_labels,
)
from datasets.synthetic.synapse import make_case

# (H, W) -> (S_h, S_w): the protocol's two directions, non-square, odd, identity, one axis kept,
# single rows and columns.
SIZES = [
    ((512, 512), (224, 224)),
    ((224, 224), (512, 512)),
    ((37, 53), (20, 71)),
    ((21, 9), (8, 30)),
    ((20, 16), (24, 24)),
    ((96, 64), (96, 40)),
    ((13, 13), (13, 13)),
    ((1, 7), (3, 4)),
    ((7, 1), (1, 3)),
]
# One float32 rounding of values in [0, 1]: scipy rounds its float64 result once, so do we.
FLOAT32_ULP_AT_1 = 2.0**-23
NUM_CLASSES = 9


def scipy_zoom(batch: np.ndarray, size, order: int) -> np.ndarray:
    height, width = batch.shape[1:]
    return np.stack([zoom(s, (size[0] / height, size[1] / width), order=order) for s in batch])


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_image_zoom_equals_scipy_order3(shape, size):
    images = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    expected = scipy_zoom(images, size, order=3)
    out = zoom_images(torch.from_numpy(images), size)
    assert out.dtype == torch.float32 and out.shape == (3, *size)
    assert np.abs(out.numpy() - expected).max() <= 2 * FLOAT32_ULP_AT_1
    # float32 products: a few roundings off, never more than 1e-6 on [0, 1] data.
    fast = zoom_images(torch.from_numpy(images), size, compute_dtype=torch.float32)
    assert np.abs(fast.numpy() - expected).max() < 1e-6


@pytest.mark.parametrize(("shape", "size"), SIZES)
@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_label_zoom_equals_scipy_order0_exactly(shape, size, dtype):
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (2, *shape)).astype(dtype)
    out = zoom_labels(torch.from_numpy(labels), size)
    assert out.dtype == torch.from_numpy(labels).dtype
    np.testing.assert_array_equal(out.numpy(), scipy_zoom(labels, size, order=0))


def test_five_to_three_samples_rows_zero_two_four():
    # grid_mode=False: step (5 - 1) / (3 - 1) = 2, on the samples, where the spline interpolates.
    np.testing.assert_allclose(spline_zoom_matrix(5, 3), np.eye(5)[[0, 2, 4]], atol=1e-12)
    np.testing.assert_array_equal(nearest_zoom_indices(5, 3), [0, 2, 4])
    np.testing.assert_array_equal(nearest_zoom_indices(4, 2), [0, 3])
    np.testing.assert_array_equal(nearest_zoom_indices(2, 5), [0, 0, 1, 1, 1])


def test_512_to_224_fills_the_last_row_and_column_as_scipy_does():
    # The last sample position rounds past 511, and mode="constant" reads cval there.
    matrix = spline_zoom_matrix(512, 224)
    assert not matrix[-1].any() and np.abs(matrix[:-1].sum(axis=1) - 1).max() < 1e-12
    indices = nearest_zoom_indices(512, 224)
    assert indices[-1] == -1 and (indices[:-1] >= 0).all() and indices[-2] == 509
    ones = torch.ones(1, 512, 512)
    out = zoom_images(ones, (224, 224))
    assert out[0, -1].abs().max() == 0 and out[0, :, -1].abs().max() == 0
    assert (out[0, :-1, :-1] - 1).abs().max() < 1e-6
    labels = zoom_labels(torch.full((1, 512, 512), 7), (224, 224))
    assert labels[0, -1].unique().tolist() == [0] and labels[0, :, -1].unique().tolist() == [0]
    assert int((labels == 7).sum()) == 223 * 223
    # And nothing is filled on the way back.
    assert (nearest_zoom_indices(224, 512) >= 0).all()
    assert np.abs(spline_zoom_matrix(224, 512).sum(axis=1) - 1).max() < 1e-12


def test_same_size_is_returned_as_is():
    images, labels = torch.rand(2, 6, 5), torch.randint(0, 3, (2, 6, 5))
    assert zoom_images(images, (6, 5)) is images
    assert zoom_labels(labels, (6, 5)) is labels


def test_float64_images_stay_float64():
    images = np.random.default_rng(2).random((1, 30, 20))
    out = zoom_images(torch.from_numpy(images), (17, 41))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), scipy_zoom(images, (17, 41), order=3), atol=1e-13)


def test_batch_functions_equal_the_reference_slice_functions():
    images = np.random.default_rng(3).random((4, 40, 36), dtype=np.float32)
    batch = preprocess_batch(torch.from_numpy(images), (24, 28))
    assert batch.shape == (4, 1, 24, 28) and batch.dtype == torch.float32
    for b in range(4):
        expected = preprocess_slice(images[b], (24, 28))
        assert np.abs(batch[b, 0].numpy() - expected).max() <= 4 * FLOAT32_ULP_AT_1
    labels = torch.randint(0, NUM_CLASSES, (4, 24, 28), dtype=torch.int32)
    back = resize_labels(labels, (40, 36))
    assert back.dtype == torch.int64 and back.shape == (4, 40, 36)
    for b in range(4):
        np.testing.assert_array_equal(back[b].numpy(), resize_label(labels[b].numpy(), (40, 36)))


def fixed_logits(inputs: torch.Tensor) -> torch.Tensor:
    """A 9-class 3x3 convolution with fixed random weights: (B, 1, h, w) -> (B, 9, h, w)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_CLASSES, 1, 3, 3, generator=generator)
    bias = torch.randn(NUM_CLASSES, generator=generator)
    return torch.nn.functional.conv2d(inputs, weight, bias, padding=1)


def fixed_network(inputs: torch.Tensor) -> torch.Tensor:
    return fixed_logits(inputs).argmax(dim=1)


def test_round_trip_on_a_phantom_slice_gives_scipy_labels():
    image, _ = make_case(np.random.default_rng(4), 512, 2)
    reference = np.stack(
        [
            resize_label(fixed_network(torch.from_numpy(preprocess_slice(s, (224, 224)))[None, None])[0].numpy(), (512, 512))
            for s in image
        ]
    )
    ours = resize_labels(fixed_network(preprocess_batch(torch.from_numpy(image), (224, 224))), (512, 512))
    assert len(np.unique(reference)) >= 7  # most classes occur: the comparison has teeth
    # float64 products reproduce scipy's float32 input (to a rounding), so no label flips.
    assert int((ours.numpy() != reference).sum()) == 0


def test_float32_products_flip_only_near_ties():
    image, _ = make_case(np.random.default_rng(4), 512, 2)
    reference = torch.from_numpy(np.stack([preprocess_slice(s, (224, 224)) for s in image]))
    fast = (zoom_images(torch.from_numpy(image), (224, 224), torch.float32) - 0.5) / 0.5
    assert 0 < (fast != reference).float().mean() < 1  # float32 products do differ
    logits = fixed_logits(reference[:, None])
    flipped = fixed_network(fast[:, None]) != logits.argmax(dim=1)
    top2 = logits.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1])[flipped]
    # Inputs differ by < 1e-6 and the weights are O(1), so only logits within ~1e-5 can swap.
    assert int(flipped.sum()) <= 10 and (gap < 1e-4).all()


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ValueError, match=r"images must be a tensor \(B, H, W\), got \(4, 4\)"):
        zoom_images(torch.zeros(4, 4), (2, 2))
    with pytest.raises(ValueError, match="images must be a floating-point tensor"):
        zoom_images(torch.zeros(1, 4, 4, dtype=torch.int64), (2, 2))
    with pytest.raises(ValueError, match=r"size must be two positive ints \(H, W\), got \(0, 2\)"):
        zoom_labels(torch.zeros(1, 4, 4, dtype=torch.int64), (0, 2))
    with pytest.raises(ValueError, match="n_out must be a positive int"):
        spline_zoom_matrix(4, 0)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        resize_labels(torch.zeros(1, 4, 4), (8, 8))
    with pytest.raises(ValueError, match=r"images must be a tensor \(B, H, W\)"):
        preprocess_batch(np.zeros((1, 4, 4), np.float32), (2, 2))


# The scripts' pairs (512 <-> 224), and a spread of others: small to large, odd and even, each to
# 224 and back, plus pairs that do not involve 224 at all.
SPREAD = (64, 97, 128, 149, 255, 256, 301, 384, 447, 512, 513, 640, 767, 800, 1000, 1023, 1024)
SUBNORMAL_PAIRS = sorted(
    {(n, 224) for n in SPREAD}
    | {(224, n) for n in SPREAD}
    | {(a, b) for a in (64, 255, 513, 1023) for b in (97, 512, 1024) if a != b}
)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_flush_subnormals_zeroes_exactly_the_entries_below_the_smallest_normal():
    tiny = torch.finfo(torch.float32).tiny  # 2**-126
    values = torch.tensor([1e-45, -1e-40, tiny, -tiny, 0.5, 0.0], dtype=torch.float32)
    assert subnormal_count(values) == 2
    flushed = flush_subnormals(values.clone())
    assert flushed.tolist() == [0.0, 0.0, tiny, -tiny, 0.5, 0.0]
    assert subnormal_count(flushed) == 0
    # Below float32's smallest normal but normal in float64: kept there.
    assert flush_subnormals(torch.tensor([1e-40], dtype=torch.float64)).item() == 1e-40


def test_the_512_to_224_float32_matrix_would_hold_subnormals_without_the_flush():
    # What the flush exists for (issue 18): the prefilter's inverse rounded to float32.
    raw = torch.from_numpy(spline_zoom_matrix(512, 224)).float()
    assert subnormal_count(raw) == 4902
    operator = spline_operator(512, 224, "cpu", torch.float32)
    assert subnormal_count(operator) == 0
    # Only the subnormal entries changed; every normal entry is the float32 rounding as before.
    normal = raw.abs() >= torch.finfo(torch.float32).tiny
    assert torch.equal(operator[normal], raw[normal]) and not operator[~normal].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cached_operator_holds_a_subnormal(dtype, device):
    holding = []
    for n_in, n_out in SUBNORMAL_PAIRS:
        # Through the resize itself, so the operators checked are the ones it caches and uses.
        zoom_images(torch.zeros(1, n_in, 3, device=device), (n_out, 3), dtype)
        operator = spline_operator(n_in, n_out, device, dtype)
        assert operator.dtype == dtype and operator.shape == (n_out, n_in)
        if subnormal_count(operator):
            holding.append((n_in, n_out, subnormal_count(operator)))
    assert holding == []
