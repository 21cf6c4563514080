"""Joint image/label augmentation for 2D slices: DAE-Former's recipe, TransUNet's, or none.

``build_augmentation(name)`` returns a callable ``(image, label) -> (image, label)`` on numpy
arrays: image float32 (H, W) with values in [0, 1], label int64 (H, W) class ids. Geometric
operations move image and label with one random draw (image bilinear or cubic, label nearest
neighbour, fill 0 outside the slice); intensity operations touch the image only. A slice of
several channels, (C, H, W), moves every channel with that one draw, so the channels stay
aligned with each other and with the label (noise is drawn per pixel and channel).

``"daeformer"`` rebuilds the published DAE-Former augmentation, which was written with imgaug
(imgaug no longer imports on NumPy >= 1.24): pick 0 to 4 of ten operations at random and apply
them in random order, as torchvision ``transforms.v2`` transforms (``datasets.daeformer_augment``
says where they differ from imgaug's). torchvision loads only when this recipe is built: its
import takes about a second.

``"transunet"`` is the recipe of TransUNet and Swin-Unet: with p=0.5 a random rot90 and a flip
along a random axis; otherwise, with p=0.5, a rotation by a whole number of degrees within
+-20 (image spline order 3, label order 0).

Augmenting after the resize. ``datasets.synapse.NpzSlices`` resizes a slice to the network
size first and augments it there, which costs a fifth of augmenting a 512x512 slice and then
resizing it (the published order; ``augment_first=True`` keeps it). Geometric operations,
flips, contrast and the TransUNet recipe are defined in fractions of the slice, so their
distribution does not depend on the order; the two operations defined in pixels are rescaled by
``build_augmentation(name, stored_size, img_size)`` so that they do what they did on the stored
slice:

- blur: sigma scaled by the resize factor (geometric mean of the two axes), 1.0 -> 0.4375 for
  512 -> 224, so it blurs the same width of anatomy; kernel still covering +-3 sigma (7 -> 5).
- noise: standard deviation multiplied by the RMS gain that the protocol's order-3 zoom has on
  white noise (``noise_gain``), 0.870 for 512 -> 224 (1.275 -> 1.110), so each network pixel
  sees the same noise power. The noise is white at 224, where the published order leaves it
  slightly correlated between neighbouring pixels by the interpolation.
- labels are resized (nearest) before the geometric operations move them (nearest again), so a
  structure thinner than a 224 pixel can vanish before rather than after the warp; both orders
  resample labels twice with nearest neighbour.
- translation is rounded to whole 224 pixels rather than whole 512 pixels.

Randomness: every random number comes from torch's global generator (``torch.rand``,
``torch.randint``, ``torch.randperm``), never numpy's or Python's. DataLoader workers are seeded
differently by torch every epoch, so they draw different augmentations, and one torch seed
(or a restored torch RNG state) repeats a run exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from datasets.resize import check_size, spline_zoom_matrix

AUGMENTATIONS = ("daeformer", "transunet", "none")

Augmentation = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# --- DAE-Former (the published imgaug pipeline) ---
MAX_OPS = 4  # imgaug SomeOf((0, 4), ...): 0..4 operations, uniformly
FLIP_P = 0.5  # imgaug Flipud(0.5) / Fliplr(0.5): a chosen flip still flips only half the time
NOISE_STD = 0.005 * 255  # reference value, added as is to [0, 1] images (see module docstring)
BLUR_SIGMA = 1.0
BLUR_KERNEL_SIGMAS = 3  # the kernel reaches this many sigmas either side of its centre
BLUR_KERNEL = 2 * int(np.ceil(BLUR_KERNEL_SIGMAS * BLUR_SIGMA)) + 1  # 7
CONTRAST_RANGE = (0.5, 1.5)
CONTRAST_CENTRE = 0.0  # imgaug's centre for float images (see module docstring)
SCALE_RANGE = (0.5, 2.0)  # drawn independently for x and y
ROTATE_DEGREES = 40.0
SHEAR_DEGREES = 16.0  # shear along x only, as imgaug's scalar shear
WARP_SCALE_RANGE = (0.008, 0.03)  # std of the grid-point shifts, as a fraction of the image size
WARP_GRID_POINTS = 4  # imgaug PiecewiseAffine default nb_rows = nb_cols = 4
TRANSLATE_FRACTION = 0.2  # of the image width (x) and height (y)
FILL = 0

# --- TransUNet ---
TRANSUNET_P = 0.5
TRANSUNET_MAX_DEGREES = 20
TRANSUNET_IMAGE_ORDER = 3
TRANSUNET_LABEL_ORDER = 0


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim not in (2, 3) or image.shape[-2:] != label.shape or label.ndim != 2:
        raise ValueError(
            "augmentation expects an image (H, W) or (C, H, W) and a label (H, W) of the same H, W, "
            f"got image {image.shape} and label {label.shape}"
        )


class TransUNetAugmentation:
    """TransUNet's RandomGenerator augmentation, with torch's generator for the draws."""

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Args: image float (H, W) or (C, H, W), label integer (H, W). Returns float32 image of
        the input's shape and int64 (H, W), every channel turned like the label."""
        _check_pair(image, label)
        image = np.asarray(image, np.float32)
        label = np.asarray(label, np.int64)
        # The image's (H, W) axes: the last two, whether or not a channel axis leads.
        rows, cols = image.ndim - 2, image.ndim - 1
        if float(torch.rand(())) < TRANSUNET_P:
            quarter_turns = int(torch.randint(0, 4, ()))
            axis = int(torch.randint(0, 2, ()))
            image = np.flip(np.rot90(image, quarter_turns, axes=(rows, cols)), axis=rows + axis)
            label = np.flip(np.rot90(label, quarter_turns), axis=axis)
        elif float(torch.rand(())) < TRANSUNET_P:
            angle = int(torch.randint(-TRANSUNET_MAX_DEGREES, TRANSUNET_MAX_DEGREES + 1, ()))
            image = ndimage.rotate(
                image, angle, axes=(cols, rows), order=TRANSUNET_IMAGE_ORDER, reshape=False, mode="constant", cval=FILL
            )
            label = ndimage.rotate(label, angle, order=TRANSUNET_LABEL_ORDER, reshape=False, mode="constant", cval=FILL)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


class NoAugmentation:
    """Identity (returns the image as float32 and the label as int64)."""

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _check_pair(image, label)
        return np.asarray(image, np.float32), np.asarray(label, np.int64)


def noise_gain(stored_size: Sequence[int], img_size: Sequence[int]) -> float:
    """RMS factor by which the protocol's order-3 zoom from ``stored_size`` to ``img_size``
    scales white noise: sqrt of the mean squared row norm of ``A_h`` times that of ``A_w``."""
    gain_squared = 1.0
    for n_in, n_out in zip(stored_size, img_size):
        if n_in != n_out:
            gain_squared *= float((spline_zoom_matrix(n_in, n_out) ** 2).sum(axis=1).mean())
    return gain_squared**0.5


def blur_after_resize(stored_size: Sequence[int], img_size: Sequence[int]) -> tuple[float, int]:
    """(sigma, odd kernel size) of the blur that, on a slice resized from ``stored_size`` to
    ``img_size``, spans what ``BLUR_SIGMA`` spanned on the stored slice (geometric-mean factor)."""
    factor = (img_size[0] / stored_size[0] * img_size[1] / stored_size[1]) ** 0.5
    sigma = BLUR_SIGMA * factor
    return sigma, 2 * int(np.ceil(BLUR_KERNEL_SIGMAS * sigma)) + 1


def _check_sizes(stored_size: Sequence[int] | None, img_size: Sequence[int] | None) -> None:
    if (stored_size is None) != (img_size is None):
        raise ValueError("build_augmentation needs both stored_size and img_size, or neither")
    for name, size in (("stored_size", stored_size), ("img_size", img_size)):
        if size is not None:
            check_size(size, name)


def build_augmentation(
    name: str, stored_size: Sequence[int] | None = None, img_size: Sequence[int] | None = None
) -> Augmentation:
    """The augmentation called ``name``, one of ``AUGMENTATIONS``.

    Args:
        name: the recipe.
        stored_size, img_size: (H, W) of the stored slices and of the network input, when the
            augmentation runs on slices already resized from the one to the other; the blur
            and the noise are then rescaled (see the module docstring). None for both: the
            slices are augmented at their stored size with the reference's values.

    Returns:
        A callable ``(image, label) -> (image, label)``: image float32 (H, W), label int64
        (H, W), same shape out as in.

    Raises:
        ValueError: unknown name, or bad sizes.
    """
    _check_sizes(stored_size, img_size)
    if name == "daeformer":
        from datasets.daeformer_augment import SomeOf, TorchvisionPairAugmentation, daeformer_transforms

        if stored_size is not None and tuple(stored_size) != tuple(img_size):
            sigma, kernel = blur_after_resize(stored_size, img_size)
            noise_std = NOISE_STD * noise_gain(stored_size, img_size)
            transforms = daeformer_transforms(blur_sigma=sigma, blur_kernel=kernel, noise_std=noise_std)
        else:
            transforms = daeformer_transforms()
        return TorchvisionPairAugmentation(SomeOf(transforms, max_ops=MAX_OPS))
    if name == "transunet":
        return TransUNetAugmentation()
    if name == "none":
        return NoAugmentation()
    raise ValueError(f"--augment {name!r} is unknown; choose one of {', '.join(AUGMENTATIONS)}")
