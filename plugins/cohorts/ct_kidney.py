"""C4KC-KiTS: arterial-phase abdominal CT with kidney and tumour segmentations; slice-level tumour presence.

The loader reads the TCIA collection as the NBIA Data Retriever downloads it (Heller et al. 2019;
KiTS19 patients of the University of Minnesota Medical Center)::

    <root>/C4KC-KiTS/KiTS-NNNNN/<study>/<series>/*.dcm     (or the patient folders directly under <root>)

Each patient folder holds the arterial-phase CT series and a DICOM SEG whose segments mark the
kidneys and the tumour ("Kidney", "Renal Tumor"). The SEG names the CT series it segments
(ReferencedSeriesSequence); that series is used, whatever other series the folder holds. The
vendor comes from the CT's Manufacturer tag (0008,0070): Siemens, or Other. Items are the axial
slices of that CT, labelled 1 when any voxel of the tumour segment lies in the slice. The patient
folder name (the KiTS ID) leaves this module only as a pseudonym.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Cohort, Items, PatientRecord, RegexPattern, Task, TwinSettings
from harmonia.ct import SliceParams, hu_to_grid
from harmonia.domains import OTHER, series_vendor, vendor_or_other
from harmonia.errors import DataError
from harmonia.io import SeriesInfo, find_series, read_image, read_seg, seg_segment_labels
from harmonia.patient_folders import patient_folders, readable_series
from harmonia_plugins.cohorts.ct_kidney_twin import write_twin

COLLECTION = "C4KC-KiTS"
PATIENT_FOLDER = re.compile(r"KiTS-\d+", re.IGNORECASE)
DOMAINS = ("Siemens", OTHER)
OBTAIN = (
    "download the C4KC-KiTS collection from TCIA (https://www.cancerimagingarchive.net/collection/c4kc-kits/, "
    "doi:10.7937/TCIA.2019.IX49E8NX) with the NBIA Data Retriever and point cohort.root (or "
    "$HARMONIA_DATA/ct_kidney) at the folder holding C4KC-KiTS/"
)


class KidneyParams(SliceParams):
    """Which SEG segment is the tumour, which slices become items, and the geometry every slice is brought to."""

    tumour_segment: RegexPattern = Field(
        r"tumou?r",
        description="regular expression (case-insensitive search) matching the SegmentLabel of the tumour "
        "segment(s) of the SEG, e.g. 'Renal Tumor'",
    )
    tumour_free_slices: int | None = Field(
        None,
        ge=0,
        description="tumour-free slices kept per patient, evenly spaced over the candidates; null keeps them all",
    )
    kidney_slices_only: bool = Field(
        False, description="only slices where the SEG marks kidney or tumour are candidates (False: every slice)"
    )


@dataclass(frozen=True)
class Case(PatientRecord):
    """One patient (``raw_id`` is the folder name): the segmented CT series and its SEG file."""

    ct: SeriesInfo
    seg: Path


# --------------------------------------------------------------------------------------------
# The download's folders
# --------------------------------------------------------------------------------------------


def kits_folders(root: Path) -> dict[str, Path]:
    """Folder name -> folder of every KiTS-NNNNN patient folder of the download."""
    return patient_folders(root, COLLECTION, lambda name: name if PATIENT_FOLDER.fullmatch(name) else None)


def pair_seg_with_ct(folder: Path, series: list[SeriesInfo]) -> tuple[SeriesInfo, SeriesInfo]:
    """The (SEG, CT) pair of a patient folder: the CT series is the one the SEG references."""
    segs = [s for s in series if s.modality == "SEG"]
    cts = {s.uid: s for s in series if s.modality == "CT"}
    if not segs:
        found = ", ".join(sorted({s.modality for s in series})) or "no DICOM"
        raise DataError(
            f"{folder}: no DICOM SEG series (kidney and tumour segmentation) found ({found}); "
            f"expected one next to the CT"
        )
    if not cts:
        raise DataError(f"{folder}: no CT series found next to the SEG")
    pairs = {uid: (seg, cts[uid]) for seg in segs for uid in seg.referenced_series_uids if uid in cts}
    if len(pairs) > 1:
        raise DataError(
            f"{folder}: SEGs reference {len(pairs)} different CT series; expected one segmented CT per patient"
        )
    if pairs:
        return next(iter(pairs.values()))
    referencing = [s for s in segs if s.referenced_series_uids]
    if referencing:
        seg = referencing[0]
        raise DataError(
            f"{seg.files[0]}: the SEG segments series {seg.referenced_series_uids[0]}, which is not among the "
            f"{len(cts)} CT series in {folder}"
        )
    if len(cts) == 1:
        return segs[0], next(iter(cts.values()))
    raise DataError(f"{segs[0].files[0]}: the SEG names no referenced series and {folder} holds {len(cts)} CT series")


# --------------------------------------------------------------------------------------------
# Slices
# --------------------------------------------------------------------------------------------


def tumour_segments(seg: Path, pattern: re.Pattern) -> list[int]:
    """Numbers of the SEG's segments whose label matches ``pattern``; DataError naming the labels when none does."""
    labels = seg_segment_labels(seg)
    numbers = [n for n, label in labels.items() if pattern.search(label)]
    if not numbers:
        raise DataError(
            f"{seg}: no segment label matches tumour_segment {pattern.pattern!r}; the labels are "
            f"{sorted(labels.values())}"
        )
    return numbers


def chosen_slices(tumour: np.ndarray, segmented: np.ndarray, params: KidneyParams) -> np.ndarray:
    """Indices of the slices that become items: every tumour slice, and the kept tumour-free candidates."""
    candidates = segmented if params.kidney_slices_only else np.ones_like(segmented)
    free = np.flatnonzero(candidates & ~tumour)
    if params.tumour_free_slices is not None and len(free) > params.tumour_free_slices:
        free = free[np.round(np.linspace(0, len(free) - 1, params.tumour_free_slices)).astype(int)]
    return np.union1d(np.flatnonzero(tumour), free)


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


class KidneyCohort(Cohort):
    """C4KC-KiTS arterial-phase CT, Siemens vs Other: 2-D axial slices, tumour present or not."""

    name = "ct_kidney"
    modality = "CT"
    obtain = OBTAIN
    Params = KidneyParams
    params: KidneyParams

    task = Task(kind="classification", class_names=("no tumour", "tumour"), spatial_dims=2)

    def domains(self) -> list[str]:
        return list(DOMAINS)

    @property
    def item_shape(self) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> Iterator[Case]:
        """Every patient folder whose files are readable, in folder-name order."""
        for raw_id, folder in kits_folders(self.root).items():
            series = readable_series(folder, lambda error, raw_id=raw_id: self.unreadable_file(error, raw_id))
            if series is not None:
                seg, ct = pair_seg_with_ct(folder, series)
                yield Case(raw_id=raw_id, domain=vendor_or_other(series_vendor(ct), "Siemens"), ct=ct, seg=seg.files[0])

    def read_items(self, case: Case) -> Items:
        """The items of one patient: ``[n, H, W]`` float32 HU slices and their int64 tumour labels."""
        p = self.params
        image = read_image(list(case.ct.files))
        labels = read_seg(case.seg, image)
        tumour_voxels = np.isin(labels, tumour_segments(case.seg, re.compile(p.tumour_segment, re.IGNORECASE)))
        tumour = tumour_voxels.reshape(len(labels), -1).any(axis=1)
        keep = chosen_slices(tumour, labels.reshape(len(labels), -1).any(axis=1), p)
        spacing_xy = (image.spacing[2], image.spacing[1])
        return hu_to_grid(image.array[keep], spacing_xy, p.image_size, p.spacing_mm), tumour[keep]

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the C4KC-KiTS download here; {OBTAIN}")
        folders = list(kits_folders(root).values())
        if not folders:
            raise DataError(f"{root}: no patient folders (C4KC-KiTS/KiTS-NNNNN/<study>/<series>/*.dcm) found; {OBTAIN}")
        series_vendor(pair_seg_with_ct(folders[0], find_series(folders[0]))[1])

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [KidneyCohort]
