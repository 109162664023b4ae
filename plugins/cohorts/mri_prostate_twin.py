"""A SYNTHETIC twin of the PI-CAI public training set: phantom pelvis MRI in the release's own layout.

Everything written here is synthetic: phantoms, not patients. The twin mirrors what a user has
after unpacking the five Zenodo image folds and cloning ``picai_labels``::

    picai_public_images_fold<k>/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha     MHA with the DICOM key 0008|0070
    picai_labels/clinical_information/marksheet.csv                      one row per case
    picai_labels/csPCa_lesion_delineations/human_expert/resampled/<pid>_<sid>.nii.gz   masks on the T2W grid
    picai_labels/csPCa_lesion_delineations/AI/Bosma22a/<pid>_<sid>.nii.gz             AI masks, every case

Each case is an axial stack through a phantom pelvis: subcutaneous and pelvic fat, obturator
muscles, femoral heads (cortex and marrow), pubic symphysis, rectum with gas, the bladder above
the prostate, and the prostate itself (bright peripheral zone, darker transition zone, urethra).
A csPCa case carries one T2-dark lesion in the peripheral zone; ``difficulty`` shrinks it and
brings its signal towards the zone around it. All vendor differences in appearance come from the
scanner signatures of :mod:`harmonia.synth`; matrix, pixel size, slice count and the model name
in the header are vendor-typical acquisition choices here.

This module does not import the loader: file, folder, key and column names are spelled out
independently, so a loader that misreads the real layout fails its tests on the twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from harmonia.api import TwinSettings
from harmonia.io import write_mha
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, smooth_field, twin_signature

FOLDS = 5
LABELS = Path("picai_labels")
MARKSHEET = LABELS / "clinical_information" / "marksheet.csv"
HUMAN_MASKS = LABELS / "csPCa_lesion_delineations" / "human_expert" / "resampled"
AI_MASKS = LABELS / "csPCa_lesion_delineations" / "AI" / "Bosma22a"
MARKSHEET_COLUMNS = [
    "patient_id",
    "study_id",
    "mri_date",
    "patient_age",
    "psa",
    "psad",
    "prostate_volume",
    "histopath_type",
    "lesion_GS",
    "lesion_ISUP",
    "case_ISUP",
    "case_csPCa",
    "center",
]

# Tissues of the phantom; the clean T2W intensity of the lesion depends on difficulty.
(AIR, FAT, MUSCLE, CORTEX, MARROW, GAS, RECTAL_WALL, PZ, TZ, URETHRA, URINE, BLADDER_WALL, LESION) = range(13)
T2W = {
    AIR: 0.0,
    FAT: 520.0,
    MUSCLE: 140.0,
    CORTEX: 30.0,
    MARROW: 450.0,
    GAS: 15.0,
    RECTAL_WALL: 200.0,
    PZ: 420.0,
    TZ: 250.0,
    URETHRA: 380.0,
    URINE: 900.0,
    BLADDER_WALL: 170.0,
}
#: apparent diffusion (x 1e-6 mm^2/s) and high-b signal: the lesion restricts diffusion (dark ADC, bright b-high)
ADC = {
    AIR: 0.0,
    FAT: 300.0,
    MUSCLE: 1400.0,
    CORTEX: 50.0,
    MARROW: 400.0,
    GAS: 0.0,
    RECTAL_WALL: 1300.0,
    PZ: 1700.0,
    TZ: 1300.0,
    URETHRA: 2000.0,
    URINE: 2900.0,
    BLADDER_WALL: 1300.0,
    LESION: 800.0,
}
HBV = {
    AIR: 0.0,
    FAT: 8.0,
    MUSCLE: 20.0,
    CORTEX: 2.0,
    MARROW: 10.0,
    GAS: 0.0,
    RECTAL_WALL: 30.0,
    PZ: 25.0,
    TZ: 30.0,
    URETHRA: 15.0,
    URINE: 5.0,
    BLADDER_WALL: 25.0,
    LESION: 70.0,
}


@dataclass(frozen=True)
class Scanner:
    """How one vendor's scanners are written into the MHA headers, and their typical T2W geometry."""

    manufacturer: str
    models: tuple[str, ...]
    pixel_mm: float
    matrix: int
    slice_mm: float


#: the two PI-CAI vendors as their scanners write 0008|0070; geometry is shrunk from the real
#: ~0.5 mm x 384 so that the twin stays small
SCANNERS = {
    "Siemens": Scanner("SIEMENS", ("Skyra", "Prisma_fit", "TrioTim"), 2.0, 80, 3.0),
    "Philips": Scanner("Philips Medical Systems", ("Ingenia", "Achieva dStream"), 1.8, 88, 3.3),
}
#: invented names planted in the MHA headers (key 0010|0010); they must never reach harmonia's output
FAKE_NAMES = ("JANSEN^PIETER", "DE VRIES^DAAN", "BAKKER^SEM", "VISSER^LUCAS", "SMIT^FINN")
CENTERS = ("RUMC", "PCNN", "ZGT")


@dataclass(frozen=True)
class Pelvis:
    """One case's anatomy in mm (image-centred; x left-right, y anterior-posterior, z up) and its lesion."""

    prostate: tuple[float, float, float]
    offset: tuple[float, float]
    body: tuple[float, float]
    bladder_fill: float
    slices: int
    lesion: tuple[float, float, float, float] | None  # centre x, y, z and radius, mm
    isup: int


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def draw_pelvis(rng: np.random.Generator, cancer: bool, difficulty: float) -> Pelvis:
    """A random pelvis; a csPCa case gets a lesion in the peripheral zone, smaller with ``difficulty``."""
    prostate = (rng.uniform(20, 27), rng.uniform(14, 19), rng.uniform(15, 20))
    lesion = None
    if cancer:
        radius = rng.uniform(6.5, 9.0) * (1 - 0.6 * difficulty)
        side = rng.choice([-1.0, 1.0])
        lesion = (
            side * prostate[0] * rng.uniform(0.35, 0.55),
            prostate[1] * rng.uniform(0.35, 0.55),
            rng.uniform(-0.4, 0.4) * prostate[2],
            radius,
        )
    return Pelvis(
        prostate=prostate,
        offset=(rng.normal(0, 4), rng.normal(0, 4)),
        body=(rng.uniform(120, 140), rng.uniform(90, 105)),
        bladder_fill=rng.uniform(0.6, 1.0),
        slices=int(rng.integers(14, 19)),
        lesion=lesion,
        isup=int(rng.choice([2, 2, 3, 4, 5])) if cancer else 0,
    )


def case_ids(rng: np.random.Generator, patients: int) -> list[str]:
    """Distinct five-digit patient IDs shaped like PI-CAI's (10000-11475)."""
    return [str(i) for i in rng.choice(np.arange(10000, 11476), size=patients, replace=False)]


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    """Points inside the axis-aligned ellipsoid (all arguments in mm)."""
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 < 1


def tissues_of(
    pelvis: Pelvis, shape: tuple[int, int, int], spacing: tuple[float, float, float], texture: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels and the lesion mask ``[Z, Y, X]`` of one case; z = 0 is the most caudal slice."""
    dz, dy, dx = spacing
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * d for n, d in zip(shape, (dz, dy, dx))], indexing="ij")
    x, y = x - pelvis.offset[0], y - pelvis.offset[1]
    wobble = 0.08 * texture
    a, b = pelvis.body
    tissues = np.full(shape, AIR, np.int64)
    tissues[(x / a) ** 2 + (y / b) ** 2 < 1 + wobble] = FAT
    inner = (x / (a - 14)) ** 2 + (y / (b - 12)) ** 2 < 1 + wobble
    # rectus abdominis in front; obturator internus beside the prostate; gluteus maximus behind
    tissues[inner & ellipsoid(x, y, z, (0, -(b - 22), 0), (40, 9, 200))] = MUSCLE
    for side in (-1, 1):
        tissues[inner & ellipsoid(x, y, z, (side * 42, 8, 0), (16, 30, 200))] = MUSCLE
        tissues[inner & ellipsoid(x, y, z, (side * 50, b - 25, 0), (42, 22, 200))] = MUSCLE
        head = ellipsoid(x, y, z, (side * 72, 5, 18), (24, 24, 26))
        tissues[head] = CORTEX
        tissues[ellipsoid(x, y, z, (side * 72, 5, 18), (20, 20, 22))] = MARROW
    symphysis = ellipsoid(x, y, z, (0, -48, -4), (12, 8, 14))
    tissues[symphysis] = CORTEX
    tissues[ellipsoid(x, y, z, (0, -48, -4), (8, 5, 10))] = MARROW

    px, py, pz = pelvis.prostate
    rectum_y = py + 11
    tissues[ellipsoid(x, y, z, (0, rectum_y, 0), (15, 11, 200))] = RECTAL_WALL
    tissues[ellipsoid(x, y, z, (0, rectum_y, 0), (10, 6, 200)) & (texture > -0.2)] = GAS
    fill = pelvis.bladder_fill
    bladder_centre = (0, -8, pz + 22 * fill + 4)
    bladder_radii = (34 * fill + 6, 26 * fill + 5, 22 * fill + 4)
    tissues[ellipsoid(x, y, z, bladder_centre, tuple(r + 3 for r in bladder_radii))] = BLADDER_WALL
    tissues[ellipsoid(x, y, z, bladder_centre, bladder_radii)] = URINE

    gland = ellipsoid(x, y, z, (0, 0, 0), (px, py, pz))
    tissues[gland] = PZ
    tissues[gland & ellipsoid(x, y, z, (0, -0.25 * py, 0.1 * pz), (0.6 * px, 0.6 * py, 0.8 * pz))] = TZ
    tissues[gland & ellipsoid(x, y, z, (0, -0.2 * py, 0), (2.5, 2.5, 200))] = URETHRA
    lesion = np.zeros(shape, bool)
    if pelvis.lesion is not None:
        lx, ly, lz, r = pelvis.lesion
        lesion = gland & ellipsoid(x, y, z, (lx, ly, lz), (r, r * 0.8, r * 1.2))
        tissues[lesion] = LESION
    return tissues, lesion


def t2w_values(difficulty: float) -> dict[int, float]:
    """Clean T2W intensity per tissue; the lesion's darkness against the peripheral zone falls with ``difficulty``."""
    return {**T2W, LESION: T2W[PZ] - 260.0 * (1 - 0.75 * difficulty)}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def header(scanner: Scanner, rng: np.random.Generator, patient_id: str) -> dict[str, str]:
    """MHA metadata like the release's converted headers: vendor, model, field strength, and planted identifiers."""
    return {
        "0008|0070": scanner.manufacturer,
        "0008|1090": str(rng.choice(scanner.models)),
        "0018|0087": "3",
        "0010|0010": str(rng.choice(FAKE_NAMES)),
        "0010|0020": patient_id,
        "0010|0030": f"19{int(rng.integers(40, 60))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
    }


def write_mask(path: Path, mask: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...]) -> None:
    """A lesion mask as NIfTI on the T2W grid (``spacing`` per array axis, ``origin`` x, y, z), values as given."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_case(
    out: Path,
    fold: int,
    patient_id: str,
    study_id: str,
    pelvis: Pelvis,
    vendor: str,
    settings: TwinSettings,
    human_mask: bool,
) -> None:
    """The three MHA sequences of one case and its lesion masks (human only when ``human_mask``)."""
    scanner = SCANNERS[vendor]
    case = f"{patient_id}_{study_id}"
    rng = np.random.default_rng(derive_seed("mri_prostate-twin-geometry", settings.seed, case))
    pixel = scanner.pixel_mm * rng.uniform(0.95, 1.05)
    shape = (pelvis.slices, scanner.matrix, scanner.matrix)
    spacing = (scanner.slice_mm, pixel, pixel)
    texture = smooth_field(shape, 0.35, rng, spacing)
    tissues, lesion = tissues_of(pelvis, shape, spacing, texture)
    metadata = header(scanner, rng, patient_id)
    origin = tuple(-(n - 1) / 2 * d for n, d in zip(shape[::-1], spacing[::-1]))
    folder = out / f"picai_public_images_fold{fold}" / patient_id

    sequences = (("t2w", t2w_values(settings.difficulty), 1), ("adc", ADC, 2), ("hbv", HBV, 2))
    for sequence, values, step in sequences:
        signature = twin_signature(vendor, "MRI", settings, seed=derive_seed(settings.seed, sequence))
        sampled = (spacing[0], pixel * step, pixel * step)
        seed = derive_seed("mri_prostate-twin-acquire", settings.seed, case, sequence)
        image = acquire(
            tissues[:, ::step, ::step], [values[t] for t in range(len(values))], signature, seed=seed, spacing=sampled
        )
        stored = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        write_mha(folder / f"{case}_{sequence}.mha", stored, sampled, metadata, origin)

    if human_mask:
        write_mask(out / HUMAN_MASKS / f"{case}.nii.gz", lesion * pelvis.isup, spacing, origin)
    # the AI delineation: the same lesion, one voxel wider in-plane, label 1 as the release's AI masks
    dilated = lesion | np.roll(lesion, 1, axis=2) | np.roll(lesion, -1, axis=2)
    write_mask(out / AI_MASKS / f"{case}.nii.gz", dilated, spacing, origin)


def marksheet_row(patient_id: str, study_id: str, pelvis: Pelvis, rng: np.random.Generator) -> dict[str, object]:
    """One fake marksheet row: plausible clinical values where the real sheet has them, blank where it may."""
    volume = 4 / 3 * math.pi * np.prod(pelvis.prostate) / 1000 * 8
    psa = round(float(rng.lognormal(2.0, 0.5)), 1)
    biopsied = pelvis.isup > 0 or rng.random() < 0.5
    grades = {2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}
    return {
        "patient_id": patient_id,
        "study_id": study_id,
        "mri_date": f"20{int(rng.integers(12, 22))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        "patient_age": int(rng.integers(50, 80)),
        "psa": psa,
        "psad": round(psa / volume, 2) if rng.random() > 0.2 else None,
        "prostate_volume": round(volume),
        "histopath_type": str(rng.choice(["MRBx", "SysBx", "SysBx+MRBx"])) if biopsied else None,
        "lesion_GS": grades.get(pelvis.isup, "0+0") if biopsied else None,
        "lesion_ISUP": pelvis.isup if biopsied else None,
        "case_ISUP": pelvis.isup,
        "case_csPCa": "YES" if pelvis.isup >= 2 else "NO",
        "center": str(rng.choice(CENTERS)),
    }


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` patients per vendor, about 40 % of cases with csPCa.

    The first Siemens patient has two studies (PI-CAI has a few such patients); the first csPCa
    case has no human delineation, only the AI one, as 205 real csPCa cases have. Deterministic
    in ``settings``.
    """
    rng = np.random.default_rng(derive_seed("mri_prostate-twin", settings.seed))
    ids = iter(case_ids(rng, len(SCANNERS) * settings.patients))
    study = iter(range(1000000 + int(rng.integers(0, 400)), 1002000))
    rows, case_number, human_skipped = [], 0, False
    for v, vendor in enumerate(SCANNERS):
        for k in range(settings.patients):
            patient_id = next(ids)
            fold = (v * settings.patients + k) % FOLDS
            studies = 2 if (vendor == "Siemens" and k == 0) else 1
            for _ in range(studies):
                study_id = str(next(study))
                case_rng = np.random.default_rng(derive_seed("mri_prostate-twin-case", settings.seed, study_id))
                pelvis = draw_pelvis(case_rng, cancer=case_number % 5 in (1, 3), difficulty=settings.difficulty)
                human = pelvis.isup == 0 or human_skipped
                human_skipped = human_skipped or not human
                write_case(out, fold, patient_id, study_id, pelvis, vendor, settings, human)
                rows.append(marksheet_row(patient_id, study_id, pelvis, case_rng))
                case_number += 1
    (out / MARKSHEET).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MARKSHEET_COLUMNS).to_csv(out / MARKSHEET)
