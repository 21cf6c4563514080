"""Synthetic abdominal CT in the Synapse layout: demo data that needs no download.

Each case is a cranio-caudal stack of axial slices through a digital abdomen, shown in the
radiological convention (the patient's right on the image's left, anterior at the top): a body
outline with subcutaneous fat and a muscle wall, a vertebra with its spinal canal, ribs and lung
bases in the upper slices, bowel loops, and the eight Synapse organs where anatomy puts them.
Every organ is a smooth 3D shape: an ellipsoid-like z-profile times an in-plane outline with
random low-order deformations, so organs grow and shrink along z and appear only in some slices.
Intensities are contrast-enhanced (portal venous) CT numbers in HU, with smooth texture, organ
mottling, partial-volume blur and noise, then windowed to [-125, 275] HU and mapped to [0, 1]
exactly as the common Synapse copies were.

Files written by ``generate_dataset`` (and the CLI)::

    OUT/train_npz/caseXXXX_sliceNNN.npz   image, label: float32 (S, S); one slice per file
    OUT/test_vol_h5/caseXXXX.npy.h5       image, label: float32 (D, S, S); attribute spacing
    OUT/lists/train.txt, OUT/lists/test_vol.txt
    OUT/.synthetic-dataset                the marker: only a folder with it is ever overwritten

Training cases are case0001 ... caseNNNN, test cases follow on. The content of a case depends
only on (seed, its case number, size, min/max slices): asking for more cases adds cases and
changes none.

CLI::

    python -m datasets.synthetic.synapse --out data/phantom [--seed 1234] [--size 128]
        [--train_cases 10] [--test_cases 4] [--min_slices 40] [--max_slices 64] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from datasets.common import CT_WINDOW
from datasets.lists import (
    LIST_DIR,
    TEST_DIR,
    TRAIN_DIR,
    write_synapse_lists,
)
from datasets.synthetic.output import prepare_output
from datasets.writing import write_training_slices, write_volume

logger = logging.getLogger(__name__)

# Synapse class ids.
BACKGROUND = 0
AORTA = 1
GALLBLADDER = 2
LEFT_KIDNEY = 3
RIGHT_KIDNEY = 4
LIVER = 5
PANCREAS = 6
SPLEEN = 7
STOMACH = 8
NUM_CLASSES = 9

# CLI defaults: small enough that a CPU demo trains in minutes.
DEFAULT_SEED = 1234
DEFAULT_SIZE = 128
DEFAULT_TRAIN_CASES = 10
DEFAULT_TEST_CASES = 4
DEFAULT_MIN_SLICES = 40
DEFAULT_MAX_SLICES = 64

MIN_SIZE = 32  # below this the aorta (2.5 cm) is under a pixel wide
MAX_CASES = 9999  # case ids have 4 digits
MAX_SLICES = 1000  # slice indices have 3 digits
GENERATOR = "datasets.synthetic.synapse"  # the name in the output folder's marker

# Geometry. Normalised in-plane coordinates run over [-1, 1] across the field of view, x to the
# image's right (patient's left), y down the image (anterior -> posterior); z runs over [0, 1]
# from the first (cranial) to the last (caudal) slice.
FOV_MM = 409.6  # 512 px at 0.8 mm, a typical abdominal reconstruction
COVERAGE_MM = 200.0  # liver dome to below the kidneys

NOISE_HU = 12.0  # quantum noise of a routine abdominal scan
SMOOTH_TEXTURE_HU = 4.0  # beam-hardening / bias-like low-frequency drift
PARTIAL_VOLUME_SIGMA_PX = 0.6
SMOOTH_TEXTURE_SCALE_MM = 60.0
MOTTLE_SCALE_MM = 5.0
MOTTLE_MIN_PX = 1.5  # below this the mottle would alias into plain noise
TABLE_SKIN = 0.01  # half thickness of the table's shells (normalised units)
TABLE_DEPTH = 0.05
VERTEBRA_PERIOD_MM = 32.0  # vertebra + disc height
DISC_MM = 7.0


@dataclass(frozen=True)
class Tissue:
    """CT appearance of one tissue: base HU, case-to-case spread, in-organ mottle amplitude."""

    hu: float
    spread: float
    mottle: float


# Tissue ids index TISSUES; they are finer than class ids (cortex vs medulla, stomach content).
AIR, FAT, MUSCLE, BONE_CORTEX, BONE_MARROW, DISC, CSF, LUNG = range(8)
LIVER_T, LIVER_VESSEL, SPLEEN_T, KIDNEY_CORTEX, KIDNEY_MEDULLA, AORTA_T, IVC = range(8, 15)
PANCREAS_T, GALLBLADDER_T, STOMACH_WALL, STOMACH_FLUID, MIXED_CONTENT = range(15, 20)
BOWEL_WALL, BOWEL_FLUID, VESSEL, TABLE = range(20, 24)
TISSUES: tuple[Tissue, ...] = (
    Tissue(-1000.0, 0.0, 0.0),  # air
    Tissue(-100.0, 8.0, 6.0),  # fat
    Tissue(50.0, 5.0, 5.0),  # muscle
    Tissue(700.0, 60.0, 0.0),  # cortical bone
    Tissue(230.0, 40.0, 35.0),  # cancellous bone
    Tissue(85.0, 5.0, 5.0),  # intervertebral disc
    Tissue(10.0, 3.0, 2.0),  # cerebrospinal fluid
    Tissue(-850.0, 30.0, 40.0),  # lung
    Tissue(100.0, 10.0, 4.0),  # liver
    Tissue(165.0, 15.0, 3.0),  # portal / hepatic veins
    Tissue(110.0, 10.0, 5.0),  # spleen
    Tissue(180.0, 15.0, 5.0),  # renal cortex
    Tissue(130.0, 15.0, 6.0),  # renal medulla
    Tissue(200.0, 25.0, 2.0),  # aorta
    Tissue(140.0, 15.0, 3.0),  # inferior vena cava
    Tissue(90.0, 8.0, 10.0),  # pancreas (lobulated: more mottle)
    Tissue(10.0, 5.0, 2.0),  # gallbladder bile
    Tissue(80.0, 8.0, 4.0),  # stomach wall
    Tissue(15.0, 5.0, 3.0),  # stomach fluid
    Tissue(35.0, 10.0, 35.0),  # food or faeces: a mottled mixture
    Tissue(45.0, 5.0, 6.0),  # bowel wall
    Tissue(20.0, 5.0, 5.0),  # bowel fluid
    Tissue(150.0, 20.0, 5.0),  # small mesenteric and retroperitoneal vessels
    Tissue(150.0, 30.0, 0.0),  # patient table shell
)

STOMACH_CONTENTS = ("air", "fluid", "food", "air_fluid")
ORGAN_SIZE_SPREAD = 0.15  # +-15 % organ size, case to case


# ----------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class Blob:
    """A smooth 3D blob: a deformed ellipse whose size follows an ellipsoid-like z-profile.

    Attributes:
        cx, cy: centre (normalised units) at the middle of the z-range (at z = 0.5 for a blob
            without one); the centre moves by (vx, vy) per unit z.
        a, b: semi-axes along the blob's own axes at the widest slice (normalised units).
        angle: rotation of the blob's axes (radians, from +x towards +y).
        z0, z1: z-range (fractions of the volume, may reach beyond [0, 1]); infinite: every slice.
        peak: where in (0, 1) of [z0, z1] the blob is widest.
        power: profile exponent (< 1: fuller middle, blunter ends).
        amps, phases, rates: outline harmonics k = 2, 3, ...: relative amplitude, phase (rad)
            and phase change per unit z (rad), so the outline deforms smoothly along z.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    z0: float = -np.inf
    z1: float = np.inf
    peak: float = 0.5
    power: float = 0.5
    vx: float = 0.0
    vy: float = 0.0
    amps: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()
    rates: tuple[float, ...] = ()

    @property
    def z_mid(self) -> float:
        return 0.5 * (self.z0 + self.z1) if np.isfinite(self.z0) else 0.5

    def profile(self, z: np.ndarray) -> np.ndarray:
        """Size factor in [0, 1] at slice positions ``z`` (D,); 0 outside [z0, z1]."""
        if not np.isfinite(self.z0):
            return np.ones_like(z)
        t = (z - self.z0) / (self.z1 - self.z0)
        u = np.where(t < self.peak, (t - self.peak) / self.peak, (t - self.peak) / (1 - self.peak))
        return np.clip(1.0 - u * u, 0.0, None) ** self.power

    def reach(self) -> float:
        """Largest distance of the outline from the centre (normalised units)."""
        return max(self.a, self.b) * (1.0 + float(np.sum(np.abs(self.amps))))


class Grid:
    """Pixel-centre coordinates of a (D, S, S) volume in normalised units."""

    def __init__(self, size: int, num_slices: int) -> None:
        self.size = size
        self.num_slices = num_slices
        self.xy = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
        self.z = ((np.arange(num_slices) + 0.5) / num_slices).astype(np.float32)

    def pixel_range(self, lo: float, hi: float) -> slice:
        """Pixel indices whose centres may fall in [lo, hi] (normalised units)."""
        start = int(np.floor((lo + 1.0) / 2.0 * self.size - 0.5))
        stop = int(np.ceil((hi + 1.0) / 2.0 * self.size - 0.5)) + 1
        return slice(min(max(start, 0), self.size), min(max(stop, 0), self.size))


Region = tuple[slice, slice, slice]
ABSENT = 1e-3  # profile values below this count as "organ not in this slice"


def blob_field(grid: Grid, blob: Blob) -> tuple[Region, np.ndarray, np.ndarray] | None:
    """Normalised radius of ``blob`` over its bounding box: < 1 inside, 1 on the outline.

    Returns:
        (region, q, scale): the (z, y, x) slices of the bounding box, q (float32, box shape;
        inf where the blob is absent) and the profile per slice of the box (float32, (d,));
        None when the blob misses the volume.
    """
    scale = blob.profile(grid.z)
    present = np.nonzero(scale > ABSENT)[0]
    if present.size == 0:
        return None
    zs = slice(int(present[0]), int(present[-1]) + 1)
    dz = grid.z[zs] - blob.z_mid
    reach = blob.reach()
    centre_x = blob.cx + blob.vx * dz
    centre_y = blob.cy + blob.vy * dz
    ys = grid.pixel_range(float(centre_y.min()) - reach, float(centre_y.max()) + reach)
    xs = grid.pixel_range(float(centre_x.min()) - reach, float(centre_x.max()) + reach)
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return None
    x = grid.xy[xs][None, None, :] - centre_x[:, None, None]
    y = grid.xy[ys][None, :, None] - centre_y[:, None, None]
    cos, sin = np.float32(np.cos(blob.angle)), np.float32(np.sin(blob.angle))
    u = (x * cos + y * sin) / np.float32(blob.a)
    v = (y * cos - x * sin) / np.float32(blob.b)
    rho = np.sqrt(u * u + v * v)
    radius = np.ones_like(rho)
    if blob.amps:
        theta = np.arctan2(v, u)
        for k, (amp, phase, rate) in enumerate(zip(blob.amps, blob.phases, blob.rates), start=2):
            radius += np.float32(amp) * np.cos(k * theta + (phase + rate * dz)[:, None, None])
    s = scale[zs].astype(np.float32)
    q = rho / (np.maximum(s, ABSENT)[:, None, None] * radius)
    q[s <= ABSENT] = np.inf
    return (zs, ys, xs), q, s


class Canvas:
    """Tissue and label volumes painted in anatomical order: later paint wins."""

    def __init__(self, grid: Grid) -> None:
        shape = (grid.num_slices, grid.size, grid.size)
        self.grid = grid
        self.tissue = np.full(shape, AIR, dtype=np.uint8)
        self.label = np.zeros(shape, dtype=np.uint8)
        self.cavity = np.zeros(shape, dtype=bool)

    def paint(
        self,
        region: Region,
        mask: np.ndarray,
        tissue: int,
        label: int = BACKGROUND,
        in_cavity: bool = False,
        only_label: int | None = None,
        only_tissue: int | None = None,
    ) -> None:
        """Set ``tissue`` and ``label`` where ``mask`` (region-shaped, bool) holds.

        in_cavity keeps organs inside the abdominal wall; only_label / only_tissue paint only
        over voxels already of that class / tissue (vessels inside the liver, gas in food).
        """
        if in_cavity:
            mask = mask & self.cavity[region]
        if only_label is not None:
            mask = mask & (self.label[region] == only_label)
        if only_tissue is not None:
            mask = mask & (self.tissue[region] == only_tissue)
        self.tissue[region][mask] = tissue
        self.label[region][mask] = label

    def paint_blob(
        self, blob: Blob, tissue: int, label: int = BACKGROUND, **where: bool | int | None
    ) -> tuple[Region, np.ndarray, np.ndarray] | None:
        """Paint ``blob`` and return its field (as ``blob_field``) for painting inner layers."""
        field = blob_field(self.grid, blob)
        if field is not None:
            region, q, _ = field
            self.paint(region, q < 1.0, tissue, label, **where)
        return field


# ----------------------------------------------------------------------------------------------
# Random helpers


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _harmonics(rng: np.random.Generator, amplitude: float, count: int = 3) -> dict:
    """Random smooth outline deformation: harmonics k = 2 .. count + 1, weaker for higher k."""
    return {
        "amps": tuple(float(amplitude * rng.uniform(0.3, 1.0) * 2.0 / k) for k in range(2, count + 2)),
        "phases": tuple(float(p) for p in rng.uniform(0.0, 2.0 * np.pi, count)),
        "rates": tuple(float(r) for r in rng.uniform(-4.0, 4.0, count)),
    }


def _size(rng: np.random.Generator) -> float:
    return _uniform(rng, 1.0 - ORGAN_SIZE_SPREAD, 1.0 + ORGAN_SIZE_SPREAD)


def _interpolation_weights(n_out: int, n_in: int) -> np.ndarray:
    """Gaussian-kernel weights (n_out, n_in) from n_in grid nodes to n_out pixel centres.

    Rows have unit sum of squares, so white noise on the nodes interpolates to unit variance.
    """
    out = (np.arange(n_out) + 0.5) / n_out
    node = (np.arange(n_in) + 0.5) / n_in
    weights = np.exp(-0.5 * ((out[:, None] - node[None, :]) * n_in) ** 2)
    weights = (weights / np.sqrt((weights * weights).sum(axis=1, keepdims=True))).astype(np.float32)
    # The Gaussian's tails round to subnormal float32 numbers, which some CPUs multiply in
    # microcode (far slower); they are below the rounding of every sum they enter, so 0 instead.
    weights[weights < np.finfo(np.float32).tiny] = 0
    return weights


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], nodes: tuple[int, int, int]) -> np.ndarray:
    """Smooth random field, float32 ``shape``, zero mean and unit variance.

    White noise on a coarse grid of ``nodes`` is interpolated axis by axis as matrix products:
    far cheaper than filtering a full-size volume.
    """
    (depth, height, width), (nz, ny, nx) = shape, nodes
    field = rng.standard_normal(nodes, dtype=np.float32)
    field = _interpolation_weights(depth, nz) @ field.reshape(nz, ny * nx)
    # y on the small (depth, ny, nx) grid, then x as one large product that lands in
    # (depth, height, width) order: a few big BLAS calls, no full-size transposes.
    field = field.reshape(depth, ny, nx).transpose(1, 0, 2).reshape(ny, depth * nx)
    field = (_interpolation_weights(height, ny) @ field).reshape(height, depth, nx)
    field = np.ascontiguousarray(field.transpose(1, 0, 2)).reshape(depth * height, nx)
    return (field @ _interpolation_weights(width, nx).T).reshape(shape)


# ----------------------------------------------------------------------------------------------
# Anatomy. Positions are given relative to the body centre for a body of scale 1.


@dataclass(frozen=True)
class Body:
    """Case frame: body centre and scale (normalised units), and the outline's semi-axes."""

    cx: float
    cy: float
    scale: float
    half_w: float
    half_h: float
    fat: float

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Absolute position of a point given relative to the body centre at scale 1."""
        return self.cx + x * self.scale, self.cy + y * self.scale


def _paint_body(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Body outline, subcutaneous fat, abdominal wall muscle, and the abdominal cavity mask."""
    grid = canvas.grid
    wall = 0.035 * body.scale
    deform = _harmonics(rng, 0.025, 4)
    widen = 1.0 + _uniform(rng, 0.0, 0.08) * (grid.z - 0.5)  # the abdomen widens caudally
    x = grid.xy[None, :] - body.cx
    y = grid.xy[:, None] - body.cy
    u, v = x / body.half_w, y / body.half_h
    # The back is flatter than the belly: a squarer superellipse posteriorly.
    exponent = np.where(v > 0, 2.8, 2.0).astype(np.float32)
    rho = (np.abs(u) ** exponent + np.abs(v) ** exponent) ** (1.0 / exponent)
    theta = np.arctan2(v, u)
    radius = np.ones_like(rho)
    for k, (amp, phase) in enumerate(zip(deform["amps"], deform["phases"]), start=2):
        radius += np.float32(amp) * np.cos(k * theta + phase)
    q0 = rho / radius
    r0 = np.sqrt(x * x + y * y)
    cos_t = np.abs(np.cos(theta))
    fat_depth = body.fat * (0.7 + 0.6 * np.clip(-np.sin(theta), 0.0, 1.0) + 0.3 * cos_t)
    wall_depth = fat_depth + wall * (1.0 + 0.6 * cos_t)
    # Widening the outline by w divides q0 by w; a pixel lies deeper than d below the skin
    # (along the ray from the centre) when w > q0 * (1 + d / r0). So every slice is a
    # threshold of three 2D maps.
    r0 = np.maximum(r0, 1e-6)
    below_fat = q0 * (1.0 + fat_depth / r0)
    below_wall = q0 * (1.0 + wall_depth / r0)
    w = widen[:, None, None]
    inside = q0 < w
    linea_alba = (np.abs(x) < 0.012 * body.scale) & (y < 0)  # the rectus muscles part here
    muscle = (below_fat < w) & (below_wall >= w) & ~linea_alba
    canvas.cavity[...] = below_wall < w
    canvas.tissue[...] = np.where(muscle, MUSCLE, np.where(inside, FAT, AIR))
    # The patient table: a curved shell under the back, a few mm of foam between two skins.
    x_all = grid.xy[None, :]
    table_top = body.cy + body.half_h * float(widen.max()) + 0.01 - 0.06 * x_all * x_all
    gap = grid.xy[:, None] - table_top
    skins = (np.abs(gap) < TABLE_SKIN) | (np.abs(gap - TABLE_DEPTH) < TABLE_SKIN)
    table = (skins & (np.abs(x_all) < 0.9))[None] & ~inside
    canvas.tissue[table] = TABLE


def _paint_spine(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Back and psoas muscles, vertebral body or disc, spinal canal and posterior arch."""
    s = body.scale
    vx, vy = body.at(0.0, 0.26)
    for side in (-1.0, 1.0):
        canvas.paint_blob(
            Blob(*body.at(side * 0.15, 0.44), 0.12 * s, 0.08 * s, angle=side * 0.25, **_harmonics(rng, 0.04)), MUSCLE
        )
        # Psoas: appears mid-abdomen and thickens caudally beside the vertebra.
        canvas.paint_blob(
            Blob(
                *body.at(side * 0.15, 0.25),
                0.065 * s,
                0.055 * s,
                angle=side * 0.6,
                z0=_uniform(rng, 0.35, 0.5),
                z1=1.8,
                peak=0.5,
                vx=side * 0.05,
            ),
            MUSCLE,
        )
    # Vertebral bodies alternate with intervertebral discs along z.
    z_mm = canvas.grid.z * COVERAGE_MM + _uniform(rng, 0.0, VERTEBRA_PERIOD_MM)
    disc = ((z_mm % VERTEBRA_PERIOD_MM) < DISC_MM)[:, None, None]
    region, q, _ = blob_field(canvas.grid, Blob(vx, vy, 0.10 * s, 0.085 * s))
    canvas.paint(region, (q < 1.0) & disc, DISC)
    canvas.paint(region, (q < 1.0) & ~disc, BONE_CORTEX)
    canvas.paint(region, (q < 0.85) & ~disc, BONE_MARROW)
    canal_x, canal_y = body.at(0.0, 0.415)
    canvas.paint_blob(Blob(canal_x, canal_y, 0.075 * s, 0.07 * s), BONE_CORTEX)
    for side in (-1.0, 1.0):
        canvas.paint_blob(Blob(canal_x + side * 0.1 * s, canal_y - 0.01 * s, 0.065 * s, 0.02 * s, angle=side * 0.3), BONE_CORTEX)
    canvas.paint_blob(Blob(canal_x, canal_y + 0.08 * s, 0.02 * s, 0.05 * s), BONE_CORTEX)
    canvas.paint_blob(Blob(canal_x, canal_y, 0.042 * s, 0.04 * s), CSF)


def _paint_ribs(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Rib cross-sections in the body wall of the upper slices (the lower rib cage)."""
    s = body.scale
    for angle_deg in (-150, -125, 130, 155, 180, -30, -55, 50, 25, 0):
        angle = np.deg2rad(angle_deg + _uniform(rng, -6.0, 6.0))
        # Just inside the wall's muscle layer, along the ray at this angle.
        depth = 1.0 - (body.fat * 1.1 + 0.05 * s) / np.hypot(body.half_w * np.cos(angle), body.half_h * np.sin(angle))
        x = body.cx + depth * body.half_w * np.cos(angle)
        y = body.cy + depth * body.half_h * np.sin(angle)
        # The costal margin: ribs end higher anteriorly than laterally and posteriorly.
        z_end = _uniform(rng, 0.3, 0.5) * (0.6 if np.sin(angle) < -0.3 else 1.0)
        period = _uniform(rng, 0.1, 0.16)
        z = _uniform(rng, -period, 0.0)
        while z < z_end:
            rib = Blob(x, y, 0.024 * s, 0.014 * s, angle=angle + np.pi / 2, z0=z, z1=z + 0.6 * period, power=0.3)
            field = canvas.paint_blob(rib, BONE_CORTEX)
            if field is not None:
                region, q, _ = field
                canvas.paint(region, q < 0.5, BONE_MARROW)
            z += period


def _paint_bowel(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Colon, duodenum and small-bowel loops (background class), each with its own content."""
    s = body.scale
    loops = [
        (-0.48, 0.08, 0.075, 0.07, 0.50, 1.6),  # ascending colon
        (0.50, 0.12, 0.06, 0.06, 0.40, 1.6),  # descending colon
        (0.0, -0.33, 0.30, 0.065, 0.45, 0.80),  # transverse colon
        (-0.25, 0.0, 0.05, 0.05, 0.45, 0.75),  # duodenum, beside the pancreatic head
    ]
    for _ in range(int(rng.integers(15, 25))):  # small-bowel loops, anterior and caudal
        loops.append(
            (
                _uniform(rng, -0.45, 0.45),
                _uniform(rng, -0.4, 0.15),
                _uniform(rng, 0.04, 0.08),
                _uniform(rng, 0.04, 0.08),
                _uniform(rng, 0.45, 1.0),
                0.0,
            )
        )
    for x, y, a, b, z0, z1 in loops:
        if z1 <= z0:  # a small-bowel loop: centred at z0, short
            half = _uniform(rng, 0.05, 0.12)
            z0, z1 = z0 - half, z0 + half
        blob = Blob(
            *body.at(x, y),
            a * s * _size(rng),
            b * s * _size(rng),
            angle=_uniform(rng, -0.5, 0.5),
            z0=z0 + _uniform(rng, -0.05, 0.05),
            z1=z1,
            vx=_uniform(rng, -0.1, 0.1),
            vy=_uniform(rng, -0.1, 0.1),
            **_harmonics(rng, 0.08),
        )
        content = (AIR, BOWEL_FLUID, MIXED_CONTENT)[int(rng.integers(0, 3))]
        field = canvas.paint_blob(blob, BOWEL_WALL, in_cavity=True)
        if field is not None:
            region, q, _ = field
            canvas.paint(region, q < 0.72, content, in_cavity=True)
    # Mesenteric vessels: small enhancing dots scattered through the fat.
    for _ in range(int(rng.integers(25, 45))):
        r = _uniform(rng, 0.007, 0.014) * s
        z = _uniform(rng, 0.2, 1.0)
        half = _uniform(rng, 0.05, 0.2)
        canvas.paint_blob(
            Blob(
                *body.at(_uniform(rng, -0.45, 0.45), _uniform(rng, -0.4, 0.15)),
                r,
                r,
                z0=z - half,
                z1=z + half,
                power=0.2,
                vx=_uniform(rng, -0.3, 0.3),
                vy=_uniform(rng, -0.3, 0.3),
            ),
            VESSEL,
            only_tissue=FAT,
            in_cavity=True,
        )


def _paint_liver(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Liver: a large right lobe and a left lobe reaching across the midline anteriorly."""
    s = body.scale
    size = _size(rng)
    top = _uniform(rng, -0.25, -0.1)
    bottom = _uniform(rng, 0.55, 0.7)
    right = Blob(
        *body.at(-0.35, 0.0),
        0.34 * s * size,
        0.42 * s * size,
        angle=0.2,
        z0=top,
        z1=bottom,
        peak=0.45,
        power=0.4,
        vx=-0.05,
        vy=0.08,
        **_harmonics(rng, 0.06),
    )
    left = Blob(
        *body.at(-0.02, -0.27),
        0.30 * s * size,
        0.13 * s * size,
        angle=-0.25,
        z0=top,
        z1=_uniform(rng, 0.3, 0.42),
        peak=0.4,
        power=0.5,
        vx=-0.2,
        **_harmonics(rng, 0.08),
    )
    canvas.paint_blob(right, LIVER_T, LIVER, in_cavity=True)
    canvas.paint_blob(left, LIVER_T, LIVER, in_cavity=True)
    # Portal and hepatic veins: enhancing tubes that belong to the liver class.
    for _ in range(int(rng.integers(4, 8))):
        x, y = body.at(_uniform(rng, -0.55, -0.1), _uniform(rng, -0.3, 0.3))
        r = _uniform(rng, 0.012, 0.028) * s
        z = _uniform(rng, top, bottom)
        canvas.paint_blob(
            Blob(
                x,
                y,
                r,
                r * _uniform(rng, 0.8, 1.6),
                angle=_uniform(rng, 0, 3),
                z0=z - 0.25,
                z1=z + 0.25,
                power=0.2,
                vx=_uniform(rng, -0.3, 0.3),
                vy=_uniform(rng, -0.3, 0.3),
            ),
            LIVER_VESSEL,
            LIVER,
            only_label=LIVER,
        )


def _paint_spleen(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Spleen: an elongated ovoid along the left posterolateral wall, in the upper slices."""
    s = body.scale * _size(rng)
    blob = Blob(
        *body.at(0.48, 0.2),
        0.10 * s,
        0.21 * s,
        angle=-0.7 + _uniform(rng, -0.2, 0.2),
        z0=_uniform(rng, -0.05, 0.08),
        z1=_uniform(rng, 0.38, 0.5),
        peak=0.45,
        vx=-0.05,
        vy=0.1,
        **_harmonics(rng, 0.08),
    )
    canvas.paint_blob(blob, SPLEEN_T, SPLEEN, in_cavity=True)


def _paint_lungs(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Lung bases in the posterior costophrenic recesses of the first slices."""
    s = body.scale
    for side in (-1.0, 1.0):
        canvas.paint_blob(
            Blob(
                *body.at(side * 0.42, 0.3),
                0.22 * s,
                0.16 * s,
                angle=side * 0.4,
                z0=-0.5,
                z1=_uniform(rng, 0.08, 0.2),
                peak=0.5,
                power=0.6,
                **_harmonics(rng, 0.06),
            ),
            LUNG,
            in_cavity=True,
        )


def _paint_stomach(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Stomach: enhancing wall around air, fluid, food, or air floating on fluid."""
    s = body.scale * _size(rng)
    blob = Blob(
        *body.at(0.30, -0.14),
        0.22 * s,
        0.15 * s,
        angle=0.5 + _uniform(rng, -0.2, 0.2),
        z0=_uniform(rng, -0.1, 0.02),
        z1=_uniform(rng, 0.45, 0.58),
        peak=0.35,
        power=0.6,
        vx=-0.4,
        vy=-0.1,
        **_harmonics(rng, 0.1),
    )
    field = canvas.paint_blob(blob, STOMACH_WALL, STOMACH, in_cavity=True)
    if field is None:
        return
    region, q, scale = field
    wall = 0.022 * body.scale / (np.sqrt(blob.a * blob.b) * np.maximum(scale, ABSENT))
    lumen = q < (1.0 - wall)[:, None, None]
    content = STOMACH_CONTENTS[int(rng.integers(0, len(STOMACH_CONTENTS)))]
    if content == "air":
        canvas.paint(region, lumen, AIR, STOMACH, in_cavity=True)
    elif content == "fluid":
        canvas.paint(region, lumen, STOMACH_FLUID, STOMACH, in_cavity=True)
    elif content == "food":
        canvas.paint(region, lumen, MIXED_CONTENT, STOMACH, in_cavity=True)
        for _ in range(int(rng.integers(5, 15))):  # gas bubbles trapped in the food
            x = blob.cx + _uniform(rng, -1.0, 1.0) * blob.a
            y = blob.cy + _uniform(rng, -1.0, 1.0) * blob.b
            z = _uniform(rng, blob.z0, blob.z1)
            r = _uniform(rng, 0.01, 0.025) * body.scale
            canvas.paint_blob(Blob(x, y, r, r, z0=z - 0.04, z1=z + 0.04, vx=blob.vx), AIR, STOMACH, only_tissue=MIXED_CONTENT)
    else:
        # Patients lie supine: gas rises anteriorly (up in the image) above a flat level.
        y = canvas.grid.xy[region[1]][None, :, None]
        level = blob.cy + _uniform(rng, -0.6, 0.2) * blob.b
        canvas.paint(region, lumen & (y < level), AIR, STOMACH, in_cavity=True)
        canvas.paint(region, lumen & (y >= level), STOMACH_FLUID, STOMACH, in_cavity=True)


def _paint_kidneys(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Bean-shaped kidneys: bright cortex, darker medulla, fat in the anteromedial hilum."""
    s = body.scale
    for label, side, drop in ((RIGHT_KIDNEY, -1.0, 0.06), (LEFT_KIDNEY, 1.0, 0.0)):
        size = _size(rng)
        # The long axis points from the anteromedial hilum to the posterolateral border.
        angle = side * (0.6 + _uniform(rng, -0.15, 0.15))
        z0 = _uniform(rng, 0.34, 0.44) + drop  # the liver pushes the right kidney down
        blob = Blob(
            *body.at(side * 0.29, 0.27),
            0.12 * s * size,
            0.085 * s * size,
            angle=angle,
            z0=z0,
            z1=z0 + _uniform(rng, 0.45, 0.55),
            peak=0.5,
            power=0.5,
            vx=side * 0.06,
            vy=0.04,
            **_harmonics(rng, 0.04),
        )
        field = canvas.paint_blob(blob, KIDNEY_CORTEX, label, in_cavity=True)
        if field is None:
            continue
        region, q, _ = field
        canvas.paint(region, q < 0.7, KIDNEY_MEDULLA, label, in_cavity=True)
        medial = -side * 0.95 * blob.a
        length = blob.z1 - blob.z0
        hilum = Blob(
            blob.cx + medial * np.cos(angle),
            blob.cy + medial * np.sin(angle),
            0.45 * blob.a,
            0.35 * blob.b,
            angle=angle,
            z0=blob.z0 + 0.25 * length,
            z1=blob.z0 + 0.75 * length,
            power=0.3,
            vx=blob.vx,
            vy=blob.vy,
        )
        canvas.paint_blob(hilum, FAT, BACKGROUND, only_label=label)


def _paint_gallbladder(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """A small fluid-dark ovoid on the liver's underside, in a middle range of slices."""
    s = body.scale * _size(rng)
    z0 = _uniform(rng, 0.3, 0.4)
    blob = Blob(
        *body.at(-0.18 + _uniform(rng, -0.03, 0.03), -0.17),
        0.065 * s,
        0.09 * s,
        angle=0.5 + _uniform(rng, -0.3, 0.3),
        z0=z0,
        z1=z0 + _uniform(rng, 0.18, 0.26),
        peak=0.65,
        power=0.5,
        vx=0.1,
        vy=-0.15,
        **_harmonics(rng, 0.05),
    )
    canvas.paint_blob(blob, GALLBLADDER_T, GALLBLADDER, in_cavity=True)


def _paint_pancreas(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """A thin lobulated band from the head (beside the duodenum) to the tail (splenic hilum).

    The tail lies more cranial than the head, so caudal slices show only the head.
    """
    grid = canvas.grid
    s = body.scale * _size(rng)
    knots = [body.at(-0.15, -0.02), body.at(0.06, -0.06), body.at(0.40, 0.06)]
    knots = [(x, y + _uniform(rng, -0.03, 0.03) * s) for x, y in knots]
    curve = np.polyfit([k[0] for k in knots], [k[1] for k in knots], 2)
    head_x, tail_x = knots[0][0], knots[2][0]
    z0 = _uniform(rng, 0.32, 0.4)
    z1 = z0 + _uniform(rng, 0.22, 0.3)
    wobble_amp, wobble_freq, wobble_phase = 0.012 * s, _uniform(rng, 8, 14), _uniform(rng, 0, 6.3)
    z_idx = np.nonzero((grid.z > z0) & (grid.z < z1))[0]
    if z_idx.size == 0:
        return
    zsl = slice(int(z_idx[0]), int(z_idx[-1]) + 1)
    xs = grid.pixel_range(head_x - 0.08 * s, tail_x + 0.06 * s)
    y_knots = [k[1] for k in knots]
    ys = grid.pixel_range(min(y_knots) - 0.12 * s, max(y_knots) + 0.12 * s)
    x = grid.xy[xs][None, None, :]
    y = grid.xy[ys][None, :, None]
    t = ((grid.z[zsl] - z0) / (z1 - z0))[:, None, None]
    u = (x - head_x) / (tail_x - head_x)  # 0 at the head, 1 at the tail
    # Each part along the gland has its own z-extent: the tail cranial, the head caudal.
    z_centre = 0.7 - 0.4 * u
    z_shape = np.clip(1.0 - ((t - z_centre) / 0.3) ** 2, 0.0, None)
    # Head thicker than body and tail; rounded ends.
    thickness = (0.055 - 0.017 * np.clip(u * 2.0, 0.0, 1.0)) * s
    ends = np.clip(1.0 - ((np.clip(u, -0.2, 1.2) - 0.5) / 0.6) ** 8, 0.0, None)
    centre_y = np.polyval(curve, x) + wobble_amp * np.sin(wobble_freq * x + wobble_phase + 3.0 * t)
    half = thickness * (z_shape * ends) ** 0.3
    mask = (np.abs(y - centre_y) < half) & (u > -0.15) & (u < 1.15)
    canvas.paint((zsl, ys, xs), mask, PANCREAS_T, PANCREAS, in_cavity=True)


def _paint_vessels(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Inferior vena cava (background class) and the aorta, a round tube in every slice."""
    s = body.scale
    canvas.paint_blob(
        Blob(*body.at(-0.10, 0.07), 0.05 * s, 0.037 * s, angle=0.3, vx=_uniform(rng, -0.03, 0.03), **_harmonics(rng, 0.05)), IVC
    )
    radius = 0.061 * s * _uniform(rng, 0.9, 1.1)  # 2.5 cm diameter
    canvas.paint_blob(
        Blob(
            *body.at(0.06, 0.10),
            radius,
            radius,
            vx=_uniform(rng, -0.04, 0.04),
            vy=_uniform(rng, -0.04, 0.02),
            **_harmonics(rng, 0.02),
        ),
        AORTA_T,
        AORTA,
    )


def _to_image(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """CT numbers for the painted tissues, windowed to [0, 1]: float32 (D, S, S)."""
    grid = canvas.grid
    shape = canvas.tissue.shape
    base = np.array([t.hu + t.spread * rng.standard_normal() for t in TISSUES], dtype=np.float32)
    mottle = np.array([t.mottle for t in TISSUES], dtype=np.float32)
    hu = base[canvas.tissue]
    in_plane = int(min(FOV_MM / MOTTLE_SCALE_MM, grid.size / MOTTLE_MIN_PX))
    hu += mottle[canvas.tissue] * _smooth_field(rng, shape, (grid.num_slices, in_plane, in_plane))
    coarse = max(2, int(FOV_MM / SMOOTH_TEXTURE_SCALE_MM))
    coarse_z = max(2, int(COVERAGE_MM / SMOOTH_TEXTURE_SCALE_MM))
    hu += SMOOTH_TEXTURE_HU * _smooth_field(rng, shape, (coarse_z, coarse, coarse))
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, PARTIAL_VOLUME_SIGMA_PX, PARTIAL_VOLUME_SIGMA_PX))
    hu += NOISE_HU * rng.standard_normal(shape, dtype=np.float32)
    low, high = CT_WINDOW
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)


def make_case(rng: np.random.Generator, size: int, num_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic abdominal CT volume and its labels, cranial slice first.

    Args:
        rng: the case's random generator; all randomness of the case comes from it.
        size: in-plane size S in pixels (>= 32).
        num_slices: number of axial slices D (>= 1).

    Returns:
        image: float32 (D, S, S) in [0, 1], CT numbers windowed from [-125, 275] HU.
        label: uint8 (D, S, S), Synapse class ids 0..8.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if num_slices < 1:
        raise ValueError(f"num_slices must be at least 1, got {num_slices}")
    scale = _uniform(rng, 0.95, 1.12)
    body = Body(
        cx=_uniform(rng, -0.04, 0.04),
        cy=_uniform(rng, -0.04, 0.04),
        scale=scale,
        half_w=0.80 * scale * _uniform(rng, 0.95, 1.05),
        half_h=0.58 * scale * _uniform(rng, 0.95, 1.05),
        fat=0.07 * scale * _uniform(rng, 0.5, 1.6),
    )
    canvas = Canvas(Grid(size, num_slices))
    # Painting order matters: organs over fat and bowel, vessels over organs.
    for paint in (
        _paint_body,
        _paint_spine,
        _paint_ribs,
        _paint_bowel,
        _paint_liver,
        _paint_spleen,
        _paint_lungs,
        _paint_stomach,
        _paint_kidneys,
        _paint_gallbladder,
        _paint_pancreas,
        _paint_vessels,
    ):
        paint(canvas, body, rng)
    return _to_image(canvas, rng), canvas.label


# ----------------------------------------------------------------------------------------------
# Data set on disk


def _check_geometry(size: int, min_slices: int, max_slices: int) -> None:
    """One-line ValueErrors naming the CLI flag of a bad size or slice range."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"--size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    for flag, value in (("--min_slices", min_slices), ("--max_slices", max_slices)):
        if not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SLICES:
            raise ValueError(f"{flag} must be an integer in 1..{MAX_SLICES}, got {value!r}")
    if min_slices > max_slices:
        raise ValueError(f"--min_slices ({min_slices}) must not exceed --max_slices ({max_slices})")


def _check_counts(train_cases: int, test_cases: int) -> None:
    for flag, value in (("--train_cases", train_cases), ("--test_cases", test_cases)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if train_cases + test_cases > MAX_CASES:
        raise ValueError(
            f"--train_cases + --test_cases must be at most {MAX_CASES} (4-digit case ids), got {train_cases + test_cases}"
        )


def case_id(number: int) -> str:
    """Synapse-style case id of case ``number`` (1-based): ``case0001``."""
    return f"case{number:04d}"


def spacing_mm(size: int, num_slices: int) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm of a phantom volume of ``num_slices`` x ``size`` x ``size``."""
    return (COVERAGE_MM / num_slices, FOV_MM / size, FOV_MM / size)


def generate_dataset(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    size: int = DEFAULT_SIZE,
    train_cases: int = DEFAULT_TRAIN_CASES,
    test_cases: int = DEFAULT_TEST_CASES,
    min_slices: int = DEFAULT_MIN_SLICES,
    max_slices: int = DEFAULT_MAX_SLICES,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write a synthetic abdominal CT data set in the Synapse layout.

    Case ``caseNNNN`` (training cases first, then test cases) is drawn from the NNNN-th child
    of ``np.random.default_rng(seed)``, its slice count first, so it does not depend on how
    many cases are asked for.

    Args:
        out_dir: folder to write ``train_npz/``, ``test_vol_h5/`` and ``lists/`` into.
        seed: random seed of the whole data set.
        size: in-plane size S in pixels (>= 32).
        train_cases, test_cases: number of cases of each set (>= 1).
        min_slices, max_slices: range of the slice count D of a case (inclusive).
        overwrite: delete the data an earlier run of this generator left in ``out_dir``
            first; otherwise it is an error, as it would end up in the lists. A folder that
            is not empty and not marked as this generator's is never touched (ValueError).
        progress: show a progress bar.

    Returns:
        Summary: ``out_dir``, ``train_dir``, ``test_dir``, ``train_list``, ``test_list``
        (Paths), ``train_case_ids``, ``test_case_ids`` (lists of str), ``num_train_slices``,
        ``num_test_slices`` (int).

    Raises:
        ValueError: a bad argument (the message names its CLI flag), or an ``out_dir`` that is
            not empty and not this generator's, or holds its data without ``overwrite``.
    """
    _check_geometry(size, min_slices, max_slices)
    _check_counts(train_cases, test_cases)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    out_dir = prepare_output(out_dir, GENERATOR, (TRAIN_DIR, TEST_DIR, LIST_DIR), overwrite)
    train_dir, test_dir = out_dir / TRAIN_DIR, out_dir / TEST_DIR
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)

    case_rngs = np.random.default_rng(seed).spawn(train_cases + test_cases)
    train_ids = [case_id(n) for n in range(1, train_cases + 1)]
    test_ids = [case_id(n) for n in range(train_cases + 1, train_cases + test_cases + 1)]
    counts = {"train": 0, "test": 0}
    cases = [(cid, "train") for cid in train_ids] + [(cid, "test") for cid in test_ids]
    for (cid, split), rng in tqdm(list(zip(cases, case_rngs)), desc="phantom cases", disable=not progress):
        num_slices = int(rng.integers(min_slices, max_slices + 1))
        image, label = make_case(rng, size, num_slices)
        label = label.astype(np.float32)  # the common Synapse copies store class ids as float32
        if split == "train":
            write_training_slices(train_dir, cid, image, label)
        else:
            write_volume(test_dir, cid, image, label, spacing_mm(size, num_slices))
        counts[split] += num_slices
    train_list, test_list = write_synapse_lists(out_dir, out_dir / LIST_DIR)
    logger.info(
        "wrote %d training slices and %d test volumes (%d slices) to %s", counts["train"], len(test_ids), counts["test"], out_dir
    )
    return {
        "out_dir": out_dir,
        "train_dir": train_dir,
        "test_dir": test_dir,
        "train_list": train_list,
        "test_list": test_list,
        "train_case_ids": train_ids,
        "test_case_ids": test_ids,
        "num_train_slices": counts["train"],
        "num_test_slices": counts["test"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic.synapse",
        description="Write a synthetic abdominal CT data set in the Synapse layout "
        "(train_npz/, test_vol_h5/, lists/) for demos and tests.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help="in-plane size in pixels (real Synapse: 512; small trains fast)"
    )
    parser.add_argument("--train_cases", type=int, default=DEFAULT_TRAIN_CASES, help="number of training cases")
    parser.add_argument("--test_cases", type=int, default=DEFAULT_TEST_CASES, help="number of test volumes")
    parser.add_argument("--min_slices", type=int, default=DEFAULT_MIN_SLICES, help="fewest axial slices per case")
    parser.add_argument("--max_slices", type=int, default=DEFAULT_MAX_SLICES, help="most axial slices per case")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the data an earlier run of this generator left in --out (never "
        "touches a folder without its .synthetic-dataset marker)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        summary = generate_dataset(
            args.out,
            seed=args.seed,
            size=args.size,
            train_cases=args.train_cases,
            test_cases=args.test_cases,
            min_slices=args.min_slices,
            max_slices=args.max_slices,
            overwrite=args.overwrite,
            progress=True,
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    logger.info("done in %.1f s; lists: %s, %s", time.perf_counter() - start, summary["train_list"], summary["test_list"])
    return summary


if __name__ == "__main__":
    main()
