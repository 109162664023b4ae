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

The abdomen phantom is :mod:`harmonia.synth.abdomen`'s. This module does not import the loader:
file, folder and segment names are spelled out independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harmonia.api import TwinSettings
from harmonia.io import write_dicom_series, write_seg
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, twin_signature
from harmonia.synth.abdomen import (
    AIR,
    AORTA,
    BONE,
    BOWEL,
    CORTEX,
    FAT,
    FLUID,
    LIVER,
    MEDULLA,
    MUSCLE,
    NECROSIS,
    SPLEEN,
    TUMOUR,
    VEIN,
    Anatomy,
    Ellipsoid,
    Grid,
    abdomen,
    draw_anatomy,
)

#: clean arterial-phase HU per tissue; the tumour's is set by the difficulty
ARTERIAL = {
    AIR: -1000.0,
    FAT: -100.0,
    MUSCLE: 50.0,
    BOWEL: 40.0,
    FLUID: 10.0,
    LIVER: 75.0,
    SPLEEN: 130.0,
    CORTEX: 190.0,
    MEDULLA: 80.0,
    AORTA: 320.0,
    VEIN: 90.0,
    BONE: 650.0,
    NECROSIS: 20.0,
}
#: clean non-contrast HU per tissue (the distractor series)
NON_CONTRAST = {
    **ARTERIAL,
    LIVER: 58.0,
    SPLEEN: 48.0,
    CORTEX: 32.0,
    MEDULLA: 30.0,
    AORTA: 42.0,
    VEIN: 40.0,
    TUMOUR: 35.0,
    NECROSIS: 20.0,
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
    signature = twin_signature(scanner.vendor, "CT", settings)

    def scan(values: list[float], stream: str) -> np.ndarray:
        """The phantom in the HU ``values`` through the scanner's signature, with noise from ``stream``."""
        seed = derive_seed(stream, settings.seed, person.patient_id)
        return acquire(phantom.tissues, values, signature, seed=seed, spacing=grid.spacing)

    date = f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}-{rng.integers(2010, 2019)}"
    study = folder / f"{date}-NA-CT ABDOMEN-{rng.integers(10000, 99999)}"
    header = {
        "modality": "CT",
        "manufacturer": scanner.manufacturer,
        "model_name": scanner.model,
        "patient_name": person.name,
        "patient_id": person.patient_id,
        "birth_date": person.birth_date,
        "origin": grid.origin,
        "file_name": "1-{index:03d}.dcm",
        "extra": {"KVP": 120, "ConvolutionKernel": scanner.kernel, "BodyPartExamined": "ABDOMEN"},
    }
    arterial = scan(arterial_values(settings.difficulty), "ct_kidney-twin-arterial")
    series = write_dicom_series(
        study / series_folder(3, "arterial", rng), arterial, grid.spacing, series_description="arterial", **header
    )
    segments = {"Kidney": phantom.kidney, "Renal Tumor": phantom.tumour}
    write_seg(
        study / series_folder(300, "Segmentation", rng) / "1-1.dcm", series, segments, person.name, person.patient_id
    )
    if distractor:
        plain = scan([NON_CONTRAST[t] for t in range(len(NON_CONTRAST))], "ct_kidney-twin-plain")
        dz, dy, dx = grid.spacing
        write_dicom_series(
            study / series_folder(2, "non-contrast", rng),
            plain[::2],
            (2 * dz, dy, dx),
            series_description="non-contrast",
            **header,
        )


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
