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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydantic import Field, PositiveInt
from scipy.cluster.hierarchy import fclusterdata
from skimage.draw import polygon

from harmonia import hookimpl
from harmonia.api import Cohort, CohortParams, Items, PatientRecord, Task, TwinSettings
from harmonia.ct import AIR_HU
from harmonia.domains import OTHER, series_vendor, vendor_or_other
from harmonia.errors import DataError, UnreadableFile
from harmonia.geometry import crop_around
from harmonia.io import MedicalImage, SeriesInfo, read_image
from harmonia.patient_folders import patient_folders, readable_series
from harmonia_plugins.cohorts.ct_lidc_twin import write_twin

COLLECTION = "LIDC-IDRI"
PATIENT_FOLDER = re.compile(r"LIDC-IDRI-\d{4}", re.IGNORECASE)
DOMAINS = ["GE", OTHER]
CLASS_NAMES = ("benign", "malignant")
#: median malignancy ratings kept, and their class
CLASS_OF_RATING = {1: 0, 5: 1}
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


#: one extreme-rated nodule: its class and the readers' annotations of it
Nodule = tuple[int, tuple[Annotation, ...]]


@dataclass(frozen=True)
class Scan(PatientRecord):
    """One annotated CT series of a patient and its extreme-rated nodules; ``stratum`` is the patient's label."""

    series: SeriesInfo
    nodules: tuple[Nodule, ...]


def lidc_folders(root: Path) -> dict[str, Path]:
    """Upper-cased name -> folder of every LIDC-IDRI-NNNN patient folder."""
    return patient_folders(root, COLLECTION, lambda name: name.upper() if PATIENT_FOLDER.fullmatch(name) else None)


def pixel_spacing(series: SeriesInfo) -> tuple[float, float]:
    """(row, column) spacing in mm of a CT series, from its first file's header."""
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True, specific_tags=["PixelSpacing"])
    if "PixelSpacing" not in header:
        raise DataError(f"{series.files[0]}: CT slice without PixelSpacing")
    return float(header.PixelSpacing[0]), float(header.PixelSpacing[1])


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

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return tuple(self.params.roi)

    def records(self) -> Iterator[Scan]:
        """The annotated CT series of every patient with an extreme-rated nodule (malignant if any nodule is)."""
        self.check_root(self.root)
        for folder in lidc_folders(self.root).values():
            series = readable_series(folder, lambda error, name=folder.name: self.unreadable_file(error, name))
            scans = (
                None
                if series is None
                else self.skip_unreadable(folder.name, lambda series=series: self._annotated(series))
            )
            if scans is None:
                continue
            if not scans:
                self.exclude(folder.name, "no nodule rated 1 or 5")
                continue
            domains = {vendor_or_other(series_vendor(ct), "GE") for ct, _ in scans}
            if len(domains) > 1:
                raise DataError(f"{folder}: annotated CT series of different domains ({sorted(domains)}); expected one")
            domain, label = domains.pop(), max(label for _, nodules in scans for label, _ in nodules)
            for ct, nodules in scans:
                yield Scan(raw_id=folder.name, domain=domain, stratum=CLASS_NAMES[label], series=ct, nodules=nodules)

    def _annotated(self, series: list[SeriesInfo]) -> list[tuple[SeriesInfo, tuple[Nodule, ...]]]:
        """The CT series that have extreme-rated nodules, with those nodules; UnreadableFile for a malformed XML."""
        scans = []
        for ct in (s for s in series if s.modality == "CT"):
            annotations = [a for xml in sorted(ct.folder.glob("*.xml")) for a in read_annotations(xml, ct.uid)]
            found = nodules(annotations, pixel_spacing(ct), self.params.cluster_mm) if annotations else []
            if found:
                scans.append((ct, tuple(found)))
        return scans

    def read_items(self, scan: Scan) -> Items:
        """A crop at each nodule's centroid (the mean of its readers' centroids), in HU, and the nodule's class."""
        image = read_image(list(scan.series.files))
        crops, labels = [], []
        for label, members in scan.nodules:
            locate = slice_locator(image, members[0].xml)
            centre = np.mean([centroid(a, locate) for a in members], axis=0)
            crops.append(crop_around(image.array, centre, self.params.roi, fill=AIR_HU))
            labels.append(label)
        return np.array(crops), np.array(labels)

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; {OBTAIN}")
        if not lidc_folders(root):
            raise DataError(f"{root}: no LIDC-IDRI-NNNN patient folders in {COLLECTION}/ or at the root; {OBTAIN}")

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [CtLidcCohort]
