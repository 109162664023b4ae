"""BRAX: Brazilian labeled chest X-ray dataset (PhysioNet), cardiomegaly present vs absent, manufacturer 3 vs 5.

The loader reads BRAX as distributed (Reis et al., Scientific Data 9:487, 2022)::

    <root>/master_spreadsheet_update.csv     (or master_spreadsheet.csv) one row per image
    <root>/<PngPath>                         e.g. images/id_<PatientID>/Study_<uid>/Series_<uid>/image-<uid>.png
    <root>/<DicomPath>                       e.g. Anonymized_DICOMs/id_<PatientID>/.../image-<uid>.dcm

The domain is the spreadsheet's integer-coded ``Manufacturer`` (BRAX conceals the names), the
label its ``Cardiomegaly`` cell (1 present, 0 absent, -1 uncertain, blank not mentioned). Items
are images; patients are the spreadsheet's (already pseudonymous) ``PatientID``, which leaves
this module only as harmonia's own pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, ImageSet, ItemsBuilder, Task, TwinSettings, require_known
from harmonia.errors import DataError, UnreadableFile, one_line
from harmonia.geometry import to_grid
from harmonia.io import read_image
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.xray_chest_twin import write_twin

#: the current release's sheet first, then the original one
SHEETS = ("master_spreadsheet_update.csv", "master_spreadsheet.csv")
PATIENT, LABEL, MANUFACTURER, VIEW = "PatientID", "Cardiomegaly", "Manufacturer", "ViewPosition"
PNG, DICOM = "PngPath", "DicomPath"
OBTAIN = (
    "request credentialed access to BRAX at https://physionet.org/content/brax/ (data-use agreement), download "
    "the spreadsheet with the PNG images (or the DICOMs) and point cohort.root (or $HARMONIA_DATA/xray_chest) "
    "at the folder holding master_spreadsheet_update.csv"
)


class XrayChestParams(CohortParams):
    """Which images count, how uncertain and unmentioned labels are read, and the item size."""

    manufacturers: list[str] = Field(
        default_factory=lambda: ["3", "5"],
        min_length=1,
        description="the spreadsheet's integer Manufacturer codes used as domains, in study order",
    )
    image_format: Literal["png", "dicom"] = Field(
        "png", description="read PngPath (png) or DicomPath (dicom); DICOM is read when the sheet has no PngPath"
    )
    image_size: int = Field(
        128, ge=16, le=1024, description="side of the square item: the image is padded to a square and resized"
    )
    uncertain: Literal["exclude", "positive", "negative"] = Field(
        "exclude", description="Cardiomegaly -1 (uncertain mention): left out, or read as present (U-Ones) or absent"
    )
    unmentioned: Literal["negative", "exclude"] = Field(
        "negative", description="blank Cardiomegaly (the report does not mention it): read as absent, or left out"
    )
    views: list[str] = Field(
        default_factory=lambda: ["PA", "AP"],
        description="ViewPosition values kept (frontal views by default); an empty list keeps every view",
    )

    @field_validator("manufacturers")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        codes = [manufacturer_code(v) for v in value]
        if None in codes:
            raise ValueError(f"manufacturer codes are whole numbers, got {value}")
        if len(set(codes)) != len(codes):
            raise ValueError(f"a manufacturer code is listed twice: {value}")
        return codes

    @field_validator("views")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.strip().upper() for v in value]


def manufacturer_code(value: object) -> str | None:
    """An integer manufacturer code as text ("3.0" and 3 both give "3"); None when blank or not a whole number."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() else None


# --------------------------------------------------------------------------------------------
# The spreadsheet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One image row as the loader uses it; ``patient`` is the raw PatientID and never leaves this module."""

    patient: str
    domain: str
    target: int
    path: Path
    line: int


def find_sheet(root: Path) -> Path | None:
    return next((root / name for name in SHEETS if (root / name).is_file()), None)


def read_sheet(path: Path) -> pd.DataFrame:
    """The spreadsheet with IDs and paths as text; DataError if unreadable or lacking a needed column."""
    try:
        table = pd.read_csv(path, dtype={PATIENT: str, PNG: str, DICOM: str, VIEW: str}, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: unreadable BRAX spreadsheet ({one_line(exc)})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in (PATIENT, LABEL, MANUFACTURER) if c not in table.columns]
    if PNG not in table.columns and DICOM not in table.columns:
        missing.append(f"{PNG} or {DICOM}")
    if missing:
        raise DataError(f"{path}: spreadsheet lacks column(s) {missing}; found {list(table.columns)}")
    return table


def label_of(value: object, params: XrayChestParams, sheet: Path, line: int) -> int | None:
    """The class (1 present, 0 absent) of a Cardiomegaly cell under ``params``, or None if the image is left out."""
    if pd.isna(value) or str(value).strip() == "":
        return 0 if params.unmentioned == "negative" else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number not in (1.0, 0.0, -1.0):
        raise DataError(f"{sheet} line {line}: {LABEL} is {value!r}; expected 1, 0, -1 or blank")
    if number == -1.0:
        return {"exclude": None, "positive": 1, "negative": 0}[params.uncertain]
    return int(number)


def image_column(table: pd.DataFrame, params: XrayChestParams, sheet: Path) -> str:
    """The path column to read: PngPath, or DicomPath when DICOM is asked for or the sheet has no PngPath."""
    if params.image_format == "png" and PNG in table.columns:
        return PNG
    if DICOM not in table.columns:
        raise DataError(f"{sheet}: image_format is dicom but the spreadsheet has no {DICOM} column")
    return DICOM


def read_images(root: Path, params: XrayChestParams) -> list[Image]:
    """Every image row of the configured manufacturers and views with a usable label, in sheet order."""
    sheet = find_sheet(root)
    if sheet is None:
        raise DataError(f"{root}: no {' or '.join(SHEETS)} found; {OBTAIN}")
    table = read_sheet(sheet)
    if params.views and VIEW not in table.columns:
        raise DataError(f"{sheet}: no {VIEW} column to select views {params.views} by; set views: [] to keep all")
    column = image_column(table, params, sheet)
    images = []
    for line, (_, row) in enumerate(table.iterrows(), start=2):
        domain = manufacturer_code(row[MANUFACTURER])
        if domain not in params.manufacturers:
            continue
        if params.views and str(row[VIEW]).strip().upper() not in params.views:
            continue
        target = label_of(row[LABEL], params, sheet, line)
        if target is None:
            continue
        patient, relative = str(row[PATIENT]).strip(), row[column]
        if pd.isna(row[PATIENT]) or not patient:
            raise DataError(f"{sheet} line {line}: no {PATIENT}")
        if pd.isna(relative) or not str(relative).strip():
            raise DataError(f"{sheet} line {line}: no {column}")
        images.append(Image(patient, domain, target, root / str(relative).strip(), line))
    return images


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """One patient's images of one domain."""

    raw_id: str
    domain: str
    images: tuple[Image, ...]

    @property
    def stratum(self) -> str:
        return "cardiomegaly" if any(i.target for i in self.images) else "none"


class XrayChestCohort(Cohort):
    """BRAX chest radiographs, manufacturer 3 vs 5: cardiomegaly present vs absent."""

    name = "xray_chest"
    modality = "X-ray"
    obtain = OBTAIN
    Params = XrayChestParams
    params: XrayChestParams

    task = Task(kind="classification", class_names=("no cardiomegaly", "cardiomegaly"), spatial_dims=2)

    def domains(self) -> list[str]:
        return list(self.params.manufacturers)

    @cached_property
    def _patients(self) -> dict[str, Patient]:
        """Pseudonym -> patient, in sheet order.

        A patient imaged on several of the configured manufacturers keeps the images of the one
        most of them come from (the earlier one in the sheet on a tie): no patient is in two domains.
        """
        by_patient: dict[str, list[Image]] = {}
        for image in read_images(self.root, self.params):
            by_patient.setdefault(image.patient, []).append(image)
        patients = {}
        for raw_id, images in by_patient.items():
            order = [i.domain for i in images]
            domain = max(order, key=lambda d: (order.count(d), -order.index(d)))
            kept = tuple(i for i in images if i.domain == domain)
            patients[pseudonymize(raw_id, self.name)] = Patient(raw_id, domain, kept)
        return patients

    def index(self) -> pd.DataFrame:
        rows = [{"patient": p, "domain": r.domain, "stratum": r.stratum} for p, r in self._patients.items()]
        return pd.DataFrame(rows, columns=["patient", "domain", "stratum"])

    def load(self, patients: Sequence[str]) -> ImageSet:
        require_known(patients, self._patients)
        items = ItemsBuilder((self.params.image_size, self.params.image_size))
        for pseudonym in patients:
            patient = self._patients[pseudonym]
            for image in patient.images:
                pixels = self._pixels(image)
                if pixels is not None:
                    items.add(pixels, [image.target], pseudonym, patient.domain)
        return items.image_set()

    def _pixels(self, image: Image) -> np.ndarray | None:
        """One image padded to a square and resized to ``image_size`` (native units); None if skipped."""
        try:
            if not image.path.is_file():
                raise UnreadableFile(image.path, f"missing: the spreadsheet lists it on line {image.line}")
            array = read_image(image.path).array
        except UnreadableFile as error:
            self.unreadable_file(error, image.patient)
            return None
        if array.ndim == 3 and len(array) == 1:
            array = array[0]
        if array.ndim != 2:
            raise DataError(f"{image.path}: expected one planar radiograph, got an array of shape {array.shape}")
        size = self.params.image_size
        # pixels as the unit: the whole image fits the square, aspect ratio kept, zero padding on the short side
        step = max(array.shape) / size
        return to_grid(array[None].astype(np.float32), (1.0, 1.0), size, step, 1)[0]

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the BRAX release here; {OBTAIN}")
        sheet = find_sheet(root)
        if sheet is None:
            raise DataError(f"{root}: no {' or '.join(SHEETS)} found; {OBTAIN}")
        read_sheet(sheet)

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [XrayChestCohort]
