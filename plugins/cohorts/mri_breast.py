"""Duke-Breast-Cancer-MRI: breast DCE-MRI of 922 patients (GE and Siemens), T stage > 2 from a tumour ROI.

The loader reads the TCIA collection (Saha et al., Br J Cancer 2018) as downloaded with the NBIA
Data Retriever, plus the collection's two spreadsheets::

    <root>/Duke-Breast-Cancer-MRI/Breast_MRI_NNN/<study>/<series>/*.dcm   (or <root>/Breast_MRI_NNN/...)
    <root>/Clinical_and_Other_Features.xlsx     'Patient ID', 'Staging(Tumor Size)# [T]', ...
    <root>/Annotation_Boxes.xlsx                'Patient ID', 'Start Row', 'End Row', 'Start Column',
                                                'End Column', 'Start Slice', 'End Slice'

(the spreadsheets may also sit in ``Duke-Breast-Cancer-MRI/``, and may be saved as ``.csv``).
An item is the 5 x 47 x 47 voxel block of the fat-saturated pre-contrast series centred on the
tumour box, in the scanner's units; its label is 1 (``T>2``) when the T stage is 3 or 4. The
vendor is the pre-contrast series' DICOM Manufacturer. Patient folder names leave this module
only as pseudonyms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, Items, PatientRecord, RegexPattern, Task, TwinSettings
from harmonia.domains import series_vendor
from harmonia.errors import DataError
from harmonia.geometry import crop_around
from harmonia.io import MedicalImage, SeriesInfo, read_image
from harmonia.patient_folders import patient_folders, readable_series
from harmonia.sheets import column_key, find_file, header_row, read_table
from harmonia_plugins.cohorts.mri_breast_twin import write_twin

COLLECTION = "Duke-Breast-Cancer-MRI"
CLINICAL, BOXES = "Clinical_and_Other_Features", "Annotation_Boxes"
SHEET_SUFFIXES = (".xlsx", ".csv")
DOMAINS = ["GE", "Siemens"]
CLASS_NAMES = ("T<=2", "T>2")
PATIENT_ID = re.compile(r"breast_?mri_?(\d+)", re.IGNORECASE)
#: sheet columns by their key (lower-case letters and digits only), so spacing and case variants match
PATIENT_KEY = "patientid"
T_STAGE = "Staging(Tumor Size)# [T]"
T_STAGE_KEYS = ("stagingtumorsizet", "stagingtumorsize")
BOX_COLUMNS = ("Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice")
OBTAIN = (
    "download Duke-Breast-Cancer-MRI from TCIA (https://doi.org/10.7937/TCIA.e3sv-re93): the DICOM images with the "
    "NBIA Data Retriever, plus Clinical_and_Other_Features.xlsx and Annotation_Boxes.xlsx, and point cohort.root "
    "(or $HARMONIA_DATA/mri_breast) at the folder holding both sheets and Duke-Breast-Cancer-MRI/"
)


class MriBreastParams(CohortParams):
    """Which series is the pre-contrast one, the ROI size, and how the annotation boxes count."""

    pre_contrast: list[RegexPattern] = Field(
        default_factory=lambda: [r"\bpre\b", r"\bdyn\b", r"vibrant"],
        min_length=1,
        description="regular expressions (case-insensitive, in priority order) a pre-contrast series description "
        "matches; the series matching the earliest one wins",
    )
    post_contrast: list[RegexPattern] = Field(
        default_factory=lambda: [
            r"\bph\s*\d",
            r"\d\s*/",
            r"\b(1st|2nd|3rd|4th|5th|6th)\b",
            r"\bpost\b",
            r"\bpass\b",
            r"\bsub",
        ],
        description="regular expressions (case-insensitive) that mark a description as post-contrast or subtraction; "
        "such series are never the pre-contrast one",
    )
    roi: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (5, 47, 47), description="ROI size in voxels: slices, rows, columns"
    )
    box_base: Literal[0, 1] = Field(
        1, description="the number of the first row, column and slice in Annotation_Boxes (1 as documented)"
    )


# --------------------------------------------------------------------------------------------
# Spreadsheets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """One tumour box as the sheet gives it (row, column, slice ranges, counted from ``box_base``, inclusive)."""

    rows: tuple[int, int]
    columns: tuple[int, int]
    slices: tuple[int, int]
    sheet: Path
    line: int


def patient_of(text: object) -> str | None:
    """The canonical ``Breast_MRI_NNN`` of a sheet cell or folder name, None if it names no patient."""
    match = PATIENT_ID.fullmatch(str(text).strip())
    return f"Breast_MRI_{int(match[1]):03d}" if match else None


def find_sheet(root: Path, stem: str) -> Path | None:
    """The spreadsheet ``stem`` (.xlsx, else .csv) at the root or in the collection folder."""
    return find_file([root, root / COLLECTION], [f"{stem}{suffix}" for suffix in SHEET_SUFFIXES])


def read_sheet(path: Path, wanted: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """The patient rows of a sheet whose header is the row holding 'Patient ID' (any group/legend rows skipped).

    ``wanted`` maps a column's documented name to the keys it is accepted under (see
    :func:`column_key`); the result has those columns under their documented names,
    ``patient`` (canonical ID) and ``line`` (the spreadsheet row number). Rows naming no patient
    (legends, notes) are dropped.
    """
    raw = read_table(path, "spreadsheet", header=None, dtype=str, keep_default_na=False)
    header = header_row(raw, {PATIENT_KEY})
    if header is None:
        raise DataError(f"{path}: no 'Patient ID' column header in its first 10 rows")
    keys = [column_key(cell) for cell in raw.iloc[header]]
    columns = {"patient": keys.index(PATIENT_KEY)}
    for name, accepted in wanted.items():
        found = [i for i, key in enumerate(keys) if key in accepted]
        if not found:
            names = [str(c) for c in raw.iloc[header] if str(c).strip()]
            raise DataError(f"{path}: no column {name!r} in the header row {header + 1}; found {names}")
        columns[name] = found[0]
    table = raw.iloc[header + 1 :, list(columns.values())].set_axis(list(columns), axis=1)
    table["line"] = table.index + 1
    table["patient"] = table["patient"].map(patient_of)
    return table[table["patient"].notna()].reset_index(drop=True)


def blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def t_stages(path: Path) -> dict[str, int | None]:
    """Canonical patient ID -> T stage (0-4) from the clinical sheet; None where the cell is empty."""
    stages: dict[str, int | None] = {}
    for row in read_sheet(path, {T_STAGE: T_STAGE_KEYS}).to_dict("records"):
        value = row[T_STAGE]
        if blank(value):
            stages[row["patient"]] = None
            continue
        match = re.fullmatch(r"T?([0-4])(\.0)?", str(value).strip(), re.IGNORECASE)
        if match is None:
            raise DataError(f"{path} row {row['line']}: T stage {value!r} is not one of 0-4")
        stages[row["patient"]] = int(match[1])
    return stages


def boxes(path: Path) -> dict[str, list[Box]]:
    """Canonical patient ID -> its tumour boxes from the annotation sheet; DataError for a malformed row."""
    found: dict[str, list[Box]] = {}
    table = read_sheet(path, {name: (column_key(name),) for name in BOX_COLUMNS})
    for row in table.to_dict("records"):
        values = [row[name] for name in BOX_COLUMNS]
        try:
            numbers = [int(float(v)) for v in values]
        except (TypeError, ValueError):
            raise DataError(f"{path} row {row['line']}: box bounds {values} are not all whole numbers") from None
        pairs = [(numbers[i], numbers[i + 1]) for i in (0, 2, 4)]
        if any(start > end for start, end in pairs):
            raise DataError(
                f"{path} row {row['line']}: a box start is after its end ({dict(zip(BOX_COLUMNS, numbers))})"
            )
        found.setdefault(row["patient"], []).append(Box(*pairs, sheet=path, line=row["line"]))
    return found


# --------------------------------------------------------------------------------------------
# Folders and series
# --------------------------------------------------------------------------------------------


def breast_folders(root: Path) -> dict[str, Path]:
    """Canonical patient ID -> patient folder, under ``Duke-Breast-Cancer-MRI/`` or directly under ``root``."""
    return patient_folders(root, COLLECTION, patient_of)


def pre_contrast_series(series: list[SeriesInfo], params: MriBreastParams, folder: Path) -> SeriesInfo:
    """The fat-saturated pre-contrast MR series: the one whose description matches the earliest ``pre_contrast``
    pattern and no ``post_contrast`` pattern; DataError naming the folder when none or several tie."""
    post = [re.compile(p, re.IGNORECASE) for p in params.post_contrast]
    candidates = [s for s in series if s.modality == "MR" and not any(p.search(s.description) for p in post)]
    for pattern in params.pre_contrast:
        matching = [s for s in candidates if re.search(pattern, s.description, re.IGNORECASE)]
        if len(matching) == 1:
            return matching[0]
        if matching:
            listed = ", ".join(repr(s.description) for s in matching)
            raise DataError(f"{folder}: {len(matching)} series match pre-contrast pattern {pattern!r}: {listed}")
    listed = ", ".join(repr(s.description) for s in series) or "none"
    raise DataError(
        f"{folder}: no pre-contrast series (description matching {params.pre_contrast} and not {params.post_contrast}); "
        f"series here: {listed}"
    )


def instance_order(image: MedicalImage) -> list[int]:
    """The volume's slice indices in InstanceNumber order (the box sheet's slice numbering)."""
    if None in image.instance_numbers or len(image.instance_numbers) != len(image.array):
        raise DataError(f"{image.path}: a slice has no InstanceNumber, so Start/End Slice cannot be located")
    return [int(k) for k in np.argsort(image.instance_numbers, kind="stable")]


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case(PatientRecord):
    """One usable patient (``raw_id`` is its folder name): class, tumour boxes and pre-contrast series."""

    label: int
    boxes: tuple[Box, ...]
    series: SeriesInfo


class MriBreastCohort(Cohort):
    """Duke-Breast-Cancer-MRI, GE vs Siemens: T stage > 2 from a 5 x 47 x 47 pre-contrast ROI at the tumour."""

    name = "mri_breast"
    modality = "MRI"
    obtain = OBTAIN
    Params = MriBreastParams
    params: MriBreastParams

    task = Task(kind="classification", class_names=CLASS_NAMES, spatial_dims=3)

    def domains(self) -> list[str]:
        return list(DOMAINS)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return tuple(self.params.roi)

    def records(self) -> Iterator[Case]:
        """Every patient with images, a box, a T stage and a GE or Siemens pre-contrast series."""
        self.check_root(self.root)
        clinical_sheet, box_sheet = find_sheet(self.root, CLINICAL), find_sheet(self.root, BOXES)
        stages, tumour_boxes = t_stages(clinical_sheet), boxes(box_sheet)
        for patient, folder in breast_folders(self.root).items():
            if patient not in tumour_boxes:
                raise DataError(f"{folder}: patient has no row in {box_sheet}")
            if patient not in stages:
                raise DataError(f"{folder}: patient has no row in {clinical_sheet}")
            if stages[patient] is None:
                self.exclude(folder.name, "no T stage in the clinical sheet")
                continue
            case = self._case(folder, stages[patient], tuple(tumour_boxes[patient]))
            if case is not None:
                yield case

    def _case(self, folder: Path, stage: int, tumour_boxes: tuple[Box, ...]) -> Case | None:
        """The case of one patient folder, or None if it is skipped (unreadable file, vendor outside the study)."""
        series = readable_series(folder, lambda error: self.unreadable_file(error, folder.name))
        if series is None:
            return None
        pre = pre_contrast_series(series, self.params, folder)
        vendor = series_vendor(pre)
        if vendor not in DOMAINS:
            self.exclude(folder.name, f"vendor {vendor} is neither GE nor Siemens")
            return None
        label = int(stage >= 3)
        return Case(
            raw_id=folder.name, domain=vendor, stratum=CLASS_NAMES[label], label=label, boxes=tumour_boxes, series=pre
        )

    def read_items(self, case: Case) -> Items:
        """The ROI of each of the patient's tumour boxes, labelled with the patient's class."""
        rois = self._rois(case)
        return np.array(rois), np.full(len(rois), case.label)

    def _rois(self, case: Case) -> list[np.ndarray]:
        """The ROI of each of the patient's boxes, centred on the box centre, in the series' native units."""
        image = read_image(list(case.series.files))
        slice_index = instance_order(image)
        base = self.params.box_base
        rois = []
        for box in case.boxes:
            extents = (len(slice_index), *image.shape[1:])
            for (start, end), size, axis in zip(
                (box.slices, box.rows, box.columns), extents, ("slice", "row", "column")
            ):
                if start < base or end - base >= size:
                    raise DataError(
                        f"{box.sheet} row {box.line}: {axis}s {start}-{end} fall outside the pre-contrast series "
                        f"({size} {axis}s numbered from {base})"
                    )
            z = (slice_index[box.slices[0] - base] + slice_index[box.slices[1] - base]) / 2
            centre = (z, (sum(box.rows) / 2) - base, (sum(box.columns) / 2) - base)
            rois.append(crop_around(image.array, centre, self.params.roi, fill=0.0).astype(np.float32))
        return rois

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; {OBTAIN}")
        for stem in (CLINICAL, BOXES):
            if find_sheet(root, stem) is None:
                raise DataError(f"{root}: no {stem}.xlsx (or .csv) here or in {COLLECTION}/; {OBTAIN}")
        if not breast_folders(root):
            raise DataError(f"{root}: no Breast_MRI_NNN patient folders in {COLLECTION}/ or at the root; {OBTAIN}")

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [MriBreastCohort]
