"""Joint image/label augmentation for 2D slices: DAE-Former's recipe, TransUNet's, or none.

``build_augmentation(name)`` returns a callable ``(image, label) -> (image, label)`` on numpy
arrays: image float32 (H, W) with values in [0, 1], label int64 (H, W) class ids. Geometric
operations move image and label with one random draw (image bilinear or cubic, label nearest
neighbour, fill 0 outside the slice); intensity operations touch the image only. A slice of
several channels, (C, H, W), moves every channel with that one draw, so the channels stay
aligned with each other and with the label (noise is drawn per pixel and channel).

``"daeformer"`` rebuilds the published DAE-Former augmentation, which was written with imgaug
(imgaug no longer imports on NumPy >= 1.24): pick 0 to 4 of ten operations at random and apply
them in random order. Each operation is a torchvision ``transforms.v2`` transform applied to a
``tv_tensors.Image`` / ``tv_tensors.Mask`` pair, so torchvision picks nearest-neighbour for the
mask. Where imgaug and torchvision differ:

- scale: imgaug draws the x and y factors independently, torchvision's affine scales both axes
  alike, so ``RandomScaleXY`` resamples through ``F.elastic`` with the displacement of an
  axis-wise scaling about the centre.
- piecewise-affine warp: imgaug moves the points of a 4x4 grid and warps each triangle affinely;
  ``RandomPiecewiseWarp`` moves the same grid points by the same amount and interpolates the
  displacement bilinearly between them (smooth within each grid cell rather than piecewise
  affine on triangles), then resamples through ``F.elastic``.
- Gaussian blur: a 7x7 kernel (+-3 sigma) with reflected borders.
- translation: torchvision rounds the shift to whole pixels.

Two constants keep what the reference actually did to its float32 [0, 1] images, which differs
from what its arguments suggest: ``AdditiveGaussianNoise(scale=0.005 * 255)`` adds noise of
standard deviation 1.275 (imgaug adds float noise as given, without rescaling to [0, 1]), and
``LinearContrast`` scales around 0 (the centre of imgaug's value range for float dtypes), i.e.
multiplies by alpha. Change ``NOISE_STD`` / ``CONTRAST_CENTRE`` to depart from the reference.

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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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
IMAGE_INTERPOLATION = v2.InterpolationMode.BILINEAR  # imgaug Affine's default order=1
FILL = 0

# --- TransUNet ---
TRANSUNET_P = 0.5
TRANSUNET_MAX_DEGREES = 20
TRANSUNET_IMAGE_ORDER = 3
TRANSUNET_LABEL_ORDER = 0


def _uniform(low: float, high: float, size: Sequence[int] = ()) -> torch.Tensor:
    """Uniform samples in [low, high) from torch's global generator."""
    return low + (high - low) * torch.rand(size, dtype=torch.float64)


def _identity_grid(height: int, width: int) -> torch.Tensor:
    """Pixel centres in grid_sample's normalised coordinates (align_corners=False).

    Returns:
        (1, H, W, 2) float32, last axis (x, y) in (-1, 1); the convention of ``F.elastic``.
    """
    x = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
    y = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


class _DisplacementTransform(v2.Transform):
    """Base for geometric transforms expressed as an ``F.elastic`` displacement field.

    Subclasses return in ``make_params`` a displacement (1, H, W, 2) in normalised coordinates:
    output pixel p is read from the input at ``p + displacement[p]``.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.elastic, inpt, params["displacement"], interpolation=IMAGE_INTERPOLATION, fill=FILL)


class RandomScaleXY(_DisplacementTransform):
    """Scale about the image centre by factors drawn independently for x and y.

    A factor above 1 magnifies (organs get larger); parts moved out of the slice are lost and
    uncovered borders are filled with 0.
    """

    def __init__(self, scale_range: tuple[float, float] = SCALE_RANGE) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale_xy = _uniform(*self.scale_range, size=(2,)).float()
        grid = _identity_grid(height, width)
        # Output p reads input p / s: displacement p * (1/s - 1).
        return {"displacement": grid * (1.0 / scale_xy - 1.0), "scale_xy": scale_xy}


class RandomPiecewiseWarp(_DisplacementTransform):
    """Small smooth local warp: stand-in for imgaug's ``PiecewiseAffine``.

    The points of a ``grid_points x grid_points`` grid spanning the slice (corners included) are
    shifted by normal noise of standard deviation ``scale`` times the image height (y) / width
    (x), ``scale`` drawn uniformly from ``scale_range`` per call; the shift is interpolated
    bilinearly between grid points to every pixel.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = WARP_SCALE_RANGE,
        grid_points: int = WARP_GRID_POINTS,
    ) -> None:
        super().__init__()
        self.scale_range = scale_range
        self.grid_points = grid_points

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = float(_uniform(*self.scale_range))
        # A shift of scale * size pixels is 2 * scale in normalised units (the slice spans 2).
        coarse = 2.0 * scale * torch.randn(1, 2, self.grid_points, self.grid_points)
        dense = nnf.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
        return {"displacement": dense.permute(0, 2, 3, 1).contiguous(), "scale": scale}


class RandomLinearContrast(v2.Transform):
    """``centre + alpha * (image - centre)`` with alpha uniform in ``alpha_range``; image only."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, alpha_range: tuple[float, float] = CONTRAST_RANGE, centre: float = CONTRAST_CENTRE) -> None:
        super().__init__()
        self.alpha_range = alpha_range
        self.centre = centre

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"alpha": float(_uniform(*self.alpha_range))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        output = self.centre + params["alpha"] * (inpt.as_subclass(torch.Tensor) - self.centre)
        return tv_tensors.wrap(output, like=inpt)


class SomeOf(v2.Transform):
    """Apply between 0 and ``max_ops`` of ``transforms`` (count uniform), in random order."""

    def __init__(self, transforms: Sequence[Callable], max_ops: int = MAX_OPS) -> None:
        super().__init__()
        if not 0 <= max_ops <= len(transforms):
            raise ValueError(f"max_ops={max_ops} must lie in [0, {len(transforms)}]")
        self.transforms = list(transforms)
        self.max_ops = max_ops

    def forward(self, *inputs: Any) -> Any:
        count = int(torch.randint(0, self.max_ops + 1, ()))
        outputs = inputs if len(inputs) > 1 else inputs[0]
        for index in torch.randperm(len(self.transforms))[:count].tolist():
            outputs = self.transforms[index](*inputs)
            inputs = outputs if len(inputs) > 1 else (outputs,)
        return outputs


def daeformer_transforms(
    blur_sigma: float = BLUR_SIGMA, blur_kernel: int = BLUR_KERNEL, noise_std: float = NOISE_STD
) -> list[v2.Transform]:
    """The ten operations of the DAE-Former recipe, in the reference's listing order.

    The defaults are the reference's, for slices augmented at their stored size; see
    ``build_augmentation`` for the values used after a resize.
    """
    return [
        v2.RandomVerticalFlip(p=FLIP_P),
        v2.RandomHorizontalFlip(p=FLIP_P),
        v2.GaussianNoise(mean=0.0, sigma=noise_std, clip=False),
        v2.GaussianBlur(kernel_size=blur_kernel, sigma=blur_sigma),
        RandomLinearContrast(),
        RandomScaleXY(),
        v2.RandomAffine(degrees=ROTATE_DEGREES, interpolation=IMAGE_INTERPOLATION, fill=FILL),
        v2.RandomAffine(
            degrees=0.0,
            shear=(-SHEAR_DEGREES, SHEAR_DEGREES),
            interpolation=IMAGE_INTERPOLATION,
            fill=FILL,
        ),
        RandomPiecewiseWarp(),
        v2.RandomAffine(
            degrees=0.0,
            translate=(TRANSLATE_FRACTION, TRANSLATE_FRACTION),
            interpolation=IMAGE_INTERPOLATION,
            fill=FILL,
        ),
    ]


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim not in (2, 3) or image.shape[-2:] != label.shape or label.ndim != 2:
        raise ValueError(
            "augmentation expects an image (H, W) or (C, H, W) and a label (H, W) of the same H, W, "
            f"got image {image.shape} and label {label.shape}"
        )


class TorchvisionPairAugmentation:
    """Numpy adapter around a v2 transform applied to a ``tv_tensors`` (Image, Mask) pair."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Args: image float (H, W) or (C, H, W), label integer (H, W). Returns float32 image
        of the input's shape and int64 (H, W); every channel moves with one geometric draw
        (a v2 transform draws its parameters once per call, for the whole Image)."""
        _check_pair(image, label)
        tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))
        image_t = tv_tensors.Image(tensor if image.ndim == 3 else tensor[None])
        label_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label, np.int64)))
        image_t, label_t = self.transform(image_t, label_t)
        return (image_t if image.ndim == 3 else image_t[0]).numpy(), label_t.numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


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
