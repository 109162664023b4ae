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

Finding the contoured CT and reading its GTV mask is :class:`harmonia.contoured_ct.ContouredCtCohort`'s
job. Raw patient folder names leave this module only as pseudonyms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Items, RegexPattern, Task, TwinSettings
from harmonia.contoured_ct import ContouredCtCohort, ContouredPatient, GtvParams
from harmonia.ct import AIR_HU, hu_to_grid
from harmonia.domains import OTHER, vendor_or_other
from harmonia.geometry import pixel_spacing_field, slice_size_field
from harmonia.io import MedicalImage
from harmonia_plugins.cohorts.ct_hnscc_twin import write_twin

OBTAIN = (
    "download the HNSCC collection from TCIA (https://www.cancerimagingarchive.net/collection/hnscc/, free, "
    "CC BY-NC 3.0) with the NBIA Data Retriever (descriptive directory names) and point cohort.root "
    "(or $HARMONIA_DATA/ct_hnscc) at the folder holding HNSCC/"
)


class HnsccParams(GtvParams):
    """Which ROIs are tumour, the slice grid, and how many tumour-free slices each patient gives."""

    roi_pattern: RegexPattern = Field(
        r"^GTV",
        description="regular expression (case-insensitive, re.search) of the tumour ROI names; slices with a "
        "voxel of any matching ROI are positive (default: every GTV, e.g. GTV, GTVp, GTV_N, GTV-1)",
    )
    image_size: int = slice_size_field()
    spacing_mm: float = pixel_spacing_field(2.0)
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
        return ["GE", OTHER]

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> Iterator[ContouredPatient]:
        """Every patient with a contoured CT, in raw-ID order; its domain is GE or Other by the CT's vendor."""
        for raw_id, folder in self.folders().items():
            case = self.contoured_ct(raw_id, folder)
            if case is not None:
                yield self.patient(raw_id, vendor_or_other(case.vendor, "GE"), case)

    def items(self, patient: ContouredPatient, image: MedicalImage, tumour: np.ndarray) -> Items:
        """Tumour slices and evenly spaced tumour-free ones, in slice order, resampled to the grid."""
        present = tumour.reshape(len(tumour), -1).any(axis=1)
        chosen = np.sort(
            np.concatenate([np.flatnonzero(present), self._negatives(np.flatnonzero(~present), int(present.sum()))])
        )
        # rows are the image's y axis (spacing[1]), columns its x axis (spacing[2]); padding is air
        spacing = (image.spacing[2], image.spacing[1])
        p = self.params
        return hu_to_grid(image.array[chosen], spacing, p.image_size, p.spacing_mm, fill=AIR_HU), present[chosen]

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
