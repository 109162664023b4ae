"""Synthetic twin of C4KC-KiTS: SYNTHETIC abdominal CT phantoms with kidney tumours, not patients.

It writes the TCIA download's layout (see :mod:`harmonia_plugins.cohorts.ct_kidney`) so the loader
reads it exactly as it reads the real collection::

    <out>/C4KC-KiTS/KiTS-NNNNN/<study>/<n>.000000-arterial-NNNNN/1-001.dcm ...   CT, arterial phase
    <out>/C4KC-KiTS/KiTS-NNNNN/<study>/300.000000-Segmentation-NNNNN/1-1.dcm     DICOM SEG: Kidney, Renal Tumor

Each patient is an axial stack of a phantom abdomen (body wall, subcutaneous and visceral fat,
bowel with gas, spine and ribs, psoas, aorta and IVC, liver, spleen, stomach, two kidneys with
cortex, medulla and sinus fat) in arterial-phase HU, with one renal tumour on the surface of a
kidney: lower and heterogeneous enhancement (a necrotic core when large). ``difficulty`` shrinks
the tumour and brings its HU towards the cortex. The first patient of each domain also has an
unreferenced non-contrast series, so the loader must follow the SEG's reference to the arterial CT.

Scanner differences come from :mod:`harmonia.synth` signatures of each series' vendor; only pixel
size, matrix and slice thickness are vendor-typical acquisition choices here.

The abdomen phantom (:func:`abdomen`) is also used by the ``ct_recon`` twin. This module does not
import the loader: file, folder and segment names are spelled out independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from harmonia.api import TwinSettings
from harmonia.io import write_dicom_series, write_seg
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, signature_for, smooth_field

# Tissues of the phantom (indices into an HU table)
AIR, FAT, MUSCLE, BOWEL, FLUID, LIVER, SPLEEN, CORTEX, MEDULLA, AORTA, VEIN, BONE, TUMOUR, NECROSIS = range(14)
#: clean arterial-phase HU per tissue; the tumour's is set by the difficulty
ARTERIAL = {
    AIR: -1000.0, FAT: -100.0, MUSCLE: 50.0, BOWEL: 40.0, FLUID: 10.0, LIVER: 75.0, SPLEEN: 130.0,
    CORTEX: 190.0, MEDULLA: 80.0, AORTA: 320.0, VEIN: 90.0, BONE: 650.0, NECROSIS: 20.0,
}
#: clean non-contrast HU per tissue (the distractor series)
NON_CONTRAST = {
    **ARTERIAL, LIVER: 58.0, SPLEEN: 48.0, CORTEX: 32.0, MEDULLA: 30.0, AORTA: 42.0, VEIN: 40.0,
    TUMOUR: 35.0, NECROSIS: 20.0,
}
#: the tumour's HU is the cortex's minus this; it shrinks from easy (difficulty 0) to hard (1)
TUMOUR_CONTRAST_HU = (110.0, 40.0)
#: tumour radius range in mm at difficulty 0 and 1
TUMOUR_RADIUS_MM = ((16.0, 30.0), (7.0, 12.0))
SCAN_HALF_LENGTH_MM = 95.0

#: invented identifiers an export could carry; they must never reach harmonia's output
SURNAMES = ("DOE", "ROE", "MUSTERMANN", "ROSSI", "DUPONT", "NOWAK", "SILVA", "TANAKA")
GIVEN_NAMES = ("JANE", "RICHARD", "ERIKA", "MARIO", "CLAIRE", "PIOTR", "ANA", "KENJI")


@dataclass(frozen=True)
class Scanner:
    """One scanner as its DICOM headers name it, and its vendor-typical acquisition geometry."""

    vendor: str
    manufacturer: str
    model: str
    kernel: str
    pixel_mm: float
    matrix: int
    slice_mm: float


#: "Other" mixes the non-Siemens vendors of KiTS; the Manufacturer strings are as scanners write them
SCANNERS = {
    "Siemens": (Scanner("Siemens", "SIEMENS", "SOMATOM Definition AS+", "B30f", 4.0, 96, 5.0),),
    "Other": (
        Scanner("GE", "GE MEDICAL SYSTEMS", "LightSpeed VCT", "STANDARD", 4.2, 92, 5.0),
        Scanner("Philips", "Philips", "Brilliance 64", "B", 3.9, 100, 4.0),
        Scanner("Toshiba", "TOSHIBA", "Aquilion", "FC08", 4.1, 94, 5.0),
    ),
}


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The tumour
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tumour:
    """A renal tumour: centre (mm), radius (mm), on which kidney, and whether it has a necrotic core."""

    centre: tuple[float, float, float]
    radius: float
    necrotic: bool


def draw_tumour(rng: np.random.Generator, anatomy: Anatomy, difficulty: float) -> Tumour:
    """A tumour on the surface of a random kidney: partly inside it, partly bulging out; smaller when harder."""
    kidney = anatomy.kidneys[int(rng.integers(2))]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    depth = rng.uniform(0.55, 0.95)
    centre = tuple(float(c + d * r * depth) for c, d, r in zip(kidney.centre, direction, kidney.radii))
    (lo_easy, hi_easy), (lo_hard, hi_hard) = TUMOUR_RADIUS_MM
    lo, hi = lo_easy + (lo_hard - lo_easy) * difficulty, hi_easy + (hi_hard - hi_easy) * difficulty
    radius = float(rng.uniform(lo, hi) * anatomy.scale)
    return Tumour(centre, radius, necrotic=radius > 14 and rng.random() < 0.7)


def paint_tumour(tissues: np.ndarray, tumour: Tumour, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Paint a lobulated tumour (and its necrotic core) into ``tissues``; returns the tumour mask."""
    lobes = grid.smooth_field(0.1, rng)
    sphere = Ellipsoid(tumour.centre, (tumour.radius,) * 3).level(grid)
    mask = (sphere < 1 + 0.35 * lobes) & (tissues != AIR) & (tissues != BONE)
    tissues[mask] = TUMOUR
    if tumour.necrotic:
        tissues[mask & (sphere < 0.3 + 0.2 * lobes)] = NECROSIS
    return mask


def arterial_values(difficulty: float) -> list[float]:
    """Clean HU per tissue index in the arterial phase; the tumour's contrast to the cortex falls with difficulty."""
    easy, hard = TUMOUR_CONTRAST_HU
    values = {**ARTERIAL, TUMOUR: ARTERIAL[CORTEX] - (easy + (hard - easy) * difficulty)}
    return [values[t] for t in range(len(values))]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """The planted identifiers of one synthetic patient."""

    patient_id: str
    name: str
    birth_date: str


def planted_people(rng: np.random.Generator, count: int) -> list[Person]:
    """Distinct KiTS-style IDs (KiTS-NNNNN) with invented names and birth dates."""
    numbers = rng.choice(300, size=count, replace=False)
    return [
        Person(
            patient_id=f"KiTS-{int(n):05d}",
            name=f"{SURNAMES[rng.integers(len(SURNAMES))]}^{GIVEN_NAMES[rng.integers(len(GIVEN_NAMES))]}",
            birth_date=f"{rng.integers(1930, 1985)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        )
        for n in numbers
    ]


def series_folder(number: int, description: str, rng: np.random.Generator) -> str:
    """A series folder named as the NBIA Data Retriever names them: ``<number>.000000-<description>-<5 digits>``."""
    return f"{number}.000000-{description}-{int(rng.integers(10000, 99999))}"


@dataclass(frozen=True)
class Phantom:
    """One patient's phantom on its scan grid: tissue labels and the two segmented structures."""

    grid: Grid
    tissues: np.ndarray
    kidney: np.ndarray
    tumour: np.ndarray


def draw_phantom(rng: np.random.Generator, scanner: Scanner, difficulty: float) -> Phantom:
    """A random abdomen with one renal tumour, on a grid of the scanner's matrix, pixel size and slices."""
    anatomy = draw_anatomy(rng, scale=float(rng.uniform(0.9, 1.1)))
    tumour = draw_tumour(rng, anatomy, difficulty)
    half = SCAN_HALF_LENGTH_MM * anatomy.scale
    pixel = scanner.pixel_mm * float(rng.uniform(0.95, 1.05))
    start = -half + float(rng.uniform(-10, 10))
    grid = Grid.of(int(2 * half / scanner.slice_mm) + 1, scanner.matrix, pixel, scanner.slice_mm, z0=start)
    tissues = abdomen(anatomy, grid, rng)
    tumour_mask = paint_tumour(tissues, tumour, grid, rng)
    kidney_mask = (np.isin(tissues, (CORTEX, MEDULLA)) | _kidney_sinus(tissues, anatomy, grid)) & ~tumour_mask
    return Phantom(grid, tissues, kidney_mask, tumour_mask)


def write_patient(folder: Path, person: Person, scanner: Scanner, settings: TwinSettings, distractor: bool) -> None:
    """One patient's arterial CT and its SEG (and, if ``distractor``, an unreferenced non-contrast CT)."""
    rng = np.random.default_rng(derive_seed("ct_kidney-twin", settings.seed, person.patient_id))
    phantom = draw_phantom(rng, scanner, settings.difficulty)
    grid = phantom.grid
    signature = signature_for(scanner.vendor, "CT", seed=settings.seed, strength=settings.strength)

    def scan(values: list[float], stream: str) -> np.ndarray:
        """The phantom in the HU ``values`` through the scanner's signature, with noise from ``stream``."""
        seed = derive_seed(stream, settings.seed, person.patient_id)
        return acquire(phantom.tissues, values, signature, seed=seed, spacing=grid.spacing)

    date = f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}-{rng.integers(2010, 2019)}"
    study = folder / f"{date}-NA-CT ABDOMEN-{rng.integers(10000, 99999)}"
    header = {
        "modality": "CT", "manufacturer": scanner.manufacturer, "model_name": scanner.model,
        "patient_name": person.name, "patient_id": person.patient_id, "birth_date": person.birth_date,
        "origin": grid.origin, "file_name": "1-{index:03d}.dcm",
        "extra": {"KVP": 120, "ConvolutionKernel": scanner.kernel, "BodyPartExamined": "ABDOMEN"},
    }
    arterial = scan(arterial_values(settings.difficulty), "ct_kidney-twin-arterial")
    series = write_dicom_series(study / series_folder(3, "arterial", rng), arterial, grid.spacing,
                                series_description="arterial", **header)
    segments = {"Kidney": phantom.kidney, "Renal Tumor": phantom.tumour}
    write_seg(study / series_folder(300, "Segmentation", rng) / "1-1.dcm", series, segments, person.name,
              person.patient_id)
    if distractor:
        plain = scan([NON_CONTRAST[t] for t in range(len(NON_CONTRAST))], "ct_kidney-twin-plain")
        dz, dy, dx = grid.spacing
        write_dicom_series(study / series_folder(2, "non-contrast", rng), plain[::2], (2 * dz, dy, dx),
                           series_description="non-contrast", **header)


def _kidney_sinus(tissues: np.ndarray, anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Fat inside the kidneys' outlines (the renal sinus), which the kidney segment includes."""
    within = np.zeros(grid.shape, bool)
    for kidney in anatomy.kidneys:
        within |= np.broadcast_to(kidney.shrunk(7 * anatomy.scale).level(grid) < 1, grid.shape)
    return within & (tissues == FAT)


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` patients on Siemens scanners and as many on others.

    Deterministic in ``settings``. "Other" patients cycle through GE, Philips and Toshiba scanners.
    """
    rng = np.random.default_rng(derive_seed("ct_kidney-twin", settings.seed))
    people = iter(planted_people(rng, 2 * settings.patients))
    collection = Path(out) / "C4KC-KiTS"
    for scanners in SCANNERS.values():
        for i in range(settings.patients):
            person = next(people)
            scanner = scanners[i % len(scanners)]
            write_patient(collection / person.patient_id, person, scanner, settings, distractor=i == 0)
