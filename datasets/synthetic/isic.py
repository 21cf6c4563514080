"""Synthetic dermoscopy images with lesion masks in the ISIC 2018 layout: demo data that needs no
download.

Each image is a 4:3 RGB photograph of skin (a smooth skin tone with shading, a dark vignette
from the dermoscope's round field, fine texture, a few dark hairs) with one pigmented lesion: a
brown blob with an irregular outline (low-order radial harmonics), a darker, mottled centre and
a soft edge. The mask is the lesion outline (255), background 0. Hairs cross lesion and skin
alike and are not part of the mask, as in the real annotations.

Files (the layout ``datasets.isic`` reads)::

    OUT/images/ISIC_NNNNNNN.jpg, OUT/masks/ISIC_NNNNNNN_segmentation.png
    OUT/lists/train.txt, val.txt, test.txt
    OUT/.synthetic-dataset    the marker: only a folder with it is ever overwritten

Images 1..T train, then validation, then test. An image depends only on (seed, its number, size).

CLI::

    python -m datasets.synthetic.isic --out data/isic_phantom [--seed 1234] [--size 128]
        [--train_images 40] [--val_images 6] [--test_images 10] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from datasets.common import TEST, TRAIN, VAL
from datasets.isic import IMAGE_DIR, IMAGE_SUFFIX, LIST_NAMES, MASK_DIR, MASK_SUFFIX
from datasets.lists import LIST_DIR, write_list
from datasets.synthetic.output import prepare_output

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1234
DEFAULT_SIZE = 128  # image width; the height is 3/4 of it
DEFAULT_TRAIN, DEFAULT_VAL, DEFAULT_TEST = 40, 6, 10
MIN_SIZE = 32
ASPECT = 0.75
JPEG_QUALITY = 95
GENERATOR = "datasets.synthetic.isic"  # the name in the output folder's marker
MASK_ON = 255

SKIN_RGB = ((225, 180, 160), (175, 120, 95))  # range of skin tones (light to dark)
LESION_RGB = ((140, 85, 60), (80, 45, 30))  # light to dark brown
CORE_DARKENING = 0.35
LESION_RADIUS = (0.18, 0.32)  # of the image height
OUTLINE_HARMONICS = 4
OUTLINE_AMPLITUDE = 0.12
EDGE_BLUR = 1.2  # px, the lesion's soft border
VIGNETTE = 0.35  # darkening at the rim of the dermoscope's field
VIGNETTE_START = 0.6  # fraction of the field's radius where the darkening begins
NOISE = 4.0  # grey levels
HAIRS = (0, 4)
HAIR_RGB = (40, 30, 25)


def make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic dermoscopy image.

    Returns:
        RGB uint8 (H, W, 3) and mask uint8 (H, W) in {0, 255}, H = 3/4 W.
    """
    height, width = int(round(ASPECT * size)), size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    tone = rng.uniform()
    skin = np.array(SKIN_RGB[0]) * (1 - tone) + np.array(SKIN_RGB[1]) * tone
    image = np.broadcast_to(skin, (height, width, 3)).astype(np.float64)
    shading = 1 + 0.08 * ((x / width - 0.5) * rng.uniform(-1, 1) + (y / height - 0.5) * rng.uniform(-1, 1))
    image = image * shading[..., None]

    centre = (height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6))
    radius = height * rng.uniform(*LESION_RADIUS)
    angle = np.arctan2(y - centre[0], x - centre[1])
    outline = np.ones_like(angle)
    for k in range(2, 2 + OUTLINE_HARMONICS):
        outline += OUTLINE_AMPLITUDE / (k - 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1)
    distance = np.hypot((y - centre[0]) / (radius * rng.uniform(0.8, 1.0)), (x - centre[1]) / radius) / outline
    mask = distance <= 1.0
    darkness = rng.uniform()
    brown = np.array(LESION_RGB[0]) * (1 - darkness) + np.array(LESION_RGB[1]) * darkness
    mottle = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), sigma=max(1.0, size / 40))
    lesion = brown * (1 - CORE_DARKENING * np.clip(1 - distance, 0, 1)[..., None]) * (1 + 0.1 * mottle[..., None])
    weight = ndimage.gaussian_filter(mask.astype(np.float64), EDGE_BLUR)[..., None]
    image = image * (1 - weight) + lesion * weight

    for _ in range(int(rng.integers(HAIRS[0], HAIRS[1] + 1))):
        start, direction = rng.uniform(0, 1, 2) * (height, width), rng.uniform(0, np.pi)
        t = np.linspace(-width, width, 4 * width)
        rows = np.round(start[0] + t * np.sin(direction) + 3 * np.sin(t / width * 6)).astype(int)
        cols = np.round(start[1] + t * np.cos(direction)).astype(int)
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        image[rows[inside], cols[inside]] = HAIR_RGB

    field = np.hypot((y / height - 0.5) * ASPECT, x / width - 0.5) * 2  # 1 at the middle of each side
    image = image * (1 - VIGNETTE * np.clip((field - VIGNETTE_START) / (1 - VIGNETTE_START), 0, 1))[..., None]
    image = image + rng.normal(0, NOISE, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), (mask * MASK_ON).astype(np.uint8)


def image_name(number: int) -> str:
    """``ISIC_NNNNNNN`` of image ``number`` (1-based), as the challenge names them."""
    return f"ISIC_{number:07d}"


def generate_dataset(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    size: int = DEFAULT_SIZE,
    train_images: int = DEFAULT_TRAIN,
    val_images: int = DEFAULT_VAL,
    test_images: int = DEFAULT_TEST,
    overwrite: bool = False,
) -> dict:
    """Write synthetic lesion images, masks and lists (see the module docstring).

    Image ``n`` is drawn from the n-th child of ``np.random.default_rng(seed)``. ``overwrite``
    replaces the data an earlier run of this generator left in ``out_dir``; a folder that is
    not empty and not marked as this generator's is never touched.

    Returns:
        ``out_dir``, ``list_dir`` (Paths) and the names of each split (``train``, ``val``,
        ``test``).

    Raises:
        ValueError: a bad argument (the message names its CLI flag), or an ``out_dir`` that is
            not empty and not this generator's, or holds its data without ``overwrite``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"--size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    counts = {TRAIN: train_images, VAL: val_images, TEST: test_images}
    if min(counts.values()) < 1:
        raise ValueError(
            f"--train_images, --val_images and --test_images must each be at least 1, got "
            f"{train_images}, {val_images}, {test_images}"
        )
    out_dir = prepare_output(out_dir, GENERATOR, (IMAGE_DIR, MASK_DIR, LIST_DIR), overwrite)
    (out_dir / IMAGE_DIR).mkdir()
    (out_dir / MASK_DIR).mkdir(parents=True, exist_ok=True)
    rngs = np.random.default_rng(seed).spawn(sum(counts.values()))
    names: dict[str, list[str]] = {role: [] for role in counts}
    roles = [role for role, count in counts.items() for _ in range(count)]
    for number, (role, rng) in enumerate(zip(roles, rngs), 1):
        rgb, mask = make_image(rng, size)
        name = image_name(number)
        Image.fromarray(rgb).save(out_dir / IMAGE_DIR / (name + IMAGE_SUFFIX), quality=JPEG_QUALITY)
        Image.fromarray(mask).save(out_dir / MASK_DIR / (name + MASK_SUFFIX))
        names[role].append(name)
    list_dir = out_dir / LIST_DIR
    for role, file_name in LIST_NAMES.items():
        write_list(list_dir / file_name, names[role])
    logger.info("wrote %d training, %d validation and %d test images to %s", train_images, val_images, test_images, out_dir)
    return {"out_dir": out_dir, "list_dir": list_dir, **names}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic.isic",
        description="Write synthetic dermoscopy images with lesion masks in the ISIC 2018 layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image width in pixels (height 3/4 of it)")
    parser.add_argument("--train_images", type=int, default=DEFAULT_TRAIN)
    parser.add_argument("--val_images", type=int, default=DEFAULT_VAL)
    parser.add_argument("--test_images", type=int, default=DEFAULT_TEST)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the data an earlier run of this generator left in --out"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate_dataset(args.out, args.seed, args.size, args.train_images, args.val_images, args.test_images, args.overwrite)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
