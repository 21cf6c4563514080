"""Augmentations: image and label stay aligned, label values survive, randomness is torch's."""

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2

from datasets.augment import (
    AUGMENTATIONS,
    CONTRAST_RANGE,
    NOISE_STD,
    SCALE_RANGE,
    TransUNetAugmentation,
    blur_after_resize,
    build_augmentation,
)
from datasets.daeformer_augment import (
    RandomLinearContrast,
    RandomPiecewiseWarp,
    RandomScaleXY,
    SomeOf,
    TorchvisionPairAugmentation,
    daeformer_transforms,
)
from datasets.synthetic.synapse import _interpolation_weights as synthetic_interpolation_weights

SIZE = 64
BLOCK = 8
TOL = 1e-4


def block_pair(seed: int = 0, size: int = SIZE, block: int = BLOCK):
    """Random 0/1 blocks: image float32 and label int64 equal to it (label = image)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 2, (size // block, size // block))
    label = np.kron(coarse, np.ones((block, block), np.int64))
    return label.astype(np.float32), label


def assert_aligned_exact(image: np.ndarray, label: np.ndarray) -> None:
    """Label == image wherever bilinear sampling read only one class (value within TOL of 0/1).

    A value within TOL of 1 means every neighbour with weight above TOL is a 1-pixel, so the
    nearest neighbour (the heaviest one) is too; the same for 0 (fill counts as class 0).
    """
    ones = image > 1 - TOL
    zeros = np.abs(image) < TOL
    assert (label[ones] == 1).all(), f"{(label[ones] != 1).sum()} pixels lost alignment"
    assert (label[zeros] == 0).all(), f"{(label[zeros] != 0).sum()} pixels lost alignment"
    assert (ones | zeros).mean() > 0.5  # the check covers most of the slice
    assert ones.sum() > 0.1 * image.size


def apply(transform, image, label):
    return TorchvisionPairAugmentation(transform)(image, label)


GEOMETRIC = {
    "vertical_flip": lambda: v2.RandomVerticalFlip(p=1.0),
    "horizontal_flip": lambda: v2.RandomHorizontalFlip(p=1.0),
    "scale_up": lambda: RandomScaleXY((1.5, 2.0)),
    "scale_down": lambda: RandomScaleXY((0.5, 0.7)),
    "rotation": lambda: v2.RandomAffine(degrees=(25.0, 40.0)),
    "shear": lambda: v2.RandomAffine(degrees=0.0, shear=(10.0, 16.0)),
    "warp": lambda: RandomPiecewiseWarp((0.03, 0.03)),
    "translation": lambda: v2.RandomAffine(degrees=0.0, translate=(0.2, 0.2)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_each_geometric_transform_keeps_alignment(name):
    image, label = block_pair()
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_label = apply(GEOMETRIC[name](), image, label)
        assert out_image.dtype == np.float32 and out_label.dtype == np.int64
        assert out_image.shape == out_label.shape == (SIZE, SIZE)
        assert not np.array_equal(out_label, label)  # it did move something
        assert_aligned_exact(out_image, out_label)


def test_flips_are_exact():
    image = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    label = np.array([[0, 1, 2], [3, 4, 5]])
    out_image, out_label = apply(v2.RandomVerticalFlip(p=1.0), image, label)
    np.testing.assert_array_equal(out_label, [[3, 4, 5], [0, 1, 2]])
    np.testing.assert_array_equal(out_image, np.float32([[0.3, 0.4, 0.5], [0.0, 0.1, 0.2]]))
    out_image, out_label = apply(v2.RandomHorizontalFlip(p=1.0), image, label)
    np.testing.assert_array_equal(out_label, [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(out_image, np.float32([[0.2, 0.1, 0.0], [0.5, 0.4, 0.3]]))


def test_rotation_by_90_degrees_is_a_pixel_permutation():
    image, label = block_pair(seed=3)
    out_image, out_label = apply(v2.RandomAffine(degrees=(90.0, 90.0)), image, label)
    np.testing.assert_array_equal(out_label, np.rot90(label, -1))
    np.testing.assert_allclose(out_image, np.rot90(image, -1), atol=1e-5)


def test_scale_by_two_doubles_a_centred_square():
    label = np.zeros((SIZE, SIZE), np.int64)
    label[24:40, 24:40] = 1
    out_image, out_label = apply(RandomScaleXY((2.0, 2.0)), label.astype(np.float32), label)
    expected = np.zeros_like(label)
    expected[16:48, 16:48] = 1
    np.testing.assert_array_equal(out_label, expected)
    assert out_image[17:47, 17:47].min() > 1 - TOL
    assert out_image.sum() == pytest.approx(1024, abs=32)


def test_scale_factors_are_drawn_per_axis_in_range():
    image, _ = block_pair()
    torch.manual_seed(0)
    draws = [RandomScaleXY().make_params([torch.from_numpy(image)[None]])["scale_xy"] for _ in range(50)]
    draws = torch.stack(draws)
    assert draws.min() >= SCALE_RANGE[0] and draws.max() <= SCALE_RANGE[1]
    assert (draws[:, 0] != draws[:, 1]).all()  # independent x and y factors


def test_translation_is_a_whole_pixel_shift_within_20_percent():
    image, label = block_pair(seed=5)
    torch.manual_seed(2)
    out_image, out_label = apply(v2.RandomAffine(degrees=0.0, translate=(0.2, 0.2)), image, label)
    limit = int(0.2 * SIZE)
    matches = []
    for dy in range(-limit, limit + 1):
        for dx in range(-limit, limit + 1):
            shifted = np.zeros_like(label)
            top, left = max(0, dy), max(0, dx)
            src = label[max(0, -dy) : SIZE - top, max(0, -dx) : SIZE - left]
            shifted[top : top + src.shape[0], left : left + src.shape[1]] = src
            if np.array_equal(shifted, out_label):
                matches.append((dy, dx))
                np.testing.assert_allclose(out_image, shifted, atol=1e-5)
    assert len(matches) == 1 and matches[0] != (0, 0)


INTENSITY = {
    "noise": lambda: v2.GaussianNoise(mean=0.0, sigma=NOISE_STD, clip=False),
    "blur": lambda: v2.GaussianBlur(kernel_size=7, sigma=1.0),
    "contrast": lambda: RandomLinearContrast(),
}


@pytest.mark.parametrize("name", sorted(INTENSITY))
def test_intensity_transforms_leave_label_unchanged(name):
    image, label = block_pair()
    torch.manual_seed(0)
    out_image, out_label = apply(INTENSITY[name](), image, label)
    np.testing.assert_array_equal(out_label, label)
    assert not np.allclose(out_image, image)


def test_noise_has_the_reference_standard_deviation():
    image = np.full((SIZE, SIZE), 0.5, np.float32)
    torch.manual_seed(0)
    out_image, _ = apply(v2.GaussianNoise(mean=0.0, sigma=NOISE_STD, clip=False), image, np.zeros((SIZE, SIZE), np.int64))
    # 4096 samples: the sample std is within 5 % of 1.275 with overwhelming probability.
    assert np.std(out_image - image) == pytest.approx(0.005 * 255, rel=0.05)


def test_blur_of_a_constant_image_is_constant_and_of_an_impulse_is_gaussian():
    image = np.zeros((SIZE, SIZE), np.float32)
    image[32, 32] = 1.0
    out_image, _ = apply(v2.GaussianBlur(kernel_size=7, sigma=1.0), image, np.zeros((SIZE, SIZE), np.int64))
    weights = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
    weights /= weights.sum()
    np.testing.assert_allclose(out_image[29:36, 29:36], np.outer(weights, weights), atol=1e-6)
    assert out_image.sum() == pytest.approx(1.0, abs=1e-5)


def test_contrast_scales_around_the_centre_by_alpha_in_range():
    image, label = block_pair()
    image = 0.2 + 0.6 * image
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, _ = apply(RandomLinearContrast(centre=0.0), image, label)
        alpha = out_image / image
        assert np.ptp(alpha) < 1e-5 and CONTRAST_RANGE[0] <= alpha[0, 0] <= CONTRAST_RANGE[1]
    torch.manual_seed(0)
    out_image, _ = apply(RandomLinearContrast(centre=0.5), image, label)
    alpha = (out_image - 0.5) / (image - 0.5)
    assert np.ptp(alpha) < 1e-5


def test_daeformer_has_the_ten_reference_operations_with_their_parameters():
    ops = daeformer_transforms()
    assert [type(t).__name__ for t in ops] == [
        "RandomVerticalFlip",
        "RandomHorizontalFlip",
        "GaussianNoise",
        "GaussianBlur",
        "RandomLinearContrast",
        "RandomScaleXY",
        "RandomAffine",
        "RandomAffine",
        "RandomPiecewiseWarp",
        "RandomAffine",
    ]
    vflip, hflip, noise, blur, contrast, scale, rotate, shear, warp, translate = ops
    assert vflip.p == hflip.p == 0.5  # imgaug Flipud(0.5) / Fliplr(0.5)
    assert noise.sigma == pytest.approx(0.005 * 255) and noise.mean == 0 and not noise.clip
    assert list(blur.sigma) == [1.0, 1.0]
    assert contrast.alpha_range == (0.5, 1.5) and contrast.centre == 0.0
    assert scale.scale_range == (0.5, 2.0)
    assert list(rotate.degrees) == [-40, 40] and rotate.shear is None
    assert list(shear.degrees) == [0, 0] and list(shear.shear) == [-16, 16]
    assert warp.scale_range == (0.008, 0.03) and warp.grid_points == 4
    assert list(translate.degrees) == [0, 0] and tuple(translate.translate) == (0.2, 0.2)
    for op in (rotate, shear, translate):
        assert op.interpolation == v2.InterpolationMode.BILINEAR


def test_warp_moves_grid_points_by_scale_times_size():
    # The corner pixel sits on a grid point (align_corners=True); its shift has std
    # scale * size pixels = 2 * scale in normalised units.
    warp = RandomPiecewiseWarp((0.03, 0.03))
    torch.manual_seed(0)
    shifts = torch.stack([warp.make_params([torch.zeros(1, SIZE, SIZE)])["displacement"][0, 0, 0] for _ in range(400)])
    assert shifts.std(dim=0).numpy() == pytest.approx([0.06, 0.06], rel=0.15)
    assert shifts.mean(dim=0).abs().max() < 0.01


def test_some_of_applies_zero_to_four_operations_uniformly():
    counts = []

    class Count(v2.Transform):
        def forward(self, *inputs):
            counts[-1] += 1
            return inputs

    pipeline = SomeOf([Count() for _ in range(10)], max_ops=4)
    torch.manual_seed(0)
    for _ in range(1000):
        counts.append(0)
        pipeline(torch.zeros(1), torch.zeros(1))
    histogram = np.bincount(counts, minlength=5)
    assert len(histogram) == 5  # never more than 4
    assert (np.abs(histogram - 200) < 50).all()


def robust_alignment(image: np.ndarray, label: np.ndarray, threshold: float) -> tuple[float, int]:
    """Check label == (image > threshold) away from label borders.

    Returns the fraction of pixels checked and the number of class-1 pixels among them.

    Intensity operations and spline overshoot only disturb a few pixels around region borders,
    so pixels at least 3 pixels inside a region are compared.
    """
    inner_one = ndimage.binary_erosion(label == 1, iterations=3)
    inner_zero = ndimage.binary_erosion(label == 0, iterations=3, border_value=1)
    assert (image[inner_one] > threshold).all()
    assert (image[inner_zero] < threshold).all()
    return (inner_one.sum() + inner_zero.sum()) / label.size, inner_one.sum()


@pytest.mark.parametrize("name", ["daeformer", "transunet"])
def test_composed_pipelines_keep_alignment(name):
    # Large intensities so that noise (std 1.275) and contrast cannot flip a class.
    image, label = block_pair(size=128, block=16)
    augment = build_augmentation(name)
    changed = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out_label = augment(image * 1000, label)
        checked, ones = robust_alignment(out_image, out_label, threshold=250)
        assert checked > 0.2 and ones > 0
        changed += not np.array_equal(out_label, label)
    assert changed > 20


def test_geometric_composition_keeps_exact_alignment():
    geometric = [make() for make in GEOMETRIC.values()]
    pipeline = SomeOf(geometric, max_ops=4)
    image, label = block_pair(size=128, block=16)
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_label = apply(pipeline, image, label)
        ones = out_image > 1 - TOL
        zeros = np.abs(out_image) < TOL
        assert (out_label[ones] == 1).all() and (out_label[zeros] == 0).all()


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_label_values_stay_in_input_set_plus_fill(name):
    rng = np.random.default_rng(1)
    label = np.kron(rng.choice([3, 7, 8], (8, 8)), np.ones((8, 8), np.int64))
    image = rng.random((64, 64), dtype=np.float32)
    augment = build_augmentation(name)
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_label = augment(image, label)
        assert set(np.unique(out_label)) <= {0, 3, 7, 8}  # 0 is the fill outside the slice
        assert out_image.shape == out_label.shape == (64, 64)


def run(name: str, seed: int, calls: int = 6) -> list[np.ndarray]:
    image, label = block_pair(seed=7)
    augment = build_augmentation(name)
    torch.manual_seed(seed)
    outputs = []
    for _ in range(calls):
        out_image, out_label = augment(image, label)
        outputs += [out_image, out_label]
    return outputs


@pytest.mark.parametrize("name", ["daeformer", "transunet"])
def test_same_torch_seed_repeats_and_numpy_python_rngs_are_unused(name):
    np.random.seed(1)
    random.seed(1)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    first = run(name, seed=11)
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:], numpy_state[1:]))
    np.random.seed(2)
    random.seed(2)
    second = run(name, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    other = run(name, seed=12)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_transunet_branches_and_frequencies():
    image, label = block_pair(seed=9)
    dihedral = [np.flip(np.rot90(label, k), axis) for k in range(4) for axis in (0, 1)]
    rotations = {a: ndimage.rotate(label, a, order=0, reshape=False) for a in range(-20, 21) if a}
    augment = TransUNetAugmentation()
    counts = {"dihedral": 0, "rotation": 0, "identity": 0}
    for seed in range(400):
        torch.manual_seed(seed)
        out_image, out_label = augment(image, label)
        if any(np.array_equal(out_label, d) for d in dihedral):
            counts["dihedral"] += 1
            np.testing.assert_array_equal(out_image, out_label.astype(np.float32))
        elif np.array_equal(out_label, label):
            counts["identity"] += 1
        else:
            assert any(np.array_equal(out_label, r) for r in rotations.values())
            counts["rotation"] += 1
    # p = 0.5, 0.25, 0.25 (identity includes the rare 0-degree rotation)
    assert abs(counts["dihedral"] - 200) < 40
    assert abs(counts["rotation"] - 100) < 35 and abs(counts["identity"] - 100) < 35


def test_none_is_identity_and_unknown_name_errors():
    image, label = block_pair()
    out_image, out_label = build_augmentation("none")(image, label)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    with pytest.raises(ValueError, match="--augment 'imgaug' is unknown; choose one of daeformer"):
        build_augmentation("imgaug")


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"image \(4, 4\) and label \(4, 5\)"):
        build_augmentation("daeformer")(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.int64))


def test_after_a_resize_blur_and_noise_are_rescaled_to_the_stored_slice():
    from datasets.augment import blur_after_resize, noise_gain
    from datasets.resize import zoom_images

    # 512 -> 224: blur 1.0 * 224 / 512 = 0.4375 (kernel +-3 sigma -> 5); noise gain 0.870.
    assert blur_after_resize((512, 512), (224, 224)) == (0.4375, 5)
    assert noise_gain((512, 512), (224, 224)) == pytest.approx(0.87038, abs=1e-5)
    assert noise_gain((64, 64), (64, 64)) == 1.0
    ops = build_augmentation("daeformer", (512, 512), (224, 224)).transform.transforms
    assert ops[2].sigma == pytest.approx(NOISE_STD * 0.87038, abs=1e-4)
    assert list(ops[3].sigma) == [0.4375, 0.4375] and list(ops[3].kernel_size) == [5, 5]
    # The gain is what the protocol's zoom does to white noise: measured, not assumed.
    torch.manual_seed(0)
    noise = zoom_images(torch.randn(16, 128, 128, dtype=torch.float64), (56, 56))
    assert noise.std().item() == pytest.approx(noise_gain((128, 128), (56, 56)), rel=0.03)
    # Same size: the reference's values.
    same = build_augmentation("daeformer", (64, 64), (64, 64)).transform.transforms
    assert same[2].sigma == pytest.approx(NOISE_STD) and list(same[3].sigma) == [1.0, 1.0]
    with pytest.raises(ValueError, match="both stored_size and img_size"):
        build_augmentation("daeformer", (64, 64))


@pytest.mark.parametrize(("stored", "expected_sigma", "expected_kernel"), [(None, 1.0, 7), ((512, 512), 0.4375, 5)])
def test_the_blur_kernel_holds_no_subnormal_and_reaches_its_hand_computed_corner(stored, expected_sigma, expected_kernel):
    sigma, kernel = (1.0, 7) if stored is None else blur_after_resize(stored, (224, 224))
    assert (sigma, kernel) == (expected_sigma, expected_kernel)
    blur = next(t for t in daeformer_transforms(blur_sigma=sigma, blur_kernel=kernel) if isinstance(t, v2.GaussianBlur))
    impulse = torch.zeros(1, 31, 31)
    impulse[0, 15, 15] = 1.0
    # The blur of a unit impulse far from the borders is the kernel it applies.
    response = blur(tv_tensors.Image(impulse))[0]
    half = kernel // 2
    taps = [math.exp(-(x**2) / (2 * sigma**2)) for x in range(-half, half + 1)]
    corner = (taps[0] / sum(taps)) ** 2  # 1.97e-5 for sigma 1, 7 taps; 6.38e-10 for 0.4375, 5
    assert response[15 - half, 15 - half].item() == pytest.approx(corner, rel=1e-5)
    assert response.abs().max() > 0 and response[response != 0].abs().min() >= torch.finfo(torch.float32).tiny


def test_the_phantoms_interpolation_weights_hold_no_subnormal():
    # Their Gaussian tails rounded to float32 held 1,032 subnormal entries for 512 pixels from
    # 80 nodes; set to 0, the rows keep their unit sum of squares.
    weights = synthetic_interpolation_weights(512, 80)
    tiny = np.finfo(np.float32).tiny
    assert not ((weights != 0) & (np.abs(weights) < tiny)).any()
    np.testing.assert_allclose((weights.astype(np.float64) ** 2).sum(axis=1), 1.0, atol=1e-6)


def test_only_the_daeformer_recipe_loads_torchvision():
    # torchvision's import takes about a second; --augment none or transunet does not pay it
    code = (
        "import sys; from datasets.augment import build_augmentation; "
        "build_augmentation('none'); build_augmentation('transunet'); before = 'torchvision' in sys.modules; "
        "build_augmentation('daeformer'); print(before, 'torchvision' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]
