"""The DAE-Former augmentation (``datasets.augment.build_augmentation("daeformer")``) in torchvision:
the published recipe was written with imgaug, which no longer imports on NumPy >= 1.24. Each
operation is a ``transforms.v2`` transform applied to a ``tv_tensors.Image`` / ``tv_tensors.Mask``
pair, so torchvision picks nearest-neighbour for the mask. Where imgaug and torchvision differ:

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
multiplies by alpha. Change ``NOISE_STD`` / ``CONTRAST_CENTRE`` (``datasets.augment``) to depart from
the reference.

The recipe's constants and the callers' entry point live in ``datasets.augment``; this module is
imported only when the recipe is built, because torchvision's import takes about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datasets.augment import (
    BLUR_KERNEL,
    BLUR_SIGMA,
    CONTRAST_CENTRE,
    CONTRAST_RANGE,
    FILL,
    FLIP_P,
    MAX_OPS,
    NOISE_STD,
    ROTATE_DEGREES,
    SCALE_RANGE,
    SHEAR_DEGREES,
    TRANSLATE_FRACTION,
    WARP_GRID_POINTS,
    WARP_SCALE_RANGE,
    _check_pair,
)

IMAGE_INTERPOLATION = v2.InterpolationMode.BILINEAR  # imgaug Affine's default order=1


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
