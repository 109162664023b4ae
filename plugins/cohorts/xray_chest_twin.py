"""A SYNTHETIC twin of BRAX (PhysioNet): phantom chest radiographs in the release's own layout.

Everything written here is synthetic: phantoms, not patients. The twin mirrors the BRAX 1.1.0
release folder::

    master_spreadsheet_update.csv                                          one row per image
    images/id_<PatientID>/Study_<uid>/Series_<uid>/image-<uid>.png         8-bit PNG
    Anonymized_DICOMs/id_<PatientID>/Study_<uid>/Series_<uid>/image-<uid>.dcm   DX or CR DICOM

Each image is a frontal (PA or AP) projection of a phantom chest: body wall, two lungs with
vessels and ribs, domed hemidiaphragms over the abdomen, mediastinum with spine and aortic knob,
clavicles, and the heart. The cardiothoracic ratio (heart width over inner thoracic width) sets
the label: above 0.5 cardiomegaly, below it none, near 0.5 "uncertain"; ``difficulty`` narrows the
gap between the classes. As in BRAX, manufacturers are integer codes; each code's images pass
through the scanner signature :mod:`harmonia.synth` draws for that code, and pixel size and
modality (DX or CR) are code-typical acquisition choices.

This module does not import the loader: file, folder and column names are spelled out
independently, so a loader that misreads the real layout fails its tests on the twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pydicom.uid import generate_uid

from harmonia.api import TwinSettings
from harmonia.io import write_dicom_series
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, smooth_field, twin_signature

SHEET = "master_spreadsheet_update.csv"
FINDINGS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
COLUMNS = [
    "DicomPath",
    "PngPath",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    *FINDINGS,
    "ViewPosition",
    "Rows",
    "Columns",
    "Manufacturer",
]
#: stored values are 12-bit; the PNGs scale them linearly to 8 bits
FULL_SCALE = 4095.0

AIR, SOFT, LUNG, VESSEL, RIB, MEDIASTINUM, HEART, ABDOMEN, SPINE, CLAVICLE = range(10)
#: clean brightness per tissue (MONOCHROME2: denser along the ray = brighter)
BRIGHTNESS = [80.0, 1700.0, 600.0, 850.0, 1050.0, 2300.0, 2250.0, 2400.0, 2550.0, 2500.0]


@dataclass(frozen=True)
class Detector:
    """How one anonymised manufacturer code's images are written: modality and typical pixel size."""

    modality: str
    pixel_mm: float


#: the two study codes; code 1 stands for BRAX's other manufacturers, which the study leaves out
DETECTORS = {"3": Detector("DX", 2.2), "5": Detector("CR", 2.5), "1": Detector("DX", 2.4)}
#: invented names planted in the DICOM headers; they must never reach harmonia's output
FAKE_NAMES = ("SILVA^JOAO", "SANTOS^MARIA", "OLIVEIRA^ANA", "SOUZA^PEDRO", "PEREIRA^LUCAS")
FIELD_MM = (430.0, 360.0)  # rows x columns of the detector field, before shrinking to pixels


@dataclass(frozen=True)
class Chest:
    """One patient's anatomy (mm) and the cardiothoracic ratio that sets the Cardiomegaly label."""

    thorax_half: float
    ratio: float
    label: float | None  # 1 positive, 0 negative, -1 uncertain; None = not mentioned (blank cell)
    dome: float
    shift: float


# --------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------


#: the Cardiomegaly label of successive patients of one code: 3/8 present, 1/8 uncertain, 4/8 absent
#: (half of them explicitly negated, half not mentioned), so even a tiny twin has every kind
LABEL_CYCLE = (1.0, None, 0.0, -1.0, 1.0, None, 1.0, 0.0)


def draw_chest(rng: np.random.Generator, label: float | None, difficulty: float) -> Chest:
    """A random chest whose cardiothoracic ratio fits ``label``: above 0.5 present, below absent, near 0.5 uncertain.

    The margin between a class's ratios and 0.5 falls from 0.08 (easy) to 0.01 (hard).
    """
    margin = 0.01 + 0.07 * (1 - difficulty)
    if label == 1.0:
        ratio = rng.uniform(0.5 + margin, 0.66)
    elif label == -1.0:
        ratio = rng.uniform(0.48, 0.52)
    else:
        ratio = rng.uniform(0.38, 0.5 - margin)
    return Chest(
        thorax_half=rng.uniform(118, 140),
        ratio=ratio,
        label=label,
        dome=rng.uniform(85, 115),
        shift=rng.normal(0, 6),
    )


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def dome_height(x: np.ndarray, chest: Chest) -> np.ndarray:
    """Height (mm, downwards) of the hemidiaphragms under each column; the patient's right (image left) is higher."""
    half = chest.thorax_half
    out = np.empty_like(x)
    for side, base in ((-1, chest.dome - 8), (1, chest.dome)):
        centre = side * 0.5 * half
        bulge = 35 * np.clip(1 - ((x - centre) / (0.55 * half)) ** 2, 0, None)
        cols = (x < 0) if side < 0 else (x >= 0)
        out[cols] = (base - bulge)[cols]
    return out


def radiograph_tissues(chest: Chest, shape: tuple[int, int], pixel: float, texture: np.ndarray) -> np.ndarray:
    """The tissue seen first along each ray of a frontal projection, ``[rows, columns]``."""
    rows, cols = shape
    y, x = np.mgrid[:rows, :cols].astype(np.float32)
    y, x = (y - (rows - 1) / 2) * pixel, (x - (cols - 1) / 2) * pixel - chest.shift
    half = chest.thorax_half
    dome = dome_height(x, chest)
    tissues = np.full(shape, AIR, np.int64)
    body = (np.abs(x) / (half + 32)) ** 4 + (np.abs(y - 40) / 260) ** 4 < 1
    tissues[body] = SOFT
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= ((x - side * 0.52 * half) / (0.48 * half)) ** 2 + ((y + 20) / 150) ** 2 < 1
    lungs &= y < dome
    tissues[lungs] = LUNG
    tissues[lungs & (texture > 0.35)] = VESSEL
    for k in range(8):
        rib = np.abs(y - (-150 + 30 * k) - 30 * (x / half) ** 2) < 4
        tissues[lungs & rib] = RIB
    tissues[body & (y > dome)] = ABDOMEN
    tissues[(np.abs(x - 4) < 24) & (y < dome) & (y > -200)] = MEDIASTINUM
    tissues[(x - 26) ** 2 + (y + 85) ** 2 < 17**2] = MEDIASTINUM  # aortic knob, patient's left
    tissues[body & (np.abs(x) < 15)] = SPINE
    width = chest.ratio * 2 * half
    height = 0.85 * width
    centre_x, centre_y = 0.14 * width, chest.dome - 0.5 * height
    heart = ((x - centre_x) / (width / 2)) ** 2 + ((y - centre_y) / (height / 2)) ** 2 < 1
    tissues[heart & (y < dome + 10)] = HEART
    for side in (-1, 1):
        t = np.clip((side * x - 15) / 105, 0, 1)
        clavicle = (side * x > 15) & (side * x < 120) & (np.abs(y - (-165 - 20 * t)) < 6)
        tissues[body & clavicle] = CLAVICLE
    return tissues


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def uid(*parts: object) -> str:
    """A deterministic DICOM UID from ``parts``, used in folder and file names as BRAX does."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def write_image(
    out: Path, patient_id: str, study: int, chest: Chest, code: str, settings: TwinSettings, rng: np.random.Generator
) -> dict[str, object]:
    """One radiograph as DICOM and PNG; returns its spreadsheet cells (paths relative to ``out``)."""
    detector = DETECTORS[code]
    pixel = detector.pixel_mm * rng.uniform(0.97, 1.03)
    shape = (round(FIELD_MM[0] / pixel), round(FIELD_MM[1] / pixel))
    texture = smooth_field(shape, 0.04, rng, pixel)
    tissues = radiograph_tissues(chest, shape, pixel, texture)
    signature = twin_signature(code, "X-ray", settings)
    seed = derive_seed("xray_chest-twin-acquire", settings.seed, patient_id, study)
    image = np.clip(acquire(tissues, BRIGHTNESS, signature, seed=seed, spacing=pixel), 0, FULL_SCALE)

    study_uid = uid("study", settings.seed, patient_id, study)
    series_uid, image_uid = uid("series", study_uid), uid("image", study_uid)
    where = Path(f"id_{patient_id}") / f"Study_{study_uid}" / f"Series_{series_uid}"
    dicom = Path("Anonymized_DICOMs") / where / f"image-{image_uid}.dcm"
    png = Path("images") / where / f"image-{image_uid}.png"
    write_dicom_series(
        out / dicom.parent,
        image,
        (pixel, pixel),
        modality=detector.modality,
        # BRAX conceals manufacturers behind integer codes: the tag is there but blanked
        manufacturer="",
        patient_name=str(rng.choice(FAKE_NAMES)),
        patient_id=patient_id,
        birth_date=f"19{int(rng.integers(30, 99))}0101",
        study_uid=study_uid,
        extra={"SeriesInstanceUID": series_uid},
        file_name=dicom.name,
    )
    (out / png).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.rint(image / FULL_SCALE * 255).astype(np.uint8)), str(out / png))
    return {"DicomPath": dicom.as_posix(), "PngPath": png.as_posix(), "Rows": shape[0], "Columns": shape[1]}


def sheet_row(patient_id: str, chest: Chest, view: str, code: str, rng: np.random.Generator) -> dict[str, object]:
    """The spreadsheet cells of one image besides its paths: demographics in BRAX's coding and the labels."""
    findings: dict[str, float | None] = {name: None for name in FINDINGS}
    findings["Cardiomegaly"] = chest.label
    if chest.label is None:
        findings["No Finding"] = 1.0
    elif chest.label == 1.0:
        findings["Enlarged Cardiomediastinum"] = 1.0 if rng.random() < 0.3 else None
    if rng.random() < 0.15:
        findings["Support Devices"] = 1.0
    age = int(rng.integers(4, 17)) * 5
    return {
        "PatientID": patient_id,
        "PatientSex": str(rng.choice(["M", "F"])),
        "PatientAge": "85 or more" if age >= 85 else f"{age}-{age + 4}",
        "AccessionNumber": int(rng.integers(10**7, 10**8)),
        "StudyDate": f"21{int(rng.integers(10, 40))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        **findings,
        "ViewPosition": view,
        "Manufacturer": int(code),
    }


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` patients per study code (3 and 5), one of code 1.

    A patient has one or two frontal images (PA, sometimes a later AP), each in its own study,
    with the same heart; labels of a patient's images agree. Deterministic in ``settings``.
    """
    rng = np.random.default_rng(derive_seed("xray_chest-twin", settings.seed))
    codes = [(code, k) for code in ("3", "5") for k in range(settings.patients)] + [("1", 0)]
    ids = 10**9 + rng.choice(9 * 10**9, size=len(codes), replace=False)
    rows = []
    for (code, k), number in zip(codes, ids):
        patient_id = str(number)
        patient_rng = np.random.default_rng(derive_seed("xray_chest-twin-patient", settings.seed, patient_id))
        chest = draw_chest(patient_rng, LABEL_CYCLE[k % len(LABEL_CYCLE)], settings.difficulty)
        views = ["PA"] if patient_rng.random() < 0.6 else ["PA", "AP"]
        for study, view in enumerate(views):
            cells = write_image(out, patient_id, study, chest, code, settings, patient_rng)
            rows.append({**cells, **sheet_row(patient_id, chest, view, code, patient_rng)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.to_csv(out / SHEET)
