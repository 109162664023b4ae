"""LIDC-IDRI: thoracic CT with lung nodules outlined and rated by up to four radiologists; malignancy 1 vs 5.

The loader reads the TCIA collection (Armato et al., Med Phys 2011) as downloaded with the NBIA
Data Retriever::

    <root>/LIDC-IDRI/LIDC-IDRI-NNNN/<study>/<series>/*.dcm    (or <root>/LIDC-IDRI-NNNN/...)
    <root>/LIDC-IDRI/LIDC-IDRI-NNNN/<study>/<series>/NNN.xml  the readers' XML, beside the CT slices

Each reader's ``unblindedReadNodule`` (outlines per slice, ``characteristics/malignancy`` 1-5)
is one annotation. Annotations of different readers whose centroids lie within ``cluster_mm`` of
each other (single linkage) are one nodule, and the nodule's rating is the median of its
annotations' ratings. As in the paper, only nodules rated at the extremes are kept: median 1 is
benign (class 0), median 5 malignant (class 1). An item is the 5 x 47 x 47 voxel block of the CT
(in HU) centred on the nodule's centroid (the mean of its annotations' centroids). The vendor is
the CT series' DICOM Manufacturer: GE or Other. Patient folder names leave this module only as
pseudonyms.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pydicom
from pydantic import Field, PositiveInt
from scipy.cluster.hierarchy import fclusterdata
from skimage.draw import polygon

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, ImageSet, ItemsBuilder, Task, TwinSettings, require_known
from harmonia.errors import DataError, UnreadableFile
from harmonia.geometry import crop_around
from harmonia.io import MedicalImage, SeriesInfo, find_series, read_image
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.ct_lidc_twin import write_twin

COLLECTION = "LIDC-IDRI"
PATIENT_FOLDER = re.compile(r"LIDC-IDRI-\d{4}", re.IGNORECASE)
DOMAINS = ["GE", "Other"]
CLASS_NAMES = ("benign", "malignant")
#: median malignancy ratings kept, and their class
CLASS_OF_RATING = {1: 0, 5: 1}
#: HU of the padding where a crop leaves the image
AIR_HU = -1000.0
OBTAIN = (
    "download LIDC-IDRI from TCIA (https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX) with the NBIA Data Retriever "
    "(the CT series come with their reader XML) and point cohort.root (or $HARMONIA_DATA/ct_lidc) at the folder "
    "holding LIDC-IDRI/"
)


class CtLidcParams(CohortParams):
    """The ROI size and how far apart two readers' annotations of one nodule may lie."""

    roi: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (5, 47, 47), description="ROI size in voxels: slices, rows, columns"
    )
    cluster_mm: float = Field(
        10.0,
        gt=0,
        le=50,
        description="annotations of different readers whose centroids are this close (mm) are one nodule",
    )


# --------------------------------------------------------------------------------------------
# The reader XML
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outline:
    """One ``roi`` of an annotation: its slice (SOP instance UID and z position in mm) and edge points (x, y)."""

    sop_uid: str
    z_mm: float
    points: np.ndarray


@dataclass(frozen=True)
class Annotation:
    """One reader's outline of one nodule with its malignancy rating (1-5)."""

    rating: int
    outlines: tuple[Outline, ...]
    xml: Path


def local_name(tag: str) -> str:
    """An XML tag without its namespace ('{http://www.nih.gov}roi' -> 'roi')."""
    return tag.rsplit("}", 1)[-1]


def number(element: ET.Element, path: str, xml: Path, kind: Callable[[str], float | int]) -> float | int:
    """The number at ``path`` under ``element``; DataError naming the XML if it is missing or malformed."""
    text = element.findtext(path)
    try:
        return kind(text.strip())
    except (AttributeError, ValueError):
        raise DataError(f"{xml}: <{path.replace('{*}', '')}> is {text!r}, expected a number") from None


def parse_outline(roi: ET.Element, xml: Path) -> Outline | None:
    """One ``roi`` element, or None for an excluded region (``inclusion`` FALSE)."""
    if (roi.findtext("{*}inclusion") or "TRUE").strip().upper() == "FALSE":
        return None
    points = [
        (number(edge, "{*}xCoord", xml, int), number(edge, "{*}yCoord", xml, int))
        for edge in roi.iterfind("{*}edgeMap")
    ]
    if not points:
        raise DataError(f"{xml}: a <roi> has no <edgeMap> points")
    return Outline(
        (roi.findtext("{*}imageSOP_UID") or "").strip(), number(roi, "{*}imageZposition", xml, float), np.array(points)
    )


def read_annotations(xml: Path, series_uid: str) -> list[Annotation]:
    """The rated nodule annotations of every reader in a CT reader XML of ``series_uid``.

    XML of other kinds (chest radiograph reads) and of other series give none; nodules without a
    malignancy rating (those under 3 mm) are left out.
    """
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UnreadableFile(xml, f"malformed reader XML ({' '.join(str(exc).split())})") from exc
    if local_name(root.tag) != "LidcReadMessage":
        return []
    described = (root.findtext("{*}ResponseHeader/{*}SeriesInstanceUid") or "").strip()
    if described and described != series_uid:
        return []
    annotations = []
    for nodule in root.iterfind(".//{*}readingSession/{*}unblindedReadNodule"):
        if nodule.find("{*}characteristics/{*}malignancy") is None:
            continue
        rating = number(nodule, "{*}characteristics/{*}malignancy", xml, int)
        if not 1 <= rating <= 5:
            raise DataError(f"{xml}: malignancy rating {rating} outside 1-5")
        outlines = tuple(o for o in (parse_outline(roi, xml) for roi in nodule.iterfind("{*}roi")) if o is not None)
        if outlines:
            annotations.append(Annotation(int(rating), outlines, xml))
    return annotations


def centroid(annotation: Annotation, slice_of: Callable[[Outline], float]) -> np.ndarray:
    """(slice, row, column) centroid of the region inside an annotation's outlines; ``slice_of`` places each outline."""
    weights, points = [], []
    for outline in annotation.outlines:
        rows, cols = polygon(outline.points[:, 1], outline.points[:, 0])
        region = np.unique(np.concatenate([np.stack([rows, cols], 1), outline.points[:, ::-1]]), axis=0)
        weights.append(len(region))
        points.append([slice_of(outline), *region.mean(axis=0)])
    return np.average(np.array(points), axis=0, weights=weights)


def nodules(
    annotations: list[Annotation], pixel_mm: tuple[float, float], cluster_mm: float
) -> list[tuple[int, tuple[Annotation, ...]]]:
    """(class, annotations) of every extreme-rated nodule: readers' annotations grouped by centroid proximity."""
    if not annotations:
        return []
    scale = np.array([1.0, *pixel_mm])
    centres = np.array([centroid(a, lambda o: o.z_mm) for a in annotations]) * scale
    groups = fclusterdata(centres, cluster_mm, criterion="distance", method="single") if len(centres) > 1 else [1]
    found = []
    for group in sorted(set(groups)):
        members = tuple(a for a, g in zip(annotations, groups) if g == group)
        median = float(np.median([a.rating for a in members]))
        if median in CLASS_OF_RATING:
            found.append((CLASS_OF_RATING[int(median)], members))
    return found


def slice_locator(image: MedicalImage, xml: Path) -> Callable[[Outline], float]:
    """Where an outline lies in ``image``: the slice of its SOP instance UID, else of its z position."""
    by_uid = {uid: k for k, uid in enumerate(image.sop_instance_uids)}
    slices = np.arange(len(image.array))

    def locate(outline: Outline) -> float:
        if outline.sop_uid in by_uid:
            return float(by_uid[outline.sop_uid])
        if image.origin is None:
            raise DataError(
                f"{xml}: an outline's SOP instance UID is not in {image.path}, whose slices have no positions"
            )
        heights = image.index_to_world(np.stack([slices, 0 * slices, 0 * slices], 1))[:, 2]
        k = int(np.argmin(np.abs(heights - outline.z_mm)))
        if abs(heights[k] - outline.z_mm) > image.spacing[0] / 2 + 1e-3:
            raise DataError(f"{xml}: an outline at z = {outline.z_mm} mm lies on no slice of {image.path}")
        return float(k)

    return locate


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """One annotated CT series and its extreme-rated nodules (class, annotations)."""

    series: SeriesInfo
    nodules: tuple[tuple[int, tuple[Annotation, ...]], ...]


@dataclass(frozen=True)
class Case:
    """One patient with at least one extreme-rated nodule; ``raw_id`` never leaves this module."""

    raw_id: str
    domain: str
    scans: tuple[Scan, ...]

    @property
    def label(self) -> int:
        """The patient-level label: malignant if any nodule is."""
        return max(label for scan in self.scans for label, _ in scan.nodules)


def patient_folders(root: Path) -> list[Path]:
    """The LIDC-IDRI-NNNN folders under ``LIDC-IDRI/`` or directly under ``root``."""
    folders: dict[str, Path] = {}
    for parent in (root / COLLECTION, root):
        if not parent.is_dir():
            continue
        for folder in sorted(p for p in parent.iterdir() if p.is_dir() and PATIENT_FOLDER.fullmatch(p.name)):
            if folder.name.upper() in folders:
                raise DataError(f"{folder}: the same patient is also in {folders[folder.name.upper()]}; keep one copy")
            folders[folder.name.upper()] = folder
    return list(folders.values())


def pixel_spacing(series: SeriesInfo) -> tuple[float, float]:
    """(row, column) spacing in mm of a CT series, from its first file's header."""
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True, specific_tags=["PixelSpacing"])
    if "PixelSpacing" not in header:
        raise DataError(f"{series.files[0]}: CT slice without PixelSpacing")
    return float(header.PixelSpacing[0]), float(header.PixelSpacing[1])


def domain_of(series: SeriesInfo) -> str:
    """GE or Other from the series' Manufacturer; DataError naming a file when the tag is absent."""
    if not series.manufacturer.strip():
        raise DataError(
            f"{series.files[0]}: no Manufacturer (0008,0070) in the CT series; expected e.g. 'GE MEDICAL SYSTEMS'"
        )
    return "GE" if series.vendor == "GE" else "Other"


class CtLidcCohort(Cohort):
    """LIDC-IDRI chest CT, GE vs Other: nodule malignancy 1 vs 5 from a 5 x 47 x 47 crop at the nodule."""

    name = "ct_lidc"
    modality = "CT"
    obtain = OBTAIN
    Params = CtLidcParams
    params: CtLidcParams

    task = Task(kind="classification", class_names=CLASS_NAMES, spatial_dims=3)

    def domains(self) -> list[str]:
        return list(DOMAINS)

    @cached_property
    def _cases(self) -> dict[str, Case]:
        """Pseudonym -> case of every patient with an extreme-rated nodule on a readable CT series."""
        self.check_root(self.root)
        cases = {}
        for folder in patient_folders(self.root):
            try:
                scans = self._scans(folder)
            except UnreadableFile as error:
                self.unreadable_file(error, folder.name)
                continue
            if not scans:
                self.exclude(folder.name, "no nodule rated 1 or 5")
                continue
            domains = {domain_of(scan.series) for scan in scans}
            if len(domains) > 1:
                raise DataError(f"{folder}: annotated CT series of different domains ({sorted(domains)}); expected one")
            cases[pseudonymize(folder.name, self.name)] = Case(folder.name, domains.pop(), tuple(scans))
        return cases

    def _scans(self, folder: Path) -> list[Scan]:
        """The patient's CT series that have extreme-rated nodules; UnreadableFile for the first unreadable file."""
        unreadable: list[UnreadableFile] = []
        series = find_series(folder, on_unreadable=unreadable.append)
        if unreadable:
            raise unreadable[0]
        scans = []
        for ct in (s for s in series if s.modality == "CT"):
            annotations = [a for xml in sorted(ct.folder.glob("*.xml")) for a in read_annotations(xml, ct.uid)]
            found = nodules(annotations, pixel_spacing(ct), self.params.cluster_mm) if annotations else []
            if found:
                scans.append(Scan(ct, tuple(found)))
        return scans

    def index(self) -> pd.DataFrame:
        rows = [{"patient": p, "domain": c.domain, "stratum": CLASS_NAMES[c.label]} for p, c in self._cases.items()]
        return pd.DataFrame(rows, columns=["patient", "domain", "stratum"])

    def load(self, patients: Sequence[str]) -> ImageSet:
        require_known(patients, self._cases)
        items = ItemsBuilder(self.params.roi)
        for patient in patients:
            case = self._cases[patient]
            for scan in case.scans:
                try:
                    image = read_image(list(scan.series.files))
                except UnreadableFile as error:
                    self.unreadable_file(error, case.raw_id)
                    continue
                for label, members in scan.nodules:
                    locate = slice_locator(image, members[0].xml)
                    centre = np.mean([centroid(a, locate) for a in members], axis=0)
                    items.add(crop_around(image.array, centre, self.params.roi, fill=AIR_HU), [label], patient, case.domain)
        return items.image_set()

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; {OBTAIN}")
        if not patient_folders(root):
            raise DataError(f"{root}: no LIDC-IDRI-NNNN patient folders in {COLLECTION}/ or at the root; {OBTAIN}")

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [CtLidcCohort]
