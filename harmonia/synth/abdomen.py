"""A SYNTHETIC abdomen phantom: tissue labels of body wall, fat, bowel, liver, spleen, stomach, kidneys,
vessels and bones on a voxel grid, organ sizes and positions drawn at random around an adult's (or
scaled to a child's). Used by the ``ct_kidney`` and ``ct_recon`` twins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from harmonia.synth.fields import smooth_field

# Tissues of the phantom (indices into an HU table)
AIR, FAT, MUSCLE, BOWEL, FLUID, LIVER, SPLEEN, CORTEX, MEDULLA, AORTA, VEIN, BONE, TUMOUR, NECROSIS = range(14)
#: every tissue, in label order (the order of an HU table)
TISSUES = (AIR, FAT, MUSCLE, BOWEL, FLUID, LIVER, SPLEEN, CORTEX, MEDULLA, AORTA, VEIN, BONE, TUMOUR, NECROSIS)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in mm (x to the patient's left, y posterior, z superior)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]

    def level(self, grid: Grid) -> np.ndarray:
        """Squared normalised distance from the centre: < 1 inside."""
        (cx, cy, cz), (rx, ry, rz) = self.centre, self.radii
        return ((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2 + ((grid.z - cz) / rz) ** 2

    def shrunk(self, mm: float) -> Ellipsoid:
        """The ellipsoid ``mm`` inside this one (e.g. the medulla inside the cortex)."""
        return Ellipsoid(self.centre, tuple(max(r - mm, 1.0) for r in self.radii))


@dataclass(frozen=True)
class Anatomy:
    """One patient's abdomen in mm, origin at the renal hila; ``scale`` is the body size (1 = adult)."""

    scale: float
    body: tuple[float, float]
    fat: float
    liver: Ellipsoid
    spleen: Ellipsoid
    stomach: Ellipsoid
    kidneys: tuple[Ellipsoid, Ellipsoid]


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates in mm, broadcastable to ``(z, y, x)``."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def of(cls, slices: int, matrix: int, pixel_mm: float, slice_mm: float, z0: float) -> Grid:
        """A centred in-plane grid and slices from ``z0`` upwards (the DICOM order: index 0 inferior)."""
        side = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * pixel_mm
        z = z0 + np.arange(slices, dtype=np.float32) * slice_mm
        return cls(side[None, None, :], side[None, :, None], z[:, None, None])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm."""
        dz = float(self.z[1, 0, 0] - self.z[0, 0, 0]) if self.z.shape[0] > 1 else 1.0
        pixel = float(self.x[0, 0, 1] - self.x[0, 0, 0])
        return (dz, pixel, pixel)

    def smooth_field(self, scale: float, rng: np.random.Generator) -> np.ndarray:
        """A smooth random field (:func:`harmonia.synth.smooth_field`) drawn at a quarter of the in-plane resolution.

        Drawing at full resolution is slow in 3-D; the field is smooth, so linear interpolation loses nothing.
        """
        small = (self.shape[0], max(2, self.shape[1] // 4), max(2, self.shape[2] // 4))
        dz, dy, dx = self.spacing
        coarse = smooth_field(small, scale, rng, (dz, dy * self.shape[1] / small[1], dx * self.shape[2] / small[2]))
        return ndimage.zoom(coarse, np.array(self.shape) / np.array(small), order=1, mode="nearest", grid_mode=True)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (x, y, z) position of voxel 0."""
        return (float(self.x[0, 0, 0]), float(self.y[0, 0, 0]), float(self.z[0, 0, 0]))


def draw_anatomy(rng: np.random.Generator, scale: float) -> Anatomy:
    """A random abdomen of body size ``scale``: organ sizes and positions vary by a few millimetres."""

    def jitter(values: tuple[float, ...], sd: float) -> tuple[float, ...]:
        """Adult sizes or positions scaled to the body and moved by ``sd`` mm (scaled too)."""
        return tuple(float(v * scale + rng.normal(0, sd * scale)) for v in values)

    kidney_radii = jitter((27.0, 24.0, 52.0), 2.5)
    right_z, left_z = rng.normal(-10, 6), rng.normal(8, 6)
    return Anatomy(
        scale=scale,
        body=jitter((150.0, 110.0), 10.0),
        fat=float(rng.uniform(12, 30) * scale),
        liver=Ellipsoid(jitter((-55.0, 5.0, 95.0), 5.0), jitter((82.0, 80.0, 80.0), 5.0)),
        spleen=Ellipsoid(jitter((80.0, 45.0, 80.0), 4.0), jitter((30.0, 45.0, 50.0), 3.0)),
        stomach=Ellipsoid(jitter((42.0, -28.0, 105.0), 5.0), jitter((45.0, 35.0, 40.0), 4.0)),
        kidneys=(
            Ellipsoid(jitter((-72.0, 52.0, right_z), 3.0), kidney_radii),
            Ellipsoid(jitter((72.0, 52.0, left_z), 3.0), kidney_radii),
        ),
    )


def _disc(grid: Grid, x: float, y: float, radius: float) -> np.ndarray:
    """An in-plane disc (a cylinder along z) of ``radius`` mm around (x, y)."""
    return (grid.x - x) ** 2 + (grid.y - y) ** 2 < radius**2


def abdomen(anatomy: Anatomy, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Tissue label map ``(z, y, x)`` of the phantom abdomen on ``grid``; organ outlines are slightly irregular."""
    s = anatomy.scale
    wobble = grid.smooth_field(0.25, rng)
    loops = grid.smooth_field(0.06, rng)
    tissues = np.full(grid.shape, AIR, np.int64)

    def paint(mask: np.ndarray, tissue: int) -> None:
        """Set the voxels of ``mask`` (broadcast to the grid) to ``tissue``, over what was painted before."""
        tissues[np.broadcast_to(mask, grid.shape)] = tissue

    def inside(organ: Ellipsoid, amplitude: float = 0.12) -> np.ndarray:
        """The organ's voxels, its outline made irregular by the smooth field."""
        return organ.level(grid) < 1 + amplitude * wobble

    a, b = anatomy.body

    def section(inset: float) -> np.ndarray:
        """The body's elliptic cross-section shrunk by ``inset`` mm (fat, wall and cavity boundaries)."""
        return (grid.x / (a - inset)) ** 2 + (grid.y / (b - inset)) ** 2 < 1 + 0.03 * wobble

    cavity = section(anatomy.fat + 10 * s)
    paint(section(0.0), FAT)
    paint(section(anatomy.fat), MUSCLE)
    paint(cavity, FAT)
    # bowel loops (with gas) fill the front of the cavity, down to an irregular line
    front = grid.y < (0.3 + 0.25 * wobble) * b
    paint(cavity & front & (loops > -0.15), BOWEL)
    paint(cavity & front & (grid.y < 0.1 * b) & (loops > 0.55), AIR)
    paint(cavity & inside(anatomy.liver), LIVER)
    paint(inside(anatomy.liver) & (loops > 0.7) & cavity, VEIN)
    paint(cavity & inside(anatomy.spleen), SPLEEN)
    stomach = anatomy.stomach
    paint(cavity & inside(stomach, 0.05), BOWEL)
    lumen = inside(stomach.shrunk(6 * s), 0.05)
    paint(lumen, FLUID)
    paint(lumen & (grid.y < stomach.centre[1] - 0.3 * stomach.radii[1]), AIR)
    # the psoas muscles thicken towards the pelvis
    psoas = np.clip(10 * s + 0.18 * np.maximum(0, 30 * s - grid.z), 0, 24 * s)
    for side in (-1, 1):
        paint((grid.x - side * 32 * s) ** 2 + (grid.y - 64 * s) ** 2 < psoas**2, MUSCLE)
    for kidney in anatomy.kidneys:
        paint(inside(kidney, 0.05), CORTEX)
        medulla = inside(kidney.shrunk(7 * s), 0.05)
        paint(medulla, MEDULLA)
        paint(medulla & (np.abs(grid.x) < abs(kidney.centre[0]) - 0.35 * kidney.radii[0]), FAT)
    paint(_disc(grid, 10 * s, 46 * s, 10 * s), AORTA)
    paint(_disc(grid, -24 * s, 44 * s, 10 * s), VEIN)
    paint(_disc(grid, 0.0, 74 * s, 18 * s), BONE)
    paint(_disc(grid, 0.0, 99 * s, 7 * s), FLUID)
    # lower ribs in the wall around the upper abdomen
    for angle in np.linspace(-0.2 * np.pi, 1.2 * np.pi, 10):
        x, y = (a - anatomy.fat - 5 * s) * np.cos(angle), -(b - anatomy.fat - 5 * s) * np.sin(angle)
        paint(_disc(grid, x, y, 5 * s) & (grid.z > 35 * s), BONE)
    return tissues
