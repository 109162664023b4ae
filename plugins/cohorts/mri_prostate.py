"""PI-CAI: bi-parametric prostate MRI (Siemens, Philips) for slice-level csPCa lesion presence on T2W.

The loader reads the PI-CAI Public Training and Development set as distributed (Saha et al.,
2022): the five image folds from Zenodo and the ``picai_labels`` repository::

    <root>/picai_public_images_fold{0-4}/<pid>/<pid>_<sid>_{t2w,adc,hbv,cor,sag}.mha
    <root>/picai_labels/clinical_information/marksheet.csv
    <root>/picai_labels/csPCa_lesion_delineations/human_expert/resampled/<pid>_<sid>.nii.gz

The vendor is not in the marksheet: it is the DICOM Manufacturer the conversion kept in each MHA
header (key ``0008|0070``). Items are the axial T2W slices of every case that has a lesion mask
in the chosen annotation sets; a slice is positive when its mask has any lesion voxel. Patient
and study IDs leave this module only as pseudonyms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, Items, PatientRecord, Task, TwinSettings
from harmonia.domains import OTHER, one_domain_per_patient, vendor_or_other
from harmonia.errors import DataError, UnreadableFile
from harmonia.geometry import pixel_spacing_field, slice_size_field, to_grid
from harmonia.io import canonical_vendor, read_header, read_image
from harmonia.sheets import read_table, require_columns
from harmonia_plugins.cohorts.mri_prostate_twin import write_twin

REFERENCE_VENDOR = "Siemens"
DOMAINS = (REFERENCE_VENDOR, OTHER)
MANUFACTURER_KEY = "0008|0070"
#: the labels repository as cloned (``picai_labels``) or unpacked from GitHub's zip (``picai_labels-main``)
LABEL_FOLDERS = ("picai_labels", "picai_labels-main")
MARKSHEET = Path("clinical_information") / "marksheet.csv"
DELINEATIONS = Path("csPCa_lesion_delineations")
PATIENT, STUDY, CSPCA = "patient_id", "study_id", "case_csPCa"
#: ``<pid>/<pid>_<sid>_t2w.mha``; the image folds may sit at the root or one or two levels deeper
T2W_NAME = re.compile(r"^(?P<patient>[^_]+)_(?P<study>[^_]+)_t2w\.mha$")
OBTAIN = (
    "download the five picai_public_images_fold*.zip from https://zenodo.org/records/6624726 (CC BY-NC 4.0), "
    "clone https://github.com/DIAGNijmegen/picai_labels next to them, and point cohort.root "
    "(or $HARMONIA_DATA/mri_prostate) at the folder holding both"
)


class MriProstateParams(CohortParams):
    """The geometry every T2W slice is brought to and which lesion annotations label the slices."""

    image_size: int = slice_size_field()
    spacing_mm: float = pixel_spacing_field(1.0)
    lesion_masks: list[str] = Field(
        default_factory=lambda: ["human_expert/resampled"],
        min_length=1,
        description="annotation sets under picai_labels/csPCa_lesion_delineations/, tried in order for each case "
        "(e.g. human_expert/resampled, human_expert/Pooch25, AI/Bosma22a); cases with a mask in none are left out",
    )

    @field_validator("lesion_masks")
    @classmethod
    def _relative_folders(cls, value: list[str]) -> list[str]:
        for folder in value:
            if Path(folder).is_absolute() or ".." in Path(folder).parts:
                raise ValueError(f"{folder!r}: give a folder relative to csPCa_lesion_delineations/")
        return value


# --------------------------------------------------------------------------------------------
# The release's files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One study as the loader knows it; the raw patient and study IDs never leave this module."""

    patient: str
    study: str
    cspca: bool
    t2w: Path
    mask: Path


def labels_folder(root: Path) -> Path | None:
    """The picai_labels clone holding the marksheet, at ``root`` or one level down, or None."""
    candidates = [root / name for name in LABEL_FOLDERS]
    candidates += sorted(p for name in LABEL_FOLDERS for p in root.glob(f"*/{name}"))
    return next((c for c in candidates if (c / MARKSHEET).is_file()), None)


def t2w_images(root: Path) -> dict[tuple[str, str], Path]:
    """(patient, study) -> T2W file, from ``<pid>/<pid>_<sid>_t2w.mha`` up to three levels below ``root``."""
    found: dict[tuple[str, str], Path] = {}
    for pattern in ("*/*_t2w.mha", "*/*/*_t2w.mha", "*/*/*/*_t2w.mha"):
        for path in sorted(root.glob(pattern)):
            match = T2W_NAME.match(path.name)
            if not match or path.parent.name != match["patient"]:
                continue
            key = (match["patient"], match["study"])
            if key in found and found[key] != path:
                raise DataError(f"{path}: the same case is also in {found[key]}; keep one copy of the image folds")
            found[key] = path
    return found


def read_marksheet(path: Path) -> pd.DataFrame:
    """The marksheet with IDs as text; DataError if it is unreadable or lacks a needed column."""
    table = read_table(path, "marksheet", dtype={PATIENT: str, STUDY: str, CSPCA: str})
    require_columns(table, path, "marksheet", [PATIENT, STUDY, CSPCA])
    return table


def cspca_of(value: object, sheet: Path, line: int) -> bool:
    """The case-level csPCa outcome of a marksheet cell: YES or NO."""
    text = "" if pd.isna(value) else str(value).strip().upper()
    if text not in ("YES", "NO"):
        raise DataError(f"{sheet} line {line}: {CSPCA} is {value!r}; expected YES or NO")
    return text == "YES"


def find_mask(labels: Path, case: str, sets: Sequence[str]) -> Path | None:
    """The lesion mask of ``case`` in the first annotation set that has one."""
    for folder in sets:
        path = labels / DELINEATIONS / folder / f"{case}.nii.gz"
        if path.is_file():
            return path
    return None


def read_cases(root: Path, sets: Sequence[str], exclude: Callable[[str, str], None]) -> list[Case]:
    """Every case with a T2W image, a marksheet row and a lesion mask, in (patient, study) order.

    Cases the marksheet lists without images are skipped (a partial download of the folds); cases
    without a mask in ``sets`` (205 csPCa cases have no human delineation) go to ``exclude``.
    """
    labels = labels_folder(root)
    if labels is None:
        raise DataError(f"{root}: no picai_labels/{MARKSHEET.as_posix()} found here or one level down; {OBTAIN}")
    sheet = labels / MARKSHEET
    table = read_marksheet(sheet)
    outcome: dict[tuple[str, str], bool] = {}
    for line, (patient, study, value) in enumerate(zip(table[PATIENT], table[STUDY], table[CSPCA]), start=2):
        key = (str(patient).strip(), str(study).strip())
        if key in outcome:
            raise DataError(f"{sheet} line {line}: case {key[0]}_{key[1]} listed a second time")
        outcome[key] = cspca_of(value, sheet, line)
    images = t2w_images(root)
    unlisted = sorted(set(images) - set(outcome))
    if unlisted:
        raise DataError(f"{images[unlisted[0]]}: case not listed in {sheet}")
    cases = []
    for key in sorted(images):
        mask = find_mask(labels, f"{key[0]}_{key[1]}", sets)
        if mask is not None:
            cases.append(Case(key[0], key[1], outcome[key], images[key], mask))
        else:
            exclude(f"{key[0]}_{key[1]}", f"case without a lesion mask in {', '.join(sets)}")
    return cases


def manufacturer_of(path: Path) -> str:
    """The ``0008|0070`` text of an MHA header (header only, no pixels); UnreadableFile if unreadable or absent."""
    text = read_header(path).get(MANUFACTURER_KEY, "")
    if not text:
        raise UnreadableFile(path, f"no scanner manufacturer: the MHA header lacks the key {MANUFACTURER_KEY}")
    return text


def domain_of(manufacturer: str) -> str:
    """Siemens, or Other for any other vendor."""
    return vendor_or_other(canonical_vendor(manufacturer), REFERENCE_VENDOR)


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study(PatientRecord):
    """One study of a patient in the domain most of the patient's studies share; ``stratum`` is patient-level."""

    case: Case


class MriProstateCohort(Cohort):
    """PI-CAI bi-parametric prostate MRI, Siemens vs Other: csPCa lesion present in a T2W slice."""

    name = "mri_prostate"
    modality = "MRI"
    obtain = OBTAIN
    Params = MriProstateParams
    params: MriProstateParams

    task = Task(kind="classification", class_names=("no lesion", "lesion"), spatial_dims=2)

    def domains(self) -> list[str]:
        return list(DOMAINS)

    @property
    def item_shape(self) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> Iterator[Study]:
        """Every study with a lesion mask, its domain read from the T2W header.

        A patient whose studies come from both domains keeps the studies of the domain most of
        them share (the first study's on a tie), so that no patient is in two domains.
        """
        found = []
        for case in read_cases(self.root, self.params.lesion_masks, self.exclude):
            manufacturer = self.skip_unreadable(case.patient, lambda t2w=case.t2w: manufacturer_of(t2w))
            if manufacturer is not None:
                found.append((case.patient, domain_of(manufacturer), case))
        for raw_id, (domain, cases) in one_domain_per_patient(found).items():
            stratum = "csPCa" if any(c.cspca for c in cases) else "no csPCa"
            for case in cases:
                yield Study(raw_id=raw_id, domain=domain, stratum=stratum, case=case)

    def read_items(self, study: Study) -> Items:
        """One study's T2W slices ``[n, H, W]`` on the common grid and their lesion flags."""
        case = study.case
        image = read_image(case.t2w)
        mask = read_image(case.mask)
        if image.array.ndim != 3:
            raise DataError(f"{case.t2w}: expected a 3-D T2W volume, got shape {image.array.shape}")
        if mask.array.shape != image.array.shape:
            raise DataError(
                f"{case.mask}: lesion mask shape {mask.array.shape} differs from its T2W image {case.t2w.name} "
                f"{image.array.shape}; use masks resampled to T2W (human_expert/resampled)"
            )
        flags = (mask.array.reshape(len(mask.array), -1) != 0).any(axis=1).astype(np.int64)
        p = self.params
        spacing = (image.spacing[2], image.spacing[1])
        return to_grid(image.array.astype(np.float32), spacing, p.image_size, p.spacing_mm, 1), flags

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the PI-CAI public training set here; {OBTAIN}")
        labels = labels_folder(root)
        if labels is None:
            raise DataError(f"{root}: no picai_labels/{MARKSHEET.as_posix()} found here or one level down; {OBTAIN}")
        read_marksheet(labels / MARKSHEET)
        if not t2w_images(root):
            raise DataError(
                f"{root}: no T2W images (picai_public_images_fold<k>/<pid>/<pid>_<sid>_t2w.mha) found; {OBTAIN}"
            )

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [MriProstateCohort]
