"""OPC-Radiomics (TCIA): oropharyngeal cancer CT with GTV contours, for HPV (p16) status, GE vs Toshiba scanners.

The loader reads the OPC-Radiomics collection (Kwan et al., Int J Radiat Oncol Biol Phys 2018;
Princess Margaret Cancer Centre) as the NBIA Data Retriever writes it, with the clinical
spreadsheet from the collection page next to it::

    <root>/<clinical sheet>.xlsx | .csv           any name containing "clinical"
    <root>/OPC-Radiomics/<OPC-NNNNN>/<study>/<series>/*.dcm
                                            (also <root>/<patient>/..., <root>/manifest-*/OPC-Radiomics/...)

The sheet's patient ID column (``Trial PatientID`` and other spellings) names the patient
folders; its HPV/p16 column gives the label. Each patient's RTSTRUCT is paired with the CT it
references, the primary GTV ROI(s) give the tumour centroid, and the item is a cube of HU around
that centroid (72 voxels of 1 mm by default). The CT's Manufacturer tag gives the domain.
Raw patient IDs leave this module only as pseudonyms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import Field
from scipy import ndimage

from harmonia import hookimpl
from harmonia.api import Items, RegexPattern, Task, TwinSettings
from harmonia.contoured_ct import ContouredCtCohort, ContouredPatient, GtvParams
from harmonia.ct import AIR_HU
from harmonia.errors import DataError
from harmonia.geometry import crop_around
from harmonia.io import MedicalImage
from harmonia.sheets import column_key, header_row, read_table
from harmonia_plugins.cohorts.ct_oropharyngeal_twin import write_twin

CLASS_NAMES = ("HPV negative", "HPV positive")
OBTAIN = (
    "download the OPC-Radiomics collection from TCIA (https://www.cancerimagingarchive.net/collection/opc-radiomics/, "
    "free) with the NBIA Data Retriever (descriptive directory names) and its clinical data spreadsheet, and point "
    "cohort.root (or $HARMONIA_DATA/ct_oropharyngeal) at the folder holding OPC-Radiomics/ and the spreadsheet"
)
#: ROI names of the primary tumour: GTV..., but not nodal GTVs (GTVn, GTV_N2, GTV-LN, GTV node...)
PRIMARY_GTV = r"^GTV(?![\s_-]*(N|LN|NODE|NODAL)(\d|_|\b))"
#: spellings of the sheet's columns; compared after lower-casing and dropping everything but letters and digits
ID_SPELLINGS = (
    "Trial PatientID",
    "Patient ID",
    "ID",
    "TCIA ID",
    "TCIA Patient ID",
    "TCIA code",
    "Subject ID",
    "dicom_patient_id",
)
HPV_SPELLINGS = (
    "HPV P16 status (IHC)",
    "HPV",
    "HPV Status",
    "p16",
    "P16 Status",
    "p16 IHC",
    "HPV/p16",
    "HPV/p16 status",
    "HPV p16 status",
    "p16 status (IHC)",
)
#: first words of an HPV/p16 cell, after lower-casing; the real sheet writes e.g. "Positive -Strong", "  Negative"
POSITIVE = ("positive", "pos", "yes", "y", "+", "1", "1.0", "p16+", "hpv+")
NEGATIVE = ("negative", "neg", "no", "n", "-", "0", "0.0", "p16-", "hpv-")
UNKNOWN = ("", "unknown", "not", "n/a", "na", "nan", "equivocal", "?", "pending", "missing")
#: how many leading rows may precede the header row (title lines some exports add)
HEADER_SEARCH_ROWS = 10


def patient_key(raw_id: str) -> str:
    """A patient ID as folder names and sheet cells are matched: upper case, no zero padding (OPC-00012 = OPC-12)."""
    return re.sub(r"\d+", lambda digits: str(int(digits.group())), str(raw_id).strip().upper())


def hpv_label(cell: object) -> int | None:
    """1 for an HPV/p16-positive cell, 0 for negative, None for unknown/blank; ValueError for anything else."""
    text = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else " ".join(str(cell).lower().split())
    first = text.split(" ")[0]
    if first in POSITIVE or first.startswith("positive"):
        return 1
    if first in NEGATIVE or first.startswith("negative"):
        return 0
    if first in UNKNOWN:
        return None
    raise ValueError(f"HPV/p16 status {cell!r} is none of positive/negative/yes/no/+/-/unknown/blank")


class OropharyngealParams(GtvParams):
    """Which ROIs are the primary tumour, the cube around its centroid, and how the sheet and vendors are read."""

    roi_pattern: RegexPattern = Field(
        PRIMARY_GTV,
        description="regular expression (case-insensitive, re.search) of the primary-tumour ROI names; the centroid "
        "of the union of matching ROIs centres the cube (default: GTV names except nodal ones)",
    )
    roi_size: int = Field(72, ge=4, le=256, description="side of the cube in voxels (the paper's 72 x 72 x 72)")
    spacing_mm: float | None = Field(
        1.0,
        gt=0,
        le=10,
        description="isotropic voxel size in mm the cube is resampled to (null: native voxels, no resampling)",
    )
    hpv_column: str | None = Field(
        None, description="the sheet's HPV/p16 column, when its name is not a known spelling"
    )
    clinical_file: str | None = Field(
        None,
        description="the clinical sheet, relative to the root, when several files there have 'clinical' in their name",
    )
    canon_as_toshiba: bool = Field(
        True,
        description="count Canon-labelled scanners (Toshiba Medical Systems renamed in 2018) in the Toshiba domain",
    )


# --------------------------------------------------------------------------------------------
# The clinical sheet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicalSheet:
    """HPV labels (None: unknown) by patient key, from one clinical file."""

    path: Path
    labels: dict[str, int | None]


def clinical_candidates(root: Path, collection: str) -> list[Path]:
    """Every .xlsx/.xls/.csv with 'clinical' in its name directly under ``root`` or its collection folder."""
    return sorted(
        p
        for folder in (root, root / collection)
        if folder.is_dir()
        for p in folder.iterdir()
        if p.is_file() and "clinical" in p.name.lower() and p.suffix.lower() in (".xlsx", ".xls", ".csv")
    )


def missing_sheet_message(root: Path, collection: str) -> str:
    return f"{root}: no clinical spreadsheet (*clinical*.xlsx or .csv) here or in {collection}/; {OBTAIN}"


def find_clinical_sheet(root: Path, collection: str, name: str | None) -> Path:
    """The clinical sheet: ``name`` under ``root`` if given, else the one candidate; DataError for none or several."""
    if name is not None:
        if not (root / name).is_file():
            raise DataError(f"{root / name}: no such clinical sheet (cohort parameter clinical_file)")
        return root / name
    found = clinical_candidates(root, collection)
    if not found:
        raise DataError(missing_sheet_message(root, collection))
    if len(found) > 1:
        raise DataError(f"{root}: several clinical sheets {[p.name for p in found]}; keep one or set clinical_file")
    return found[0]


def pick_column(header: list[str], spellings: Sequence[str], what: str, path: Path, given: str | None) -> int:
    """Position of the one header cell that is ``given`` or a known spelling; DataError if none or several."""
    if given is not None:
        hits = [i for i, name in enumerate(header) if name.strip() == given.strip()]
    else:
        known = {column_key(s) for s in spellings}
        hits = [i for i, name in enumerate(header) if column_key(name) in known]
    if not hits:
        expected = repr(given) if given is not None else f"one of {list(spellings)}"
        raise DataError(f"{path}: no {what} column ({expected}); found {header}")
    if len(hits) > 1:
        raise DataError(
            f"{path}: several {what} columns {[header[i] for i in hits]}; name one with the cohort parameters"
        )
    return hits[0]


def read_clinical_sheet(path: Path, hpv_column: str | None) -> ClinicalSheet:
    """Patient keys and HPV labels of the sheet; its header is the first row naming a patient ID column."""
    table = read_table(path, "clinical sheet", header=None, dtype=str, keep_default_na=False, sep=None, engine="python")
    header = header_row(table, {column_key(s) for s in ID_SPELLINGS}, HEADER_SEARCH_ROWS)
    if header is None:
        first = [str(v) for v in table.iloc[0]] if len(table) else []
        raise DataError(f"{path}: no patient ID column (one of {list(ID_SPELLINGS)}) in its first rows; found {first}")
    names = [str(v).strip() for v in table.iloc[header]]
    id_col = pick_column(names, ID_SPELLINGS, "patient ID", path, None)
    hpv_col = pick_column(names, HPV_SPELLINGS, "HPV/p16 status", path, hpv_column)
    labels: dict[str, int | None] = {}
    lines: dict[str, int] = {}
    for offset, row in enumerate(table.iloc[header + 1 :].itertuples(index=False)):
        line = header + 2 + offset
        raw = str(row[id_col]).strip()
        if not raw:
            continue
        key = patient_key(raw)
        if key in labels:
            raise DataError(f"{path} line {line}: patient listed a second time (first on line {lines[key]})")
        try:
            labels[key] = hpv_label(row[hpv_col])
        except ValueError as exc:
            raise DataError(f"{path} line {line}, column {names[hpv_col]!r}: {exc}") from exc
        lines[key] = line
    return ClinicalSheet(path, labels)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def centroid(mask: np.ndarray) -> np.ndarray:
    """The mean ``(z, y, x)`` index of the voxels of ``mask``."""
    return np.argwhere(mask).mean(axis=0)


def cube_around(image: MedicalImage, centre: np.ndarray, size: int, target_mm: float | None) -> np.ndarray:
    """``size``^3 voxels of ``target_mm`` (native voxels when None) centred on the index point ``centre``; air outside.

    Only a block around the cube is resampled (linear, smoothed first along axes that shrink so
    noise does not alias), never the whole CT.
    """
    if target_mm is None:
        return crop_around(image.array, centre, (size,) * 3, AIR_HU)
    step = target_mm / np.asarray(image.spacing, float)
    sigma = np.maximum(0.0, (step - 1) / 2)
    reach = np.ceil((size - 1) / 2 * step + 3 * sigma + 2).astype(int)
    block = crop_around(image.array, centre, tuple(2 * reach + 1), AIR_HU)
    if (sigma > 0).any():
        block = ndimage.gaussian_filter(block, sigma)
    # crop_around centres the block on the nearest voxel; the sub-voxel rest shifts the sampling grid
    local = reach + (centre - np.floor(centre + 0.5))
    offset = local - step * (size - 1) / 2
    return ndimage.affine_transform(block, step, offset=offset, output_shape=(size,) * 3, order=1, mode="nearest")


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


class OropharyngealCohort(ContouredCtCohort):
    """OPC-Radiomics oropharyngeal CT (TCIA, Princess Margaret): HPV status from a 3-D GTV cube, GE vs Toshiba."""

    name = "ct_oropharyngeal"
    obtain = OBTAIN
    Params = OropharyngealParams
    params: OropharyngealParams
    collection = "OPC-Radiomics"
    patient_pattern = re.compile(r"^OPC-\d+$", re.IGNORECASE)

    task = Task(kind="classification", class_names=CLASS_NAMES, spatial_dims=3)

    def domains(self) -> list[str]:
        return ["GE", "Toshiba"]

    def domain_of(self, vendor: str) -> str | None:
        """The study domain of a canonical vendor: GE, Toshiba (and Canon, if so configured), else None."""
        if vendor == "Canon" and self.params.canon_as_toshiba:
            return "Toshiba"
        return vendor if vendor in ("GE", "Toshiba") else None

    @cached_property
    def sheet(self) -> ClinicalSheet:
        path = find_clinical_sheet(self.root, self.collection, self.params.clinical_file)
        return read_clinical_sheet(path, self.params.hpv_column)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.params.roi_size,) * 3

    def records(self) -> Iterator[ContouredPatient]:
        """Every patient with an HPV status, a contoured CT and a GE or Toshiba scanner, in folder order."""
        folders = self.folders()
        listed = {patient_key(raw_id) for raw_id in folders}
        for key in sorted(set(self.sheet.labels) - listed):
            self.exclude(key, "listed in the clinical sheet, no images")
        for raw_id, folder in folders.items():
            key = patient_key(raw_id)
            if key not in self.sheet.labels:
                raise DataError(f"{folder}: patient not listed in {self.sheet.path}, so its HPV status is unknown")
            label = self.sheet.labels[key]
            if label is None:
                self.exclude(raw_id, "HPV/p16 status unknown")
                continue
            case = self.contoured_ct(raw_id, folder)
            if case is None:
                continue
            domain = self.domain_of(case.vendor)
            if domain is None:
                self.exclude(raw_id, f"scanner vendor {case.vendor!r} is neither GE nor Toshiba")
                continue
            yield self.patient(raw_id, domain, case, label)

    def items(self, patient: ContouredPatient, image: MedicalImage, tumour: np.ndarray) -> Items:
        """One cube of HU centred on the primary tumour's centroid, labelled with the patient's HPV status."""
        cube = cube_around(image, centroid(tumour), self.params.roi_size, self.params.spacing_mm)
        return cube[None].astype(np.float32), np.array([patient.label], np.int64)

    @classmethod
    def check_root(cls, root: Path) -> None:
        """The folder, its patient folders and a clinical sheet must be there (the sheet is read by :meth:`index`)."""
        super().check_root(root)
        root = Path(root)
        if not clinical_candidates(root, cls.collection):
            raise DataError(missing_sheet_message(root, cls.collection))

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [OropharyngealCohort]
