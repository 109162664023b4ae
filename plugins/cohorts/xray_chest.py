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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, Items, PatientRecord, Task, TwinSettings
from harmonia.domains import one_domain_per_patient
from harmonia.errors import DataError, UnreadableFile
from harmonia.geometry import slice_size_field, to_grid
from harmonia.io import read_image
from harmonia.sheets import find_file, read_table, require_columns
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
    image_size: int = slice_size_field("side of the square item: the image is padded to a square and resized")
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


def read_sheet(path: Path) -> pd.DataFrame:
    """The spreadsheet with IDs and paths as text; DataError if unreadable or lacking a needed column."""
    text = {PATIENT: str, PNG: str, DICOM: str, VIEW: str}
    table = read_table(path, "BRAX spreadsheet", dtype=text, low_memory=False)
    require_columns(table, path, "spreadsheet", [PATIENT, LABEL, MANUFACTURER, (PNG, DICOM)])
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
    sheet = find_file([root], SHEETS)
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
class Radiograph(PatientRecord):
    """One image of a patient in the domain most of the patient's images come from; ``stratum`` is patient-level."""

    image: Image


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

    @property
    def item_shape(self) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> Iterator[Radiograph]:
        """Every image, patients in sheet order.

        A patient imaged on several of the configured manufacturers keeps the images of the one
        most of them come from (the earlier one in the sheet on a tie): no patient is in two domains.
        """
        images = ((image.patient, image.domain, image) for image in read_images(self.root, self.params))
        for raw_id, (domain, kept) in one_domain_per_patient(images).items():
            stratum = "cardiomegaly" if any(i.target for i in kept) else "none"
            for image in kept:
                yield Radiograph(raw_id=raw_id, domain=domain, stratum=stratum, image=image)

    def read_items(self, radiograph: Radiograph) -> Items:
        """The image padded to a square and resized to ``image_size`` (native units), and its label."""
        image = radiograph.image
        if not image.path.is_file():
            raise UnreadableFile(image.path, f"missing: the spreadsheet lists it on line {image.line}")
        array = read_image(image.path).array
        if array.ndim == 3 and len(array) == 1:
            array = array[0]
        if array.ndim != 2:
            raise DataError(f"{image.path}: expected one planar radiograph, got an array of shape {array.shape}")
        size = self.params.image_size
        # pixels as the unit: the whole image fits the square, aspect ratio kept, zero padding on the short side
        step = max(array.shape) / size
        return to_grid(array[None].astype(np.float32), (1.0, 1.0), size, step, 1), np.array([image.target])

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the BRAX release here; {OBTAIN}")
        sheet = find_file([root], SHEETS)
        if sheet is None:
            raise DataError(f"{root}: no {' or '.join(SHEETS)} found; {OBTAIN}")
        read_sheet(sheet)

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [XrayChestCohort]
