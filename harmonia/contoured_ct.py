"""Cohorts whose tumour is drawn as RTSTRUCT contours on a planning CT (TCIA head-and-neck collections).

:class:`ContouredCtCohort` finds each patient's contoured CT (the CT series an RTSTRUCT with
matching ROIs references), reads the CT in HU and the union of its matching ROIs, and leaves the
items to a subclass (:meth:`ContouredCtCohort.items`).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from harmonia.api import Cohort, CohortParams, Items, PatientRecord, RegexPattern
from harmonia.domains import series_vendor
from harmonia.errors import DataError, UnreadableFile
from harmonia.io import MedicalImage, SeriesInfo, find_series, read_image, read_rtstruct, rtstruct_roi_names
from harmonia.patient_folders import patient_folders


class GtvParams(CohortParams):
    """Parameters of a cohort whose tumour is an RTSTRUCT ROI: the ROI name pattern, checked to compile."""

    roi_pattern: RegexPattern = Field(
        r"^GTV", description="regular expression (case-insensitive, re.search) of the ROI names"
    )


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
        return series_vendor(self.ct)


@dataclass(frozen=True)
class ContouredPatient(PatientRecord):
    """One usable patient (``raw_id`` is its folder name): its contoured CT and a patient-level class, if any."""

    case: ContouredCt
    label: int | None = None


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


class ContouredCtCohort(Cohort):
    """Base of the CT cohorts whose tumour is drawn as RTSTRUCT contours: finds, reads and excludes patients.

    A subclass lists its usable patients (:meth:`records`, with :meth:`contoured_ct` and
    :meth:`patient`) and says what items one patient's CT and tumour mask give (:meth:`items`).
    ``excluded`` maps the pseudonym of every patient left out to the reason (no RTSTRUCT, no GTV,
    unknown label, another vendor...).
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

    @classmethod
    def patient_folders(cls, root: Path) -> dict[str, Path]:
        """Raw ID -> folder of every patient under ``<collection>/``, ``manifest-*/<collection>/`` or ``root``."""
        return patient_folders(root, cls.collection, lambda name: name if cls.patient_pattern.match(name) else None)

    def folders(self) -> dict[str, Path]:
        """Raw ID -> folder of every patient; DataError saying what was expected where when there is none."""
        found = self.patient_folders(self.root)
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

    def patient(self, raw_id: str, domain: str, case: ContouredCt, label: int | None = None) -> ContouredPatient:
        """The record of a usable patient, stratified by its class (``label``) when it has one."""
        stratum = None if label is None else self.task.class_names[label]
        return ContouredPatient(raw_id=raw_id, domain=domain, stratum=stratum, case=case, label=label)

    def read_items(self, patient: ContouredPatient) -> Items:
        """The items of the CT in HU and the union of its matching ROIs; none (excluded) when the ROIs are empty."""
        image = read_image(list(patient.case.ct.files))
        masks = read_rtstruct(patient.case.rtstruct, image, lambda name: name in patient.case.rois)
        tumour = np.logical_or.reduce([np.zeros(image.shape, bool), *masks.values()])
        if not tumour.any():
            self.exclude(patient.raw_id, "GTV ROI without contours")
            return np.zeros((0, *self.item_shape), np.float32), np.zeros((0, *self.target_shape), np.int64)
        return self.items(patient, image, tumour)

    @abstractmethod
    def items(self, patient: ContouredPatient, image: MedicalImage, tumour: np.ndarray) -> Items:
        """One patient's items: float32 images ``[n, *item_shape]`` in HU and int64 class indices ``[n]``."""

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the {cls.collection} collection here; {cls.obtain}")
        if not cls.patient_folders(root):
            raise DataError(cls.missing_patients_message(root))
