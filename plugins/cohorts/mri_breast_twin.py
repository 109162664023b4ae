"""SYNTHETIC twin of Duke-Breast-Cancer-MRI: phantom breast DCE-MRI of made-up patients, in the TCIA layout.

Nothing here is patient data. The twin is written the way the collection is downloaded (see
:mod:`harmonia_plugins.cohorts.mri_breast`), so the loader reads it exactly as it reads the real
data::

    <out>/Duke-Breast-Cancer-MRI/Breast_MRI_NNN/<study>/<series>/1-001.dcm ...
    <out>/Clinical_and_Other_Features.xlsx   group row, names row, legend row, then one row per patient
    <out>/Annotation_Boxes.xlsx              one tumour box per patient (1-based, inclusive)

Each patient is an axial stack through a phantom chest: two breasts (fat with fibroglandular
tissue, skin), pectoral muscle, lung and heart behind the chest wall, and one tumour in one
breast, acquired twice: a fat-saturated pre-contrast series and a first post-contrast series in
which the tumour, the heart and (mildly) the fibroglandular tissue enhance. The tumour's diameter
sets its T stage, on the real cut-offs (T1 <= 20 mm, T2 <= 50 mm, T3 > 50 mm) scaled by 0.4 so
that large tumours still fit the 47 x 47 x 5 ROI of the small twin volumes: T1 <= 8 mm,
T2 <= 20 mm, T3 > 20 mm (a fifth of the large tumours are labelled T4; unlike real T4 they do
not invade skin or chest wall). ``difficulty`` narrows the size gap between T1/T2 and T3/T4
and lowers the tumour's contrast to fibroglandular tissue. Vendor differences in appearance come
from :mod:`harmonia.synth`; series descriptions, matrix, pixel size, slice thickness and the
direction of instance numbering are vendor-typical choices made here.

This module does not import the loader: file, column and series names are spelled out
independently, so a loader that misreads the real layout fails its tests on the twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from harmonia.api import TwinSettings
from harmonia.io import write_dicom_series
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, smooth_field, twin_signature

COLLECTION = "Duke-Breast-Cancer-MRI"
CLINICAL_XLSX = "Clinical_and_Other_Features.xlsx"
BOXES_XLSX = "Annotation_Boxes.xlsx"
T_STAGE = "Staging(Tumor Size)# [T]"
#: the clinical sheet's columns in the twin, under their group-row headings, with a legend-row entry each
CLINICAL_COLUMNS = (
    ("Patient Information", "Patient ID", ""),
    ("", "Days to MRI (From the Date of Diagnosis)", "days"),
    ("MRI Technical Information", "Manufacturer", "{0 = GE, 1 = Siemens} (twin coding)"),
    ("", "Manufacturer Model Name", ""),
    ("", "Field Strength (Tesla)", "T"),
    ("Tumor Characteristics", T_STAGE, "{0 = T0, 1 = T1, 2 = T2, 3 = T3, 4 = T4}"),
    ("", "Staging(Nodes)#(Nx replaced by -1)[N]", "{-1 = Nx, 0 = N0, 1 = N1, 2 = N2, 3 = N3}"),
)
BOX_COLUMNS = ["Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice"]

# Tissues of the phantom
AIR, FAT, FGT, SKIN, MUSCLE, LUNG, HEART, TUMOUR = range(8)
#: clean fat-saturated T1 intensities (a.u.) before contrast; the tumour's is set by difficulty
PRE = {AIR: 0.0, FAT: 55.0, FGT: 240.0, SKIN: 170.0, MUSCLE: 190.0, LUNG: 20.0, HEART: 210.0}
#: signal gain of each tissue in the first post-contrast phase
ENHANCEMENT = {AIR: 1.0, FAT: 1.05, FGT: 1.35, SKIN: 1.2, MUSCLE: 1.2, LUNG: 1.0, HEART: 3.0, TUMOUR: 2.6}
#: invented identifiers an anonymiser could have left in a header; they must never reach harmonia's output
FAKE_NAMES = ("DOE^JANE", "ROE^MARY", "MUSTERFRAU^ERIKA", "ROSSI^MARIA", "TANAKA^HANAKO", "SILVA^ANA")


@dataclass(frozen=True)
class Site:
    """How one vendor's scanners are written: header names, series descriptions and acquisition geometry."""

    manufacturer: str
    models: tuple[str, ...]
    field_tesla: float
    #: (pre-contrast, first post-contrast) series descriptions, one pair per protocol version
    descriptions: tuple[tuple[str, str], ...]
    pixel_mm: float
    slice_mm: float
    rows: int
    cols: int
    slices: int
    #: instance numbers run against the slice position (head to feet) rather than along it
    descending: bool


SITES = {
    "GE": Site(
        "GE MEDICAL SYSTEMS",
        ("Signa HDxt", "SIGNA EXCITE"),
        1.5,
        (("Ax Vibrant MultiPhase", "Ph1/Ax Vibrant MultiPhase"), ("ax 3d dyn pre", "Ph1/ax 3d dyn")),
        0.9,
        2.2,
        96,
        160,
        16,
        False,
    ),
    "Siemens": Site(
        "SIEMENS",
        ("Avanto", "TrioTim"),
        3.0,
        (("ax dyn pre", "ax dyn 1st pass"), ("ax 3d dyn pre", "ax 3d dyn 1st pass")),
        0.85,
        2.0,
        104,
        168,
        18,
        True,
    ),
}


@dataclass(frozen=True)
class Breasts:
    """One patient's anatomy and tumour, in mm (x across, y from the front of the image, z along the body)."""

    chest_y: float
    breast_x: float
    breast_rx: float
    breast_depth: float
    breast_rz: float
    density: float
    side: int
    tumour: tuple[float, float, float]
    diameter: float
    stage: int


# --------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------


def draw_breasts(rng: np.random.Generator, large: bool, difficulty: float) -> Breasts:
    """A random patient; ``large`` tumours are T3/T4, others T1/T2, with a size gap that shrinks with difficulty."""
    if large:
        diameter = rng.uniform(32.0 - 11.0 * difficulty, 36.0)
        stage = 4 if rng.random() < 0.2 else 3
    else:
        diameter = rng.uniform(5.0, 12.0 + 8.0 * difficulty)
        stage = 1 if diameter <= 8.0 else 2
    chest_y, depth, rx = rng.uniform(54, 60), rng.uniform(47, 52), rng.uniform(27, 32)
    bx = rng.uniform(35, 39)
    side = int(rng.choice([-1, 1]))
    r = diameter / 2
    lo, hi = chest_y - depth + r + 3, chest_y - r - 4
    y = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
    x = side * bx + rng.uniform(-0.2, 0.2) * rx
    return Breasts(
        chest_y=chest_y,
        breast_x=bx,
        breast_rx=rx,
        breast_depth=depth,
        breast_rz=rng.uniform(34, 42),
        density=rng.uniform(0.2, 0.6),
        side=side,
        tumour=(x, y, rng.uniform(-3, 3)),
        diameter=diameter,
        stage=stage,
    )


def phantom(anatomy: Breasts, site: Site, rng: np.random.Generator) -> np.ndarray:
    """The tissue map ``(z, y, x)`` of one patient on ``site``'s acquisition grid."""
    shape = (site.slices, site.rows, site.cols)
    spacing = (site.slice_mm, site.pixel_mm, site.pixel_mm)
    z, y, x = np.meshgrid(
        (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0],
        np.arange(shape[1]) * spacing[1],
        (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2],
        indexing="ij",
    )
    a = anatomy
    tissues = np.full(shape, AIR, np.int64)
    behind = y >= a.chest_y
    tissues[behind] = LUNG
    tissues[behind & (y < a.chest_y + 7)] = MUSCLE
    heart = ((x + 14) / 26) ** 2 + ((y - a.chest_y - 30) / 20) ** 2 < 1
    tissues[behind & heart & (y >= a.chest_y + 7)] = HEART
    glands = smooth_field(shape, 0.12, rng, spacing)
    for side in (-1, 1):
        u = (
            ((x - side * a.breast_x) / a.breast_rx) ** 2
            + ((y - a.chest_y) / a.breast_depth) ** 2
            + (z / a.breast_rz) ** 2
        )
        breast = (u < 1) & ~behind
        tissues[breast] = SKIN
        inner = breast & (u < (1 - 1.8 / a.breast_rx) ** 2)
        tissues[inner] = FAT
        tissues[inner & (u < 0.7) & (glands > 0.5 - a.density)] = FGT
    tx, ty, tz = a.tumour
    dx, dy, dz = x - tx, y - ty, z - tz
    rho = np.sqrt(dx**2 + dy**2 + dz**2) / (a.diameter / 2)
    # a lobulated margin: the radius varies with direction by up to 12 %
    phase = rng.uniform(0, 2 * math.pi, 2)
    lobes = np.sin(3 * np.arctan2(dy, dx) + phase[0]) * np.cos(2 * np.arctan2(dz, np.hypot(dx, dy)) + phase[1])
    tissues[(rho < 1 + 0.12 * lobes) & (tissues != AIR)] = TUMOUR
    return tissues


def intensities(difficulty: float, post: bool) -> list[float]:
    """Clean intensity per tissue before (or after) contrast; the tumour's contrast to FGT falls with difficulty."""
    values = {**PRE, TUMOUR: PRE[FGT] + 140.0 * (1 - 0.75 * difficulty)}
    if post:
        values = {t: v * ENHANCEMENT[t] for t, v in values.items()}
    return [values[t] for t in range(len(values))]


def tumour_box(tissues: np.ndarray, descending: bool) -> dict[str, int]:
    """The tumour's bounding box as the annotation sheet gives it: 1-based, inclusive, slices by instance number."""
    z, y, x = np.nonzero(tissues == TUMOUR)
    n = tissues.shape[0]
    slices = (n - z.max(), n - z.min()) if descending else (z.min() + 1, z.max() + 1)
    return {
        "Start Row": int(y.min()) + 1,
        "End Row": int(y.max()) + 1,
        "Start Column": int(x.min()) + 1,
        "End Column": int(x.max()) + 1,
        "Start Slice": int(slices[0]),
        "End Slice": int(slices[1]),
    }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def number_instances_descending(files: tuple[Path, ...]) -> None:
    """Renumber a written series so that instance 1 is the last slice along the slice normal (head first)."""
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        dataset.InstanceNumber = len(files) - k
        dataset.save_as(path, enforce_file_format=True)


def write_patient(
    folder: Path, patient_id: str, anatomy: Breasts, vendor: str, settings: TwinSettings, rng: np.random.Generator
) -> dict[str, int]:
    """Both series of one patient under ``folder``; returns the tumour box as the annotation sheet gives it."""
    site = SITES[vendor]
    tissues = phantom(anatomy, site, rng)
    signature = twin_signature(vendor, "MRI", settings)
    pre_description, post_description = site.descriptions[int(rng.integers(len(site.descriptions)))]
    study = folder / f"01-01-1990-NA-MRI BREAST BILATERAL WWO-{int(rng.integers(10000, 99999))}"
    header = {
        "patient_name": FAKE_NAMES[int(rng.integers(len(FAKE_NAMES)))],
        "patient_id": patient_id,
        "birth_date": f"19{int(rng.integers(35, 80))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "model_name": site.models[int(rng.integers(len(site.models)))],
    }
    for number, (description, post) in enumerate(((pre_description, False), (post_description, True)), start=3):
        seed = derive_seed("mri-breast-twin-acquire", settings.seed, patient_id, description)
        image = acquire(
            tissues,
            intensities(settings.difficulty, post),
            signature,
            seed=seed,
            spacing=(site.slice_mm, site.pixel_mm, site.pixel_mm),
        )
        series = write_dicom_series(
            study / f"{number}.000000-{description.replace('/', '')}-{int(rng.integers(10000, 99999))}",
            np.clip(image, 0, None),
            (site.slice_mm, site.pixel_mm, site.pixel_mm),
            modality="MR",
            manufacturer=site.manufacturer,
            series_description=description,
            origin=(-(site.cols - 1) / 2 * site.pixel_mm, 0.0, -(site.slices - 1) / 2 * site.slice_mm),
            extra={"SeriesNumber": number, "MagneticFieldStrength": site.field_tesla, "ScanningSequence": "GR"},
            file_name="1-{index:03d}.dcm",
            **header,
        )
        if site.descending:
            number_instances_descending(series.files)
    return tumour_box(tissues, site.descending)


def clinical_row(patient_id: str, anatomy: Breasts, vendor: str, rng: np.random.Generator, staged: bool) -> list:
    """One clinical-sheet row, in CLINICAL_COLUMNS order; an unstaged patient has an empty T cell."""
    site = SITES[vendor]
    return [
        patient_id,
        int(rng.integers(0, 60)),
        0 if vendor == "GE" else 1,
        site.models[0],
        site.field_tesla,
        anatomy.stage if staged else None,
        int(rng.integers(-1, 3)),
    ]


def write_sheets(out: Path, clinical: list[list], boxes: list[dict]) -> None:
    """The clinical sheet with its three header rows (group, names, legend) and the one-header box sheet."""
    header = [[c[i] for c in CLINICAL_COLUMNS] for i in range(3)]
    rows = header + sorted(clinical, key=lambda row: row[0])
    pd.DataFrame(rows).to_excel(out / CLINICAL_XLSX, header=False, index=False)
    table = pd.DataFrame(boxes, columns=BOX_COLUMNS).sort_values("Patient ID")
    table.to_excel(out / BOXES_XLSX, index=False)


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` staged patients per vendor plus one unstaged Siemens patient.

    Half of each vendor's patients (rounded down) have a T3/T4 tumour. Deterministic in ``settings``.
    """
    out = Path(out)
    rng = np.random.default_rng(derive_seed("mri-breast-twin", settings.seed))
    plan = [(vendor, k < settings.patients // 2, True) for vendor in SITES for k in range(settings.patients)]
    plan.append(("Siemens", False, False))
    numbers = rng.permutation(len(plan)) + 1
    clinical, boxes = [], []
    for number, (vendor, large, staged) in zip(numbers, plan):
        patient_id = f"Breast_MRI_{number:03d}"
        patient_rng = np.random.default_rng(derive_seed("mri-breast-twin-patient", settings.seed, patient_id))
        anatomy = draw_breasts(patient_rng, large, settings.difficulty)
        box = write_patient(out / COLLECTION / patient_id, patient_id, anatomy, vendor, settings, patient_rng)
        boxes.append({"Patient ID": patient_id, **box})
        clinical.append(clinical_row(patient_id, anatomy, vendor, patient_rng, staged))
    write_sheets(out, clinical, boxes)
