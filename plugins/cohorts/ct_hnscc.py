"""HNSCC (TCIA): head-and-neck CT with RTSTRUCT tumour contours, for slice-level tumour presence, GE vs other vendors.

The loader reads the HNSCC collection (Grossberg et al., Sci Data 2018; MD Anderson) as the NBIA
Data Retriever writes it with descriptive folder names::

    <root>/HNSCC/<HNSCC-01-NNNN>/<study>/<series>/*.dcm     (also <root>/<patient>/... and
                                                            <root>/manifest-*/HNSCC/<patient>/...)

A patient's folder holds CT, PET, RTSTRUCT, RTDOSE and RTPLAN series, often of several studies.
The RTSTRUCT with GTV ROIs is paired with the CT series it references (its referenced series UID,
else its frame of reference); that CT's Manufacturer tag gives the domain (``GE`` or ``Other``).
Items are axial slices of that CT: every slice holding a GTV voxel (label 1) and a proportion of
evenly spaced slices without one (label 0), resampled in-plane to a fixed grid, in HU.

This module also holds what :mod:`harmonia_plugins.cohorts.ct_oropharyngeal` shares with it:
finding the contoured CT of a patient and reading its GTV mask (:class:`ContouredCtCohort`).
Raw patient folder names leave this module only as pseudonyms.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, ImageSet, ItemsBuilder, RegexPattern, Task, TwinSettings, require_known
from harmonia.errors import DataError, UnreadableFile
from harmonia.geometry import to_grid
from harmonia.io import MedicalImage, SeriesInfo, find_series, read_image, read_rtstruct, rtstruct_roi_names
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.ct_hnscc_twin import write_twin

#: HU of air: what resampled slices and crops are padded with outside the scanned field of view
AIR_HU = -1000.0
OBTAIN = (
    "download the HNSCC collection from TCIA (https://www.cancerimagingarchive.net/collection/hnscc/, free, "
    "CC BY-NC 3.0) with the NBIA Data Retriever (descriptive directory names) and point cohort.root "
    "(or $HARMONIA_DATA/ct_hnscc) at the folder holding HNSCC/"
)


# --------------------------------------------------------------------------------------------
# Shared with ct_oropharyngeal: patient folders, the contoured CT, the GTV mask
# --------------------------------------------------------------------------------------------


class GtvParams(CohortParams):
    """Parameters of a cohort whose tumour is an RTSTRUCT ROI: the ROI name pattern, checked to compile."""

    roi_pattern: RegexPattern = Field(r"^GTV", description="regular expression (case-insensitive, re.search) of the ROI names")


class Excluded(Exception):
    """A patient that cannot give items for a reason that is no error of the copy (e.g. no contours)."""


@dataclass(frozen=True)
class ContouredCt:
    """A patient's CT series and the RTSTRUCT file whose matching ROIs give the tumour."""

    ct: SeriesInfo
    rtstruct: Path
    rois: tuple[str, ...]

    @property
    def vendor(self) -> str:
        """The canonical vendor of the CT; DataError when the series has no Manufacturer tag."""
        if not self.ct.vendor:
            raise DataError(
                f"{self.ct.folder}: CT series without a Manufacturer (0008,0070) tag; its scanner domain cannot be told"
            )
        return self.ct.vendor


def patient_folders(root: Path, collection: str, pattern: re.Pattern) -> dict[str, Path]:
    """Raw ID -> folder of every patient under ``root/<collection>``, ``root/manifest-*/<collection>`` or ``root``."""
    found: dict[str, Path] = {}
    for parent in (root / collection, *sorted(root.glob(f"manifest-*/{collection}")), root):
        if not parent.is_dir():
            continue
        for folder in sorted(parent.iterdir()):
            if not (folder.is_dir() and pattern.match(folder.name)):
                continue
            if folder.name in found:
                raise DataError(f"{folder}: patient also in {found[folder.name]}; keep one copy")
            found[folder.name] = folder
    return found


def gtv_rois(rtstruct: SeriesInfo, roi: re.Pattern) -> tuple[Path, tuple[str, ...]] | None:
    """The first file of an RTSTRUCT series with ROIs matching ``roi``, and their names; None if it has none."""
    for path in rtstruct.files:
        names = tuple(name for name in rtstruct_roi_names(path) if roi.search(name))
        if names:
            return path, names
    return None


def referenced_ct(rtstruct: SeriesInfo, cts: list[SeriesInfo]) -> SeriesInfo | None:
    """The CT series ``rtstruct`` references by series UID, else the largest one in its frame of reference."""
    by_uid = [ct for ct in cts if ct.uid in rtstruct.referenced_series_uids]
    by_frame = [
        ct
        for ct in cts
        if rtstruct.frame_of_reference_uid and ct.frame_of_reference_uid == rtstruct.frame_of_reference_uid
    ]
    candidates = by_uid or by_frame
    return max(candidates, key=lambda ct: len(ct.files)) if candidates else None


def find_contoured_ct(folder: Path, roi: re.Pattern, on_unreadable: Callable[[UnreadableFile], None]) -> ContouredCt:
    """The CT series of one patient folder that an RTSTRUCT with matching ROIs was drawn on.

    Files whose headers cannot be read go to ``on_unreadable`` (which raises, or records and
    returns); a patient whose chosen CT or RTSTRUCT folder held such a file is then Excluded.
    Raises Excluded when there is no RTSTRUCT, no matching ROI, or the contoured CT is missing.
    """
    unreadable: list[UnreadableFile] = []
    series = find_series(folder, on_unreadable=unreadable.append)
    for error in unreadable:
        on_unreadable(error)
    cts = [s for s in series if s.modality == "CT"]
    rtstructs = [s for s in series if s.modality == "RTSTRUCT"]
    if not rtstructs:
        raise Excluded("no RTSTRUCT")
    reason = "no ROI matching the GTV pattern"
    for rtstruct in rtstructs:
        matched = gtv_rois(rtstruct, roi)
        if matched is None:
            continue
        ct = referenced_ct(rtstruct, cts)
        if ct is None:
            reason = "the CT series the RTSTRUCT references is missing"
            continue
        broken = {Path(error.path).parent for error in unreadable}
        if ct.folder in broken or matched[0].parent in broken:
            raise Excluded("unreadable file in its CT or RTSTRUCT series")
        return ContouredCt(ct=ct, rtstruct=matched[0], rois=matched[1])
    raise Excluded(reason)


@dataclass(frozen=True)
class Patient:
    """One usable patient: ``raw_id`` (its folder name) never leaves the loader; ``label`` is a patient-level class."""

    raw_id: str
    domain: str
    case: ContouredCt
    label: int | None = None


class ContouredCtCohort(Cohort):
    """Base of the CT cohorts whose tumour is drawn as RTSTRUCT contours: finds, reads, excludes patients, loads items.

    A subclass says which patients are usable (:meth:`find_patients`) and what items one
    patient's CT and tumour mask give (:meth:`items`). ``excluded`` maps the pseudonym of every
    patient left out to the reason (no RTSTRUCT, no GTV, unknown label, another vendor...);
    :meth:`exclusion_counts` sums them up.
    """

    modality = "CT"
    #: the collection's folder name as TCIA downloads write it
    collection: ClassVar[str]
    #: raw patient folder names (anything else under the collection folder is ignored)
    patient_pattern: ClassVar[re.Pattern]
    params: GtvParams

    @property
    def roi(self) -> re.Pattern:
        return re.compile(self.params.roi_pattern, re.IGNORECASE)

    def folders(self) -> dict[str, Path]:
        """Raw ID -> folder of every patient; DataError saying what was expected where when there is none."""
        found = patient_folders(self.root, self.collection, self.patient_pattern)
        if not found:
            raise DataError(self.missing_patients_message(self.root))
        return found

    @classmethod
    def missing_patients_message(cls, root: Path) -> str:
        return (
            f"{root}: no patient folders ({cls.patient_pattern.pattern}) in {cls.collection}/, "
            f"manifest-*/{cls.collection}/ or the folder itself; {cls.obtain}"
        )

    def contoured_ct(self, raw_id: str, folder: Path) -> ContouredCt | None:
        """The patient's contoured CT, or None after recording why it is excluded."""
        try:
            return find_contoured_ct(folder, self.roi, lambda error: self.unreadable_file(error, raw_id))
        except Excluded as reason:
            self.exclude(raw_id, str(reason))
            return None

    def read_contoured(self, raw_id: str, case: ContouredCt) -> tuple[MedicalImage, np.ndarray] | None:
        """The CT in HU and the union of its matching ROIs; None (recorded) for an unreadable CT or empty ROIs."""
        try:
            image = read_image(list(case.ct.files))
        except UnreadableFile as error:
            self.unreadable_file(error, raw_id)
            self.exclude(raw_id, "unreadable CT slice")
            return None
        masks = read_rtstruct(case.rtstruct, image, lambda name: name in case.rois)
        tumour = np.logical_or.reduce([np.zeros(image.shape, bool), *masks.values()])
        if not tumour.any():
            self.exclude(raw_id, "GTV ROI without contours")
            return None
        return image, tumour

    @abstractmethod
    def find_patients(self) -> dict[str, Patient]:
        """Pseudonym -> usable patient; every other patient is recorded with :meth:`exclude`."""

    @abstractmethod
    def items(self, patient: Patient, image: MedicalImage, tumour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One patient's items: float32 images ``[n, *item_shape]`` in HU and int64 class indices ``[n]``."""

    #: the spatial shape of every item
    item_shape: tuple[int, ...]

    @cached_property
    def _patients(self) -> dict[str, Patient]:
        return self.find_patients()

    def index(self) -> pd.DataFrame:
        names = self.task.class_names
        rows = [
            {"patient": p, "domain": v.domain, "stratum": None if v.label is None else names[v.label]}
            for p, v in self._patients.items()
        ]
        return pd.DataFrame(rows, columns=["patient", "domain", "stratum"])

    def load(self, patients: Sequence[str]) -> ImageSet:
        require_known(patients, self._patients)
        items = ItemsBuilder(self.item_shape)
        for pseudonym in patients:
            patient = self._patients[pseudonym]
            read = self.read_contoured(patient.raw_id, patient.case)
            if read is not None:
                items.add(*self.items(patient, *read), pseudonym, patient.domain)
        return items.image_set()

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the {cls.collection} collection here; {cls.obtain}")
        if not patient_folders(root, cls.collection, cls.patient_pattern):
            raise DataError(cls.missing_patients_message(root))


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


class HnsccParams(GtvParams):
    """Which ROIs are tumour, the slice grid, and how many tumour-free slices each patient gives."""

    roi_pattern: RegexPattern = Field(
        r"^GTV",
        description="regular expression (case-insensitive, re.search) of the tumour ROI names; slices with a "
        "voxel of any matching ROI are positive (default: every GTV, e.g. GTV, GTVp, GTV_N, GTV-1)",
    )
    image_size: int = Field(128, ge=16, le=1024, description="side of the square slice in pixels (centre crop or pad)")
    spacing_mm: float = Field(
        2.0, gt=0, le=10, description="in-plane pixel size in mm; field of view = image_size x spacing_mm"
    )
    negatives_per_positive: float = Field(
        1.0,
        ge=0,
        description="tumour-free slices per tumour slice, evenly spaced over the CT's tumour-free slices "
        "(capped at all of them)",
    )


class HnsccCohort(ContouredCtCohort):
    """HNSCC head-and-neck CT (TCIA, MD Anderson): 2-D axial slices, tumour present or not, GE vs other vendors."""

    name = "ct_hnscc"
    obtain = OBTAIN
    Params = HnsccParams
    params: HnsccParams
    collection = "HNSCC"
    patient_pattern = re.compile(r"^HNSCC-\d+-\d+$", re.IGNORECASE)

    task = Task(kind="classification", class_names=("no tumour", "tumour"), spatial_dims=2)

    def domains(self) -> list[str]:
        return ["GE", "Other"]

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.params.image_size, self.params.image_size)

    def find_patients(self) -> dict[str, Patient]:
        """Every patient with a contoured CT, in raw-ID order; its domain is GE or Other by the CT's vendor."""
        patients = {}
        for raw_id, folder in self.folders().items():
            case = self.contoured_ct(raw_id, folder)
            if case is not None:
                domain = "GE" if case.vendor == "GE" else "Other"
                patients[pseudonymize(raw_id, self.name)] = Patient(raw_id, domain, case)
        return patients

    def items(self, patient: Patient, image: MedicalImage, tumour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tumour slices and evenly spaced tumour-free ones, in slice order, resampled to the grid."""
        present = tumour.reshape(len(tumour), -1).any(axis=1)
        chosen = np.sort(
            np.concatenate([np.flatnonzero(present), self._negatives(np.flatnonzero(~present), int(present.sum()))])
        )
        # rows are the image's y axis (spacing[1]), columns its x axis (spacing[2]); padding is air
        spacing = (image.spacing[2], image.spacing[1])
        p = self.params
        grid = to_grid(image.array[chosen], spacing, p.image_size, p.spacing_mm, order=1, fill=AIR_HU)
        return grid.astype(np.float32), present[chosen].astype(np.int64)

    def _negatives(self, free: np.ndarray, positives: int) -> np.ndarray:
        """``negatives_per_positive`` x ``positives`` of the tumour-free slice indices ``free``, evenly spaced."""
        count = min(len(free), round(self.params.negatives_per_positive * positives))
        if count == 0:
            return np.zeros(0, np.int64)
        return free[np.rint(np.linspace(0, len(free) - 1, count)).astype(np.int64)]

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [HnsccCohort]
