"""What every part of ``datasets`` shares -- readers, converters and synthetic generators alike:
the error type, the keys and attributes of the Synapse file format, the network's intensity
normalisation, the CT window and the names of the split roles.

Nothing here reads or writes files, so any module can import it without pulling in a reader.
"""

from __future__ import annotations

import re

import numpy as np

# nnU-Net's channel suffix of a scan's files: NAME_0000, NAME_0001, ... (four digits, the channel).
CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DataError(ValueError):
    """A data file or list is missing or malformed; the message names the file and the fix."""


# Arrays of a training slice (.npz) and datasets of a test volume (.npy.h5).
IMAGE_KEY = "image"
LABEL_KEY = "label"
SPACING_ATTR = "spacing"  # optional attribute of a test volume: (z, y, x) in mm

# The network sees (x - 0.5) / 0.5, i.e. stored intensities in [0, 1] mapped to [-1, 1].
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5

# The soft-tissue window, in Hounsfield units, that every Synapse paper clips CT to before
# scaling it to [0, 1].
HU_MIN = -125.0
HU_MAX = 275.0
CT_WINDOW = (HU_MIN, HU_MAX)

# Stored intensities must lie in [0, 1]; a little slack for float rounding of the min-max scaling.
RANGE_SLACK = 1e-3
# Beyond these, a copy holds pixel values (0-255) or raw Hounsfield units rather than [0, 1].
PIXEL_MAX = 255.0
HU_LOW = -200.0


def intensity_range_problem(low: float, high: float) -> tuple[str, str] | None:
    """What is wrong with stored intensities spanning [low, high], and the fix; None in [0, 1].

    Shared by the data doctor and the evaluation reader so both explain a wrongly scaled copy
    alike: a network trained on [0, 1] scores raw HU or 0-255 pixels as empty masks.
    """
    if low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK:
        return None
    if low >= -RANGE_SLACK and high <= PIXEL_MAX:
        fix = "it looks like 0-255 pixel values: divide the images by 255 (or re-convert the raw data)"
    elif low < HU_LOW or high > PIXEL_MAX:
        fix = (
            "it looks like raw Hounsfield units: re-convert with python -m datasets.prepare.synapse "
            "(clips to [-125, 275] HU, scales to [0, 1])"
        )
    else:
        fix = "scale each volume to [0, 1] as the converters do (datasets.common.normalise_volume)"
    return f"image values span [{low:g}, {high:g}], the network expects [0, 1]", fix


# Axes of a volume of several channels (D, C, H, W); one channel is stored (D, H, W).
CHANNEL_VOLUME_DIMS = 4


def first_channel(volume: np.ndarray) -> np.ndarray:
    """The first channel of a (D, C, H, W) volume, or a (D, H, W) volume as it is: pictures and
    the saved copy of a scan show one grey channel."""
    return volume[:, 0] if volume.ndim == CHANNEL_VOLUME_DIMS else volume


# Roles of a case in a split.
TRAIN, VAL, TEST = "train", "val", "test"


def normalise_volume(volume: np.ndarray, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Clip to ``clip`` (if given), then min-max scale the volume to [0, 1].

    Args:
        volume: (D, H, W) raw intensities (CT in HU, MRI in scanner units).
        clip: (low, high) window, or None to scale the raw range.

    Returns:
        float32 (D, H, W) in [0, 1]; all zeros for a constant volume. With ``clip=CT_WINDOW`` it
        is the Synapse preprocessing.
    """
    # Scans stored as integers of up to 16 bits (CT in HU is int16) take a float32 path that is
    # bit for bit the float64 one without its 8-byte copies (0.47 -> 0.04 s for 96x512x512
    # int16 voxels in the CT window, medians of 5 fresh processes on the README's AMD EPYC):
    # with whole-number window bounds every value, ``low`` and every difference is a whole
    # number below 2**24, exact in float32, so the only rounding is the division's, and a
    # float32 quotient of exact operands equals the float64 quotient rounded to float32 (double
    # rounding is harmless for division when 53 >= 2 * 24 + 2 bits).
    whole_bounds = clip is None or all(float(b).is_integer() and abs(b) <= 2**20 for b in clip)
    if volume.dtype.kind in "iu" and volume.dtype.itemsize <= 2 and volume.size and whole_bounds:
        # min and max of the raw values, then clipped: clipping is monotone, so this equals the
        # extremes of the clipped volume without a pass over a float copy.
        low, high = float(volume.min()), float(volume.max())
        if clip is not None:
            low, high = (min(max(v, float(clip[0])), float(clip[1])) for v in (low, high))
        if high == low:
            return np.zeros(volume.shape, np.float32)
        values = volume.astype(np.float32)
        if clip is not None:
            np.clip(values, clip[0], clip[1], out=values)
        values -= np.float32(low)
        values /= np.float32(high - low)
        return values
    values = volume.astype(np.float64)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(volume.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
