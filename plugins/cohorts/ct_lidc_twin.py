"""SYNTHETIC twin of LIDC-IDRI: phantom chest CT with rated lung nodules of made-up patients, in the TCIA layout.

Nothing here is patient data. The twin is written the way the collection is downloaded (see
:mod:`harmonia_plugins.cohorts.ct_lidc`), so the loader reads it exactly as it reads the real
data::

    <out>/LIDC-IDRI/LIDC-IDRI-NNNN/<study>/<series>/1-001.dcm ...   one axial CT series
    <out>/LIDC-IDRI/LIDC-IDRI-NNNN/<study>/<series>/NNN.xml         the readers' LIDC XML

Each patient is a miniature chest (body, subcutaneous fat, two lungs at -850 HU with vessels
running through them, heart, spine) with one or two lung nodules, each outlined slice by slice by
three or four "readers" whose outlines differ slightly, and rated for malignancy: malignant
nodules are large with a spiculated margin (rated 5, sometimes one reader says 4), benign ones
small and smooth (rated 1, sometimes one reader says 2). ``difficulty`` narrows the size gap and
shortens the spicules. Some patients also carry a nodule < 3 mm (one point, no ratings) and a
non-nodule mark, as in LIDC; one extra patient has only an intermediate nodule (all readers rate
it 3), and the first patient also has a chest radiograph with its own (non-CT) reader XML.

Vendors: GE ("GE MEDICAL SYSTEMS") and the others of LIDC ("SIEMENS", "TOSHIBA", "Philips"), each
with its scanner signature from :mod:`harmonia.synth` and its own pixel size and slice spacing.
Planted patient names, IDs and birth dates sit in the DICOM headers only; the XML, like LIDC's,
names no one.

This module does not import the loader: folder, file and XML element names are spelled out
independently, so a loader that misreads the real layout fails its tests on the twin.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.measure import find_contours

from harmonia.api import TwinSettings
from harmonia.io import WrittenSeries, write_dicom_series
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, twin_signature

COLLECTION = "LIDC-IDRI"
NAMESPACE = "http://www.nih.gov"
AIR, LUNG, FAT, SOFT, BONE, NODULE = range(6)
HU = {AIR: -1000.0, LUNG: -850.0, FAT: -100.0, SOFT: 40.0, BONE: 700.0, NODULE: 30.0}
MATRIX, SLICES = 160, 20
#: invented identifiers an anonymiser could have left in a header; they must never reach harmonia's output
FAKE_NAMES = ("DOE^JOHN", "ROE^RICHARD", "MUSTERMANN^MAX", "BIANCHI^LUCA", "SATO^TARO", "SOUZA^JOAO")
READERS = ("0144215", "0281639", "0392187", "0453102")


@dataclass(frozen=True)
class Site:
    """One scanner model as LIDC's headers name it, with its signature vendor and reconstruction geometry."""

    vendor: str
    manufacturer: str
    model: str
    pixel_mm: float
    slice_mm: float


GE_SITE = Site("GE", "GE MEDICAL SYSTEMS", "LightSpeed16", 0.74, 2.5)
OTHER_SITES = (
    Site("Siemens", "SIEMENS", "Sensation 16", 0.70, 2.0),
    Site("Toshiba", "TOSHIBA", "Aquilion", 0.78, 2.0),
    Site("Philips", "Philips", "Brilliance 16P", 0.76, 2.0),
)


@dataclass(frozen=True)
class Nodule:
    """A nodule in mm (image-centred), its margin, and what the readers say about it."""

    centre: tuple[float, float, float]
    radius: float
    spicules: np.ndarray
    spicule_length: float
    ratings: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------


def grid(site: Site) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (z, y, x) in mm, centred on the volume, on ``site``'s grid."""
    z = (np.arange(SLICES) - (SLICES - 1) / 2) * site.slice_mm
    yx = (np.arange(MATRIX) - (MATRIX - 1) / 2) * site.pixel_mm
    return np.meshgrid(z, yx, yx, indexing="ij")


def chest(site: Site, rng: np.random.Generator) -> np.ndarray:
    """Tissue map of a miniature chest: body with fat, two lungs with vessels, heart and spine."""
    z, y, x = grid(site)
    tissues = np.full(z.shape, AIR, np.int64)
    a, b = rng.uniform(50, 54), rng.uniform(38, 42)
    tissues[(x / a) ** 2 + (y / b) ** 2 < 1] = FAT
    tissues[(x / (a - 3)) ** 2 + (y / (b - 3)) ** 2 < 1] = SOFT
    for side in (-1, 1):
        tissues[((x - side * 23) / 19) ** 2 + ((y + 2) / 28) ** 2 < 1] = LUNG
    tissues[((x + 3) / 13) ** 2 + ((y - 4) / 11) ** 2 < 1] = SOFT
    tissues[x**2 + (y - 29) ** 2 < 7**2] = BONE
    lungs = tissues == LUNG
    for _ in range(8):
        cx, cy, r = rng.uniform(-40, 40), rng.uniform(-25, 22), rng.uniform(0.7, 1.4)
        drift = rng.uniform(-0.15, 0.15, 2)
        vessel = (x - cx - drift[0] * z) ** 2 + (y - cy - drift[1] * z) ** 2 < r**2
        tissues[vessel & lungs] = SOFT
    return tissues


def nodule_mask(nodule: Nodule, site: Site, scale: float = 1.0) -> np.ndarray:
    """Where the nodule is, on ``site``'s grid; ``scale`` stretches it (readers' outlines differ slightly)."""
    z, y, x = grid(site)
    d = np.stack([x - nodule.centre[0], y - nodule.centre[1], z - nodule.centre[2]])
    distance = np.sqrt((d**2).sum(axis=0))
    rho = distance / (nodule.radius * scale)
    if not len(nodule.spicules):
        return rho < 1
    direction = d / np.maximum(distance, 1e-6)
    alignment = np.einsum("kc,c...->k...", nodule.spicules, direction).max(axis=0)
    return rho < 1 + nodule.spicule_length * np.clip(alignment, 0, None) ** 30


def draw_nodule(rng: np.random.Generator, kind: str, side: int, difficulty: float) -> Nodule:
    """A nodule in the ``side`` lung: ``malignant`` (large, spiculated), ``benign`` (small, smooth) or ``intermediate``."""
    centre = (float(side * 23 + rng.uniform(-8, 8)), float(rng.uniform(-12, 10)), float(rng.uniform(-6, 6)))
    readers = int(rng.integers(3, 5))
    if kind == "malignant":
        radius, extreme, near = rng.uniform(5.5 - 2.0 * difficulty, 7.0), 5, 4
        spicules = rng.standard_normal((int(rng.integers(6, 11)), 3))
        length = 0.9 * (1 - 0.6 * difficulty)
    elif kind == "benign":
        radius, extreme, near = rng.uniform(2.0, 2.8 + 2.2 * difficulty), 1, 2
        spicules, length = np.zeros((0, 3)), 0.0
    else:
        return Nodule(centre, 4.0, np.zeros((0, 3)), 0.0, (3,) * readers)
    ratings = [extreme] * readers
    if rng.random() < 0.5:
        ratings[int(rng.integers(readers))] = near
    spicules = spicules / np.linalg.norm(spicules, axis=1, keepdims=True) if len(spicules) else spicules
    return Nodule(centre, float(radius), spicules, length, tuple(ratings))


# --------------------------------------------------------------------------------------------
# The reader XML
# --------------------------------------------------------------------------------------------


def sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def outlines(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(slice, ordered outline points (x, y) in pixels) of a mask, slice by slice, as LIDC edge maps."""
    found = []
    for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        for line in find_contours(np.pad(mask[k], 1).astype(float), 0.5):
            points = np.rint(line[:, ::-1] - 1).astype(int)
            keep = np.r_[True, (np.diff(points, axis=0) != 0).any(axis=1)]
            found.append((int(k), points[keep]))
    return found


def add_roi(parent: ET.Element, series: WrittenSeries, k: int, points: np.ndarray) -> None:
    """One ``roi``: the slice by z position and SOP instance UID, and its edge map."""
    roi = sub(parent, "roi")
    sub(roi, "imageZposition", f"{series.origin[2] + k * series.spacing[0]:.6f} ")
    sub(roi, "imageSOP_UID", series.sop_instance_uids[k])
    sub(roi, "inclusion", "TRUE")
    for x, y in points:
        edge = sub(roi, "edgeMap")
        sub(edge, "xCoord", int(x))
        sub(edge, "yCoord", int(y))


def characteristics(parent: ET.Element, rating: int, rng: np.random.Generator) -> None:
    """The nine LIDC characteristics; spiculation, margin and sphericity follow the malignancy rating."""
    element = sub(parent, "characteristics")
    spiky = rating >= 4
    values = {
        "subtlety": int(rng.integers(3, 6)),
        "internalStructure": 1,
        "calcification": 6,
        "sphericity": int(rng.integers(2, 4)) if spiky else int(rng.integers(4, 6)),
        "margin": int(rng.integers(1, 3)) if spiky else int(rng.integers(4, 6)),
        "lobulation": int(rng.integers(2, 5)) if spiky else 1,
        "spiculation": int(rng.integers(3, 6)) if spiky else 1,
        "texture": 5,
        "malignancy": rating,
    }
    for tag, value in values.items():
        sub(element, tag, value)


def reader_xml(
    path: Path,
    series: WrittenSeries,
    site: Site,
    nodules: list[Nodule],
    small: tuple[float, float, float] | None,
    rng: np.random.Generator,
) -> None:
    """The LIDC XML of one CT series: one reading session per reader, with their outlines and ratings."""
    root = ET.Element("LidcReadMessage", {"uid": series.series_uid + ".9", "xmlns": NAMESPACE})
    header = sub(root, "ResponseHeader")
    for tag, value in (
        ("Version", "1.8.1"),
        ("MessageId", int(rng.integers(10**6, 10**7))),
        ("DateRequest", "2005-01-01"),
        ("TimeRequest", "12:00:00"),
        ("RequestingSite", "twin"),
        ("ServicingSite", "twin"),
        ("TaskDescription", "Second unblinded read"),
        ("CtImageFile", "twin"),
        ("SeriesInstanceUid", series.series_uid),
        ("DateService", "2005-01-02"),
        ("TimeService", "12:00:00"),
        ("ResponseDescription", "1 - Reading complete"),
        ("StudyInstanceUID", series.study_uid),
    ):
        sub(header, tag, value)
    for reader in READERS:
        session = sub(root, "readingSession")
        sub(session, "annotationVersion", "3.12")
        sub(session, "servicingRadiologistID", reader)
        for number, nodule in enumerate(nodules, start=1):
            if READERS.index(reader) >= len(nodule.ratings):
                continue
            element = sub(session, "unblindedReadNodule")
            sub(element, "noduleID", f"Nodule {number:03d}")
            characteristics(element, nodule.ratings[READERS.index(reader)], rng)
            for k, points in outlines(nodule_mask(nodule, site, rng.uniform(0.93, 1.07))):
                add_roi(element, series, k, points)
        if small is not None:
            element = sub(session, "unblindedReadNodule")
            sub(element, "noduleID", f"{reader}-small")
            k, y, x = small
            add_roi(element, series, int(k), np.array([[int(x), int(y)]]))
        mark = sub(session, "nonNodule")
        sub(mark, "nonNoduleID", f"{reader}-nn")
        k = int(rng.integers(SLICES))
        sub(mark, "imageZposition", f"{series.origin[2] + k * series.spacing[0]:.6f}")
        sub(mark, "imageSOP_UID", series.sop_instance_uids[k])
        locus = sub(mark, "locus")
        sub(locus, "xCoord", int(rng.integers(40, 120)))
        sub(locus, "yCoord", int(rng.integers(40, 120)))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def radiograph(folder: Path, header: dict[str, str], rng: np.random.Generator) -> None:
    """A chest radiograph series and its reader XML (an ``IdriReadMessage``, not a CT reading)."""
    image = 800 + 200 * rng.random((96, 96))
    write_dicom_series(folder, image, (0.5, 0.5), modality="DX", manufacturer="GE MEDICAL SYSTEMS", **header)
    root = ET.Element("IdriReadMessage", {"xmlns": NAMESPACE})
    sub(sub(root, "ResponseHeader"), "TaskDescription", "CXR read")
    ET.ElementTree(root).write(folder / "001.xml", encoding="utf-8", xml_declaration=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_patient(out: Path, patient_id: str, site: Site, kinds: list[str], settings: TwinSettings) -> None:
    """One patient's CT series with its nodules and reader XML (and, for some, extras LIDC has)."""
    rng = np.random.default_rng(derive_seed("ct-lidc-twin-patient", settings.seed, patient_id))
    tissues = chest(site, rng)
    first_side = int(rng.choice([-1, 1]))
    nodules = [draw_nodule(rng, kind, first_side * (-1) ** i, settings.difficulty) for i, kind in enumerate(kinds)]
    for nodule in nodules:
        tissues[nodule_mask(nodule, site) & (tissues != AIR)] = NODULE
    small = None
    if rng.random() < 0.5:
        centre = (SLICES // 2, MATRIX // 2 + int(rng.integers(-10, 10)), MATRIX // 2 + 30)
        tissues[centre[0], centre[1] - 1 : centre[1] + 2, centre[2] - 1 : centre[2] + 2] = NODULE
        small = centre
    signature = twin_signature(site.vendor, "CT", settings)
    spacing = (site.slice_mm, site.pixel_mm, site.pixel_mm)
    image = acquire(
        tissues, [HU[t] for t in range(len(HU))], signature, derive_seed("ct-lidc-twin", patient_id), spacing
    )
    # outside the reconstruction circle the scanner writes its padding value, as many LIDC scans do
    _, y, x = np.indices(image.shape)
    image[(y - (MATRIX - 1) / 2) ** 2 + (x - (MATRIX - 1) / 2) ** 2 > (MATRIX / 2) ** 2] = -2000.0
    header = {
        "patient_name": FAKE_NAMES[int(rng.integers(len(FAKE_NAMES)))],
        "patient_id": patient_id,
        "birth_date": f"19{int(rng.integers(25, 70))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
    }
    study = out / COLLECTION / patient_id / f"01-01-2000-NA-NA-{int(rng.integers(10000, 99999))}"
    folder = study / f"{int(rng.integers(3000, 3999))}.000000-NA-{int(rng.integers(10000, 99999))}"
    series = write_dicom_series(
        folder,
        image,
        spacing,
        modality="CT",
        manufacturer=site.manufacturer,
        model_name=site.model,
        origin=(-(MATRIX - 1) / 2 * site.pixel_mm, -(MATRIX - 1) / 2 * site.pixel_mm, -300.0),
        extra={"SeriesNumber": 3000, "KVP": 120, "ConvolutionKernel": "STANDARD"},
        file_name="1-{index:03d}.dcm",
        **header,
    )
    reader_xml(folder / f"{int(rng.integers(60, 300)):03d}.xml", series, site, nodules, small, rng)
    if patient_id.endswith("0001"):
        radiograph(study / f"{int(rng.integers(1, 9))}.000000-NA-{int(rng.integers(10000, 99999))}", header, rng)


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin: ``settings.patients`` patients with extreme-rated nodules per domain, plus one without.

    In each domain half the patients (rounded down) have a malignant nodule (and maybe a benign
    one too); the others have one or two benign nodules. Deterministic in ``settings``.
    """
    rng = np.random.default_rng(derive_seed("ct-lidc-twin", settings.seed))
    plan: list[tuple[Site, list[str]]] = []
    for domain in ("GE", "Other"):
        for k in range(settings.patients):
            site = GE_SITE if domain == "GE" else OTHER_SITES[k % len(OTHER_SITES)]
            kinds = ["malignant"] if k < settings.patients // 2 else ["benign"]
            if rng.random() < 0.5:
                kinds.append("benign")
            plan.append((site, kinds))
    plan.append((OTHER_SITES[-1], ["intermediate"]))
    for number, (site, kinds) in zip(rng.permutation(len(plan)) + 1, plan):
        write_patient(Path(out), f"LIDC-IDRI-{number:04d}", site, kinds, settings)
