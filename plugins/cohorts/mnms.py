"""M&Ms: multi-centre, multi-vendor cine cardiac MRI (Siemens, Philips, GE, Canon) for LV/MYO/RV segmentation.

The loader reads the open M&Ms release as distributed (Campello et al., IEEE TMI 2021)::

    <root>/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv   (older releases: see INFO_PATTERNS)
    <root>/Training/Labeled/<code>/<code>_sa.nii.gz      4-D cine short axis, X x Y x Z x T
    <root>/Training/Labeled/<code>/<code>_sa_gt.nii.gz   labels at the ED and ES frames only
    <root>/Training/Unlabeled/<code>/<code>_sa.nii.gz    no labels (skipped)
    <root>/Validation/<code>/...  <root>/Testing/<code>/...   labelled, same file names

The vendor comes from the info CSV (``Vendor`` letter A-D, or the free-text ``VendorName``), the
annotated frames from its ``ED``/``ES`` columns (0-based). Items are the 2-D short-axis slices of
those frames, resampled to a common in-plane spacing and centre-cropped or padded to a square.
The patient code leaves this module only as a pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, Items, PatientRecord, Task, TwinSettings
from harmonia.errors import DataError
from harmonia.geometry import pixel_spacing_field, slice_size_field, to_grid
from harmonia.io import canonical_vendor, read_image
from harmonia.sheets import read_table, require_columns
from harmonia_plugins.cohorts.mnms_twin import write_twin

VENDORS = ("Siemens", "Philips", "GE", "Canon")
#: the ``Vendor`` letters of the M&Ms information sheet
VENDOR_OF_LETTER = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}
#: labels of the ``_sa_gt`` files (LV blood pool, myocardium, RV blood pool); the class index is the label
CLASS_NAMES = ("background", "LV", "MYO", "RV")

INFO_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
#: information sheets of older releases, e.g. "201207_M&Ms Dataset information - diagnosis -
#: opendataset.csv" or "M&Ms Dataset Information.xlsx"; the newest (by date prefix) wins
INFO_PATTERNS = ("*M&Ms*[Ii]nformation*.csv", "*M&Ms*[Ii]nformation*.xlsx")
CODE, VENDOR, VENDOR_NAME, ED, ES, PATHOLOGY = "External code", "Vendor", "VendorName", "ED", "ES", "Pathology"
IMAGE_SUFFIX, GT_SUFFIX = "_sa.nii.gz", "_sa_gt.nii.gz"
OBTAIN = (
    "register at https://www.ub.edu/mnms/ (free, with a data-use agreement), download the open dataset and "
    "point cohort.root (or $HARMONIA_DATA/mnms) at the folder holding the info CSV and Training/, Validation/, Testing/"
)


class MnmsParams(CohortParams):
    """Which vendors to use and the geometry every slice is brought to."""

    domains: list[str] = Field(
        default_factory=lambda: list(VENDORS),
        description="vendors (scanner domains) to use, in study order; any of Siemens, Philips, GE, Canon",
    )
    image_size: int = slice_size_field()
    spacing_mm: float = pixel_spacing_field(1.5)
    phases: list[Literal["ED", "ES"]] = Field(
        default_factory=lambda: ["ED", "ES"],
        min_length=1,
        description="cardiac phases whose annotated frames give items (end-diastole, end-systole)",
    )
    labelled_slices_only: bool = Field(
        True, description="keep only slices with at least one labelled pixel (False: every slice of those frames)"
    )

    @field_validator("domains")
    @classmethod
    def _known_vendors(cls, value: list[str]) -> list[str]:
        vendors = []
        for name in value:
            vendor = mnms_vendor(name)
            if vendor is None:
                raise ValueError(f"unknown vendor {name!r}; M&Ms has {', '.join(VENDORS)}")
            if vendor in vendors:
                raise ValueError(f"vendor {vendor} listed twice")
            vendors.append(vendor)
        if not vendors:
            raise ValueError(f"give at least one of {', '.join(VENDORS)}")
        return vendors

    @field_validator("phases")
    @classmethod
    def _distinct_phases(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a phase is listed twice")
        return value


# --------------------------------------------------------------------------------------------
# Vendor names
# --------------------------------------------------------------------------------------------


def mnms_vendor(text: str) -> str | None:
    """The M&Ms vendor a free-text manufacturer names (``Siemens``, ``Philips``, ``GE``, ``Canon``), else None."""
    vendor = canonical_vendor(text)
    return vendor if vendor in VENDORS else None


# --------------------------------------------------------------------------------------------
# The information sheet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record(PatientRecord):
    """One labelled patient: its annotated frames and files (``raw_id`` is the patient code)."""

    ed: int
    es: int
    image: Path
    gt: Path
    sheet: Path


def find_info_sheet(root: Path) -> Path | None:
    """The information sheet under ``root``: the current release's CSV, else the newest older one."""
    if (root / INFO_CSV).is_file():
        return root / INFO_CSV
    found = {p for pattern in INFO_PATTERNS for p in root.glob(pattern) if "outdated" not in p.name.lower()}
    # a yymmdd date prefix orders releases; undated sheets (the 2020 challenge's) are the oldest
    return max(found, key=lambda p: (p.name[:6].isdigit(), p.name), default=None)


def read_info_sheet(path: Path) -> pd.DataFrame:
    """The sheet as a table; DataError if unreadable or lacking a needed column."""
    table = read_table(path, "information sheet", dtype={CODE: str}, sep=None, engine="python")
    require_columns(table, path, "information sheet", [CODE, ED, ES, (VENDOR, VENDOR_NAME)])
    return table


def _cell(row: pd.Series, column: str) -> str:
    """A sheet cell as stripped text ("" when the column is absent or the cell empty)."""
    value = row.get(column)
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def row_vendor(row: pd.Series, sheet: Path, line: int) -> str:
    """The canonical vendor of one sheet row: the ``Vendor`` letter, else ``VendorName``; the two must agree."""
    letter, name = _cell(row, VENDOR).upper(), _cell(row, VENDOR_NAME)
    if letter and letter not in VENDOR_OF_LETTER:
        raise DataError(f"{sheet} line {line}: unknown {VENDOR} letter {letter!r} (expected A, B, C or D)")
    if name and mnms_vendor(name) is None:
        raise DataError(f"{sheet} line {line}: unknown {VENDOR_NAME} {name!r} (expected Siemens, Philips, GE or Canon)")
    by_letter, by_name = VENDOR_OF_LETTER.get(letter), mnms_vendor(name) if name else None
    if by_letter and by_name and by_letter != by_name:
        raise DataError(f"{sheet} line {line}: {VENDOR} {letter} ({by_letter}) contradicts {VENDOR_NAME} {name!r}")
    if not (by_letter or by_name):
        raise DataError(f"{sheet} line {line}: no vendor given in {VENDOR} or {VENDOR_NAME}")
    return by_letter or by_name


def frame_index(value: object, column: str, sheet: Path, line: int) -> int:
    """A 0-based ED/ES frame number from the sheet; DataError unless it is a whole number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or number < 0:
        raise DataError(f"{sheet} line {line}: {column} frame {value!r} is not a frame number (0-based integer)")
    return int(number)


def labelled_cases(root: Path) -> dict[str, Path]:
    """Raw code -> ``_sa_gt`` file of every labelled patient folder (Training/Labeled, Validation, Testing)."""
    cases: dict[str, Path] = {}
    for gt in sorted([*root.glob(f"*/*/*{GT_SUFFIX}"), *root.glob(f"*/*/*/*{GT_SUFFIX}")]):
        if "Unlabeled" in gt.parts:
            continue
        code = gt.name[: -len(GT_SUFFIX)]
        if code in cases:
            raise DataError(f"{gt}: patient also labelled in {cases[code]}; keep one copy")
        cases[code] = gt
    return cases


def read_records(root: Path) -> list[Record]:
    """Every labelled patient of the sheet, sorted by raw code; DataError naming the file for malformed input.

    Patients the sheet lists without any files under ``root`` are skipped: the open release lists
    every patient, but some centres' images are only released on request.
    """
    sheet = find_info_sheet(root)
    if sheet is None:
        raise DataError(missing_sheet_message(root))
    table = read_info_sheet(sheet)
    cases = labelled_cases(root)
    rows: dict[str, tuple[int, pd.Series]] = {}
    for line, (_, row) in enumerate(table.iterrows(), start=2):
        code = _cell(row, CODE)
        if code in rows:
            raise DataError(f"{sheet} line {line}: patient code listed a second time (first on line {rows[code][0]})")
        rows[code] = (line, row)
    unknown = sorted(set(cases) - set(rows))
    if unknown:
        raise DataError(f"{cases[unknown[0]]}: patient not listed in {sheet}, so its vendor is unknown")
    records = []
    for code in sorted(cases):
        line, row = rows[code]
        gt = cases[code]
        image = gt.with_name(code + IMAGE_SUFFIX)
        if not image.is_file():
            raise DataError(f"{image}: missing; its labels {gt.name} are there")
        records.append(
            Record(
                raw_id=code,
                domain=row_vendor(row, sheet, line),
                stratum=_cell(row, PATHOLOGY) or None,
                ed=frame_index(row[ED], ED, sheet, line),
                es=frame_index(row[ES], ES, sheet, line),
                image=image,
                gt=gt,
                sheet=sheet,
            )
        )
    return records


def missing_sheet_message(root: Path) -> str:
    return (
        f"{root}: no M&Ms info CSV ({INFO_CSV}, or an older release's 'M&Ms Dataset Information' .csv/.xlsx) "
        f"found; {OBTAIN}"
    )


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The voxel array in the file's axis order (X x Y x Z x T) and its voxel sizes, via :func:`harmonia.io.read_image`."""
    image = read_image(path)
    return image.array.T, tuple(reversed(image.spacing))


def read_case(record: Record) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Image and label arrays (X x Y x Z x T, as stored) and in-plane spacing (x, y) of one patient, checked."""
    image, zooms = read_nifti(record.image)
    labels, _ = read_nifti(record.gt)
    if image.ndim != 4:
        raise DataError(f"{record.image}: expected a 4-D cine image (X x Y x Z x T), got shape {image.shape}")
    if labels.shape != image.shape:
        raise DataError(f"{record.gt}: label shape {labels.shape} differs from image shape {image.shape}")
    frames = image.shape[3]
    for column, frame in ((ED, record.ed), (ES, record.es)):
        if frame >= frames:
            raise DataError(
                f"{record.sheet}: {column} frame {frame} is out of range for {record.image.name} "
                f"({frames} frames, counted from 0)"
            )
    return image, labels, (zooms[0], zooms[1])


def frame_labels(labels: np.ndarray, frame: int, phase: str, record: Record) -> np.ndarray:
    """The int64 label volume of one annotated frame; DataError if it is empty or has unknown labels.

    An empty frame usually means the sheet's ED/ES numbers do not match the files (e.g. 1-based).
    """
    volume = np.rint(labels[..., frame]).astype(np.int64)
    if not volume.any():
        raise DataError(f"{record.gt}: no labels at the {phase} frame {frame} that {record.sheet.name} names")
    if volume.min() < 0 or volume.max() >= len(CLASS_NAMES):
        raise DataError(f"{record.gt}: labels {np.unique(volume).tolist()[:8]} outside 0..{len(CLASS_NAMES) - 1}")
    return volume


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


class MnmsCohort(Cohort):
    """M&Ms cine cardiac MRI, 4 vendors: 2-D short-axis ED/ES slices, LV/MYO/RV segmentation."""

    name = "mnms"
    modality = "MRI"
    obtain = OBTAIN
    Params = MnmsParams
    params: MnmsParams

    task = Task(kind="segmentation", class_names=CLASS_NAMES)

    def domains(self) -> list[str]:
        return list(self.params.domains)

    @property
    def item_shape(self) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> list[Record]:
        """Every labelled patient of the configured vendors, in raw-code order."""
        return [r for r in read_records(self.root) if r.domain in self.params.domains]

    def read_items(self, record: Record) -> Items:
        """The ``[n, H, W]`` slices of the chosen phases' annotated frames and their label maps, phases in order."""
        image, labels, spacing = read_case(record)
        p = self.params
        xs, ys = [], []
        for phase in p.phases:
            frame = record.ed if phase == "ED" else record.es
            # X x Y x Z -> Z x Y x X: rows are the image's y axis, as viewers show it
            y = frame_labels(labels, frame, phase, record).transpose(2, 1, 0)
            x = image[..., frame].transpose(2, 1, 0).astype(np.float32)
            x, y = (to_grid(v, spacing, p.image_size, p.spacing_mm, order) for v, order in ((x, 1), (y, 0)))
            keep = y.reshape(len(y), -1).any(axis=1) if p.labelled_slices_only else np.ones(len(y), bool)
            xs.append(x[keep])
            ys.append(y[keep])
        return np.concatenate(xs), np.concatenate(ys)

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the M&Ms open dataset here; {OBTAIN}")
        sheet = find_info_sheet(root)
        if sheet is None:
            raise DataError(missing_sheet_message(root))
        read_info_sheet(sheet)
        if not labelled_cases(root):
            raise DataError(
                f"{root}: no labelled patients (Training/Labeled/<code>/<code>{GT_SUFFIX}, Validation/<code>/..., "
                f"Testing/<code>/...) found next to {sheet.name}; {OBTAIN}"
            )

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [MnmsCohort]
