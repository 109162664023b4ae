"""Synthetic twin of OPC-Radiomics: SYNTHETIC oropharyngeal CT phantoms, GTV contours and a clinical sheet.

Written in the layout the loader expects (see :mod:`harmonia_plugins.cohorts.ct_oropharyngeal`)::

    <out>/OPC-Radiomics-Clinical-Data.xlsx
    <out>/OPC-Radiomics/OPC-NNNNN/<MM-DD-YYYY-NA-study-NNNNN>/<N.000000-series-NNNNN>/1-NNN.dcm

The neck phantom, its scanning and the DICOM writing are :mod:`harmonia.synth.head_neck`'s; each
patient has a primary tumour beside the airway and a nodal metastasis, contoured as a primary GTV
and a nodal GTV. The HPV signal is a simple phantom property chosen for this twin, not a model of real tumours: HPV-positive primaries
are smaller and rounder and their node has a cystic (fluid, ~15 HU) core; HPV-negative primaries
are larger and lobulated with a solid node. ``difficulty`` shrinks the size and margin difference
and fills the cyst towards solid tumour. The two domains' scanners are written as
"GE MEDICAL SYSTEMS" and "TOSHIBA". It does not import the loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harmonia.api import TwinSettings
from harmonia.seeding import derive_seed
from harmonia.synth.head_neck import (
    Identity,
    Lesion,
    Neck,
    Scanner,
    anatomy,
    clean_hu,
    draw_lesions,
    oar_rois,
    scan,
    write_ct,
    write_structures,
)

SHEET = "OPC-Radiomics-Clinical-Data.xlsx"
ID_COLUMN, HPV_COLUMN = "Trial PatientID", "HPV P16 status (IHC)"
SCANNERS = {
    "GE": Scanner("GE", "GE MEDICAL SYSTEMS", "LightSpeed Plus", 2.0, 2.5),
    "Toshiba": Scanner("Toshiba", "TOSHIBA", "Aquilion", 2.1, 3.0),
}
#: (primary, node) ROI names, cycled over patients
GTV_NAMES = (("GTV", "GTVn"), ("GTVp", "GTV_N"), ("GTV-P", "GTV-LN1"))
#: how the sheet spells the statuses (as the real one does: stray spaces, strength qualifiers)
POSITIVE_TEXT = ("Positive", "  positive", "Positive -Strong")
NEGATIVE_TEXT = ("Negative", "  Negative")
STUDY = "01-01-2008-NA-RT PLANNING CT"
TUMOUR_HU = 70.0
MATRIX, EXTENT_MM = 96, 80.0


def draw_neck(rng: np.random.Generator, scanner: Scanner, positive: bool, difficulty: float) -> Neck:
    """A neck with a primary and a node whose size, margin and cyst follow the HPV status (less so when hard)."""
    gap = 1 - 0.8 * difficulty
    slices = round(EXTENT_MM / scanner.slice_mm)
    z_mid = slices * scanner.slice_mm * rng.uniform(0.45, 0.55)
    side = rng.choice([-1.0, 1.0])
    radius = rng.uniform(13, 16) * ((1 - 0.35 * gap) if positive else 1.0)
    irregularity = 0.35 - (0.25 * gap if positive else 0.0)
    primary = Lesion((side * rng.uniform(9, 13), rng.uniform(-21, -15), z_mid), radius, irregularity)
    node = Lesion(
        (side * rng.uniform(28, 33), rng.uniform(-10, -4), z_mid - rng.uniform(8, 14)),
        rng.uniform(7, 9),
        0.1,
        cyst=0.7 if positive else 0.0,
    )
    return Neck(MATRIX, slices, (rng.uniform(55, 65), rng.uniform(48, 56)), rng.uniform(4, 9), primary, node)


def cyst_hu(difficulty: float) -> float:
    """Clean HU of the cystic core: fluid (15 HU) when easy, most of the way to solid tumour when hard."""
    return 15.0 + (TUMOUR_HU - 15.0) * 0.8 * difficulty


def write_patient(
    root: Path, who: Identity, scanner: Scanner, positive: bool, settings: TwinSettings, index: int
) -> None:
    """One patient's planning CT and its RTSTRUCT (primary GTV, nodal GTV, two other ROIs)."""
    rng = np.random.default_rng(derive_seed("ct_oropharyngeal-twin-patient", settings.seed, who.patient_id))
    neck = draw_neck(rng, scanner, positive, settings.difficulty)
    tissues = anatomy(neck, scanner, rng)
    masks = draw_lesions(tissues, neck, scanner, rng)
    volume = scan(
        tissues,
        clean_hu(TUMOUR_HU, cyst_hu(settings.difficulty)),
        scanner,
        settings,
        derive_seed("ct_oropharyngeal-twin-scan", settings.seed, who.patient_id),
    )
    patient = root / "OPC-Radiomics" / who.patient_id
    series = write_ct(patient, who, volume, scanner, STUDY, "CT")
    primary_name, node_name = GTV_NAMES[index % len(GTV_NAMES)]
    rois = {
        primary_name: masks["primary"],
        node_name: masks["node"],
        **oar_rois(tissues, masks["primary"] | masks["node"]),
    }
    write_structures(patient, who, series, STUDY, rois)


def sheet_row(patient_id: str, status: str, rng: np.random.Generator) -> dict[str, object]:
    """One clinical-sheet row; only the ID and HPV columns matter to the loader."""
    return {
        ID_COLUMN: patient_id,
        "Age at Diagnosis": int(rng.integers(40, 85)),
        "Sex": str(rng.choice(["Male", "Female"], p=[0.8, 0.2])),
        "Smoking PY": int(rng.integers(0, 60)),
        "Ds Site": "Oropharynx",
        "Subsite": str(rng.choice(["Tonsil", "Base of tongue", "Soft palate"])),
        "T": str(rng.choice(["T1", "T2", "T3", "T4a"])),
        "N": str(rng.choice(["N0", "N1", "N2b", "N2c"])),
        "M ": "M0",
        "Stage(AJCC 7th edition)": str(rng.choice(["III", "IVA", "IVB"])),
        "Path": "Squamous Cell Carcinoma",
        HPV_COLUMN: status,
        "Chemotherapy": str(rng.choice(["Yes", "none"])),
        "Status": str(rng.choice(["Alive", "Dead"])),
    }


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` patients per vendor, HPV status alternating.

    Also one Toshiba patient whose status is "Unknown" and one sheet row without images, as
    in partial downloads. Deterministic in ``settings``.
    """
    rng = np.random.default_rng(derive_seed("ct_oropharyngeal-twin", settings.seed))
    numbers = iter(rng.permutation(np.arange(1, 2 * settings.patients + 3) * 3 + 1))
    rows = []
    for domain, scanner in SCANNERS.items():
        for k in range(settings.patients + (domain == "Toshiba")):
            who = Identity.draw(f"OPC-{next(numbers):05d}", rng)
            positive = (k % 2 == 0) == (domain == "GE")
            status = (
                "Unknown" if k == settings.patients else str(rng.choice(POSITIVE_TEXT if positive else NEGATIVE_TEXT))
            )
            write_patient(out, who, scanner, positive, settings, k)
            rows.append(sheet_row(who.patient_id, status, rng))
    rows.append(sheet_row(f"OPC-{next(numbers):05d}", "Negative", rng))
    pd.DataFrame(rows).sort_values(ID_COLUMN).to_excel(out / SHEET, index=False)
