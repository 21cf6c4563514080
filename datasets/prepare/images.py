"""Convert a folder of your own 2D images with masks into the 2D layout ``datasets.isic`` reads.

Input: ``--images DIR`` of PNG / JPEG / TIFF images (grey, RGB or 16-bit grey) and ``--masks DIR``
with one mask per image, found by name: ``NAME.png`` (any image suffix), ``NAME_segmentation.*``
or ``NAME_mask.*``. A mask is either

- a class-id image: each pixel's value (grey) or palette index (indexed PNG) is its class id; or
- a colour mask, with ``--palette palette.json`` mapping each colour to a class:
  ``{"#000000": 0, "#ff0000": "liver", "[0, 255, 0]": 2}`` -- keys ``#rrggbb`` or ``[r, g, b]``,
  values class ids or class names (``background`` is 0, other names are ids 1.. in the order of
  ``--classes``, or of their first appearance in the palette).

Output (``--out``, a new folder, written to a staging folder beside it and renamed when complete
by ``datasets.prepare.staging``, so a failed conversion leaves nothing behind)::

    OUT/images/NAME.png                  the image as 8-bit grey or RGB, lossless
    OUT/masks/NAME_segmentation.png      class ids 0..K-1 (a 2-class mask as 0 / 255, the
                                         ISIC convention the reader thresholds)
    OUT/lists/train.txt, val.txt, test.txt   70 / 10 / 20 by datasets.lists.split_role on the
                                         position in sorted name order (this repository's rule)
    OUT/dataset.json                     {"kind": "images", "class_names": [...], "channels": 3}

``--dataset OUT/dataset.json`` then gives the scripts the classes and paths. 16-bit and float
images are min-max scaled to 8 bits per image (the reader divides by 255).

Usage::

    python -m datasets.prepare.images --images my/images --masks my/masks --out data/mine \\
        [--palette palette.json] [--classes liver tumour]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.catalog import DATASET_JSON, IMAGE_CHANNELS, IMAGES
from datasets.common import DataError
from datasets.isic import IMAGE_DIR, LIST_NAMES, MASK_DIR, MASK_SUFFIX
from datasets.lists import LIST_DIR, TEST_EVERY
from datasets.prepare.isic_lists import image_split
from datasets.prepare.staging import Stage, staged_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_TAGS = ("", "_segmentation", "_mask")  # NAME.*, NAME_segmentation.*, NAME_mask.*
OUT_SUFFIX = ".png"
BACKGROUND = "background"
BINARY_FOREGROUND = 255  # a 2-class mask is stored as 0 / 255, as ISIC's masks and the reader expect
MAX_IDS = 256  # masks are 8-bit PNGs
EIGHT_BIT = 255
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def read_palette(path: Path, classes: Sequence[str] | None) -> tuple[dict[tuple[int, int, int], int], list[str]]:
    """Colour -> class id, and the class names (1..K) the palette implies.

    Raises:
        DataError: the file is unreadable, a colour or a value is malformed, or a name is not in
            ``classes``.
    """
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"--palette {path} is not a readable JSON file ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict) or not content:
        raise DataError(f'--palette {path} must be a JSON object {{"#rrggbb": class id or name, ...}}')
    names = list(classes or [])
    palette: dict[tuple[int, int, int], int] = {}
    for key, value in content.items():
        colour = _colour(path, key)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(f"--palette {path}: class of {key} must be an id or a name, got {value!r}")
        if isinstance(value, str) and value != BACKGROUND:
            if value not in names:
                if classes:
                    raise DataError(f"--palette {path}: class {value!r} of {key} is not among --classes {list(classes)}")
                names.append(value)
            value = names.index(value) + 1
        palette[colour] = 0 if value == BACKGROUND else int(value)
    return palette, names


def _colour(path: Path, key: str) -> tuple[int, int, int]:
    match = _HEX.match(key.strip())
    if match:
        digits = match.group(1)
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    try:
        rgb = json.loads(key)
    except json.JSONDecodeError:
        rgb = None
    if isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= EIGHT_BIT for v in rgb):
        return rgb[0], rgb[1], rgb[2]
    raise DataError(f"--palette {path}: colour {key!r} is neither #rrggbb nor [r, g, b] with values 0-255")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path} is not a readable image ({' '.join(str(error).split())}); re-export it") from None


def to_eight_bit(path: Path, image: Image.Image) -> Image.Image:
    """The image as 8-bit grey ('L') or RGB; deeper grey is min-max scaled per image."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = np.zeros(values.shape) if high == low else (values - low) / (high - low) * EIGHT_BIT
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    if image.mode in ("LA", "1"):
        return image.convert("L")
    if image.mode in ("RGBA", "P", "CMYK", "YCbCr", "PA"):
        return image.convert("RGB")
    raise DataError(f"{path} has image mode {image.mode}; save it as 8/16-bit grey or RGB")


def mask_ids(path: Path, mask: Image.Image, palette: dict[tuple[int, int, int], int] | None) -> np.ndarray:
    """Class ids (H, W) of a mask: mapped through ``palette`` if given, else its values / indices.

    Raises:
        DataError: a colour not in the palette, or a colour mask without a palette.
    """
    if palette is not None:
        rgb = np.asarray(mask.convert("RGB")).reshape(-1, 3)
        colours, inverse = np.unique(rgb, axis=0, return_inverse=True)
        unknown = [tuple(int(v) for v in c) for c in colours if tuple(int(v) for v in c) not in palette]
        if unknown:
            hex_colours = ", ".join("#{:02x}{:02x}{:02x}".format(*c) for c in unknown[:3])
            raise DataError(f"{path} holds colour(s) {hex_colours} that --palette does not map; add them to the palette")
        lookup = np.array([palette[tuple(int(v) for v in c)] for c in colours], np.int64)
        return lookup[inverse.reshape(-1)].reshape(mask.size[1], mask.size[0])
    if mask.mode == "P" or mask.mode in ("L", "I", "I;16", "1"):
        return np.asarray(mask).astype(np.int64)
    rgb = np.asarray(mask.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].astype(np.int64)
    raise DataError(f"{path} is a colour mask; pass --palette palette.json mapping its colours to classes")


def find_pairs(images: Path, masks: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every image of ``images``, sorted by name.

    Raises:
        DataError: a folder is missing or empty, or an image has no mask.
    """
    for flag, folder in (("--images", images), ("--masks", masks)):
        if not folder.is_dir():
            raise DataError(f"{flag} {folder} is not a folder")
    found = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"--images {images} holds no {' / '.join(IMAGE_SUFFIXES)} files")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    pairs = []
    for path in found:
        mask = next((by_stem[path.stem + tag] for tag in MASK_TAGS if path.stem + tag in by_stem), None)
        if mask is None:
            raise DataError(f"{path} has no mask in --masks {masks} (looked for {path.stem}{{,_segmentation,_mask}}.*)")
        pairs.append((path.stem, path, mask))
    return pairs


def convert(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    palette: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> dict:
    """Convert the pairs of ``images`` / ``masks`` into ``out`` (see the module docstring).

    Returns:
        ``{"class_names": [...], "channels": 1 or 3 (of the inputs), "train" / "val" / "test":
        names}``.

    Raises:
        DataError: bad input, named by file or flag; ``out`` is then left as it was.
    """
    images, masks, out = Path(images), Path(masks), Path(out)
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out} is not empty; choose a new folder")  # before reading any input
    colour_map, names = read_palette(Path(palette), classes) if palette else (None, list(classes or []))
    pairs = find_pairs(images, masks)
    if len(pairs) < TEST_EVERY:
        raise DataError(f"--images {images} holds {len(pairs)} images; the 70/10/20 split needs at least {TEST_EVERY}")
    # A new folder only (replace=False): images have no earlier conversion to replace.
    with staged_output(out, "datasets.prepare.images", replace=False) as stage:
        return _write(pairs, stage, colour_map, names, bool(classes))


def _write(pairs: list[tuple[str, Path, Path]], stage: Stage, palette: dict | None, names: list[str], names_given: bool) -> dict:
    staging = stage.folder
    (staging / IMAGE_DIR).mkdir()
    (staging / MASK_DIR).mkdir()
    labels: dict[str, np.ndarray] = {}
    channels = set()
    for name, image_file, mask_file in pairs:
        image = to_eight_bit(image_file, _open(image_file))
        ids = mask_ids(mask_file, _open(mask_file), palette)
        if ids.shape != (image.size[1], image.size[0]):
            raise DataError(
                f"{mask_file} is {ids.shape[1]}x{ids.shape[0]} but its image {image_file.name} is "
                f"{image.size[0]}x{image.size[1]}; they must be the same size"
            )
        if names_given and ids.max() > len(names):
            raise DataError(f"{mask_file} holds class id {ids.max()}, but --classes names ids 1..{len(names)}")
        if ids.max() >= MAX_IDS:
            raise DataError(f"{mask_file} holds class id {ids.max()}; at most {MAX_IDS - 1} classes fit an 8-bit mask")
        channels.add(1 if image.mode == "L" else 3)
        image.save(staging / IMAGE_DIR / (name + OUT_SUFFIX))
        labels[name] = ids
    num_classes = max(len(names), max(int(ids.max()) for ids in labels.values())) + 1
    names = names + [f"class {c}" for c in range(len(names) + 1, num_classes)]
    for name, ids in labels.items():
        stored = ids * BINARY_FOREGROUND if num_classes == 2 else ids
        Image.fromarray(stored.astype(np.uint8), "L").save(staging / MASK_DIR / (name + MASK_SUFFIX))
    split = image_split(staging)
    for role, file_name in LIST_NAMES.items():
        stage.list_file(stage.out / LIST_DIR / file_name, split[role])
    description = {"kind": IMAGES, "class_names": names, "channels": IMAGE_CHANNELS}
    (staging / DATASET_JSON).write_text(json.dumps(description, indent=2) + "\n")
    return {"class_names": names, "channels": max(channels), **split}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare.images",
        description="Convert your own 2D images (PNG/JPEG/TIFF, grey or RGB) and masks (class ids, or colours with "
        "--palette) into images/, masks/, lists/ and dataset.json for --dataset OUT/dataset.json.",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--masks", required=True, type=Path, help="folder of masks: NAME.*, NAME_segmentation.* or NAME_mask.*")
    parser.add_argument("--out", required=True, type=Path, help="new output folder")
    parser.add_argument("--palette", type=Path, help='JSON {"#rrggbb" or "[r, g, b]": class id or name} for colour masks')
    parser.add_argument("--classes", nargs="+", help="names of classes 1..K (default: from the palette, or class 1..K)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = convert(args.images, args.masks, args.out, args.palette, args.classes)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    print(
        f"{len(result['train'])} train, {len(result['val'])} val, {len(result['test'])} test images of "
        f"{len(result['class_names']) + 1} classes in {args.out}; use --dataset {args.out / DATASET_JSON}"
    )


if __name__ == "__main__":
    main()
