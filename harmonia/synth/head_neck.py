"""A SYNTHETIC head-and-neck CT phantom with tumour contours, written in the TCIA download layout.

An axial stack of a phantom neck in HU: skin fat, muscle, the cervical spine with its canal, the
airway, carotids and jugular veins (contrast-enhanced), the mandible in the upper slices, and
lesions (a primary tumour, a nodal metastasis, optionally with a cystic core) drawn by the twin
that uses it. Every vendor difference in appearance comes from the CT scanner signatures of
:mod:`harmonia.synth`; a :class:`Scanner` adds the vendor-typical slice thickness and pixel size.
:func:`write_ct` and :func:`write_structures` write a patient's CT series and RTSTRUCT as the NBIA
Data Retriever lays out TCIA collections. Used by the ``ct_hnscc`` and ``ct_oropharyngeal`` twins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from harmonia.api import TwinSettings
from harmonia.io import WrittenSeries, write_dicom_series, write_rtstruct
from harmonia.seeding import derive_seed
from harmonia.synth.acquisition import acquire
from harmonia.synth.fields import smooth_field
from harmonia.synth.modalities import twin_signature

# Tissues of the phantom; their clean HU are in ``clean_hu`` (the tumour's depends on the task).
AIR, FAT, MUSCLE, BONE, CANAL, VESSEL, TUMOUR, NODE, CYST = range(9)
#: invented identities an anonymiser could have left in the headers; they must never reach harmonia's output
FAKE_NAMES = ("DOE^JOHN", "ROE^MARY", "MUSTERMANN^MAX", "ROSSI^MARIO", "TANAKA^HANAKO", "SILVA^ANA")
FAKE_BIRTH_DATES = ("19480612", "19551103", "19600229", "19421017")


@dataclass(frozen=True)
class Scanner:
    """How one vendor's CT is written: the Manufacturer text, the model and vendor-typical geometry."""

    vendor: str
    manufacturer: str
    model: str
    pixel_mm: float
    slice_mm: float


@dataclass(frozen=True)
class Lesion:
    """A blob in world mm: centre (x, y, z), radius, margin irregularity (0 smooth) and a cystic core fraction."""

    centre: tuple[float, float, float]
    radius: float
    irregularity: float
    cyst: float = 0.0


@dataclass(frozen=True)
class Neck:
    """One patient's neck: matrix, slice count, body size (mm) and the lesions drawn into it."""

    matrix: int
    slices: int
    body: tuple[float, float]
    fat_mm: float
    primary: Lesion
    node: Lesion | None


# --------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------


def clean_hu(tumour_hu: float, cyst_hu: float = 15.0) -> list[float]:
    """Clean HU per tissue label; the tumour (and solid node) value and the cyst fluid are task knobs."""
    values = {
        AIR: -1000.0,
        FAT: -100.0,
        MUSCLE: 40.0,
        BONE: 700.0,
        CANAL: 20.0,
        VESSEL: 200.0,
        TUMOUR: tumour_hu,
        NODE: tumour_hu,
        CYST: cyst_hu,
    }
    return [values[t] for t in range(len(values))]


def world_axes(neck: Neck, scanner: Scanner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm of voxel centres along z (slices, inferior to superior), y (anterior to posterior) and x."""
    half = (neck.matrix - 1) / 2 * scanner.pixel_mm
    xy = np.linspace(-half, half, neck.matrix)
    z = np.arange(neck.slices) * scanner.slice_mm
    return z[:, None, None], xy[None, :, None], xy[None, None, :]


def anatomy(neck: Neck, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Tissue labels ``(z, y, x)`` of the neck without lesions; the mandible appears in the upper third."""
    z, y, x = world_axes(neck, scanner)
    level = z / max(z.max(), 1.0)
    wobble = 1 + 0.04 * smooth_field((neck.matrix, neck.matrix), 0.4, rng)
    ax, ay = neck.body[0] * (1 + 0.12 * level), neck.body[1] * (1 + 0.08 * level)
    body = (x / ax) ** 2 + ((y - 5) / ay) ** 2 < wobble
    inner = (x / (ax - neck.fat_mm)) ** 2 + ((y - 5) / (ay - neck.fat_mm)) ** 2 < wobble
    tissues = np.where(body, FAT, AIR)
    tissues[inner] = MUSCLE
    shape = tissues.shape
    vertebra = x**2 + (y - 15) ** 2 < 10**2
    canal_r = np.hypot(x, y - 29)
    tissues[np.broadcast_to(vertebra | ((canal_r >= 6) & (canal_r < 9)), shape)] = BONE
    tissues[np.broadcast_to(canal_r < 6, shape)] = CANAL
    airway = (x / (8 + 4 * level)) ** 2 + ((y + 18) / (6 + 1.5 * level)) ** 2 < 1
    tissues[np.broadcast_to(airway, shape)] = AIR
    for side in (-1, 1):
        vessels = (np.hypot(x - side * 22, y + 5) < 3.5) | (np.hypot(x - side * 29, y + 2) < 5)
        tissues[np.broadcast_to(vessels, shape)] = VESSEL
    jaw = (x / 36) ** 2 + ((y + 6) / 34) ** 2
    mandible = (jaw > 1) & ((x / 42) ** 2 + ((y + 6) / 40) ** 2 < 1) & (y < -10) & (level > 0.68)
    tissues[np.broadcast_to(mandible, shape) & body] = BONE
    return tissues


def lesion_mask(neck: Neck, scanner: Scanner, lesion: Lesion, rng: np.random.Generator) -> np.ndarray:
    """Voxels inside ``lesion``: a slightly elongated blob whose margin ``irregularity`` makes lobulated.

    The margin's random field is drawn on the lesion's bounding box only (drawing it on the
    whole volume would dominate the twin's writing time).
    """
    z, y, x = world_axes(neck, scanner)
    cx, cy, cz = lesion.centre
    distance = np.sqrt((x - cx) ** 2 + ((y - cy) / 0.9) ** 2 + ((z - cz) / 1.2) ** 2)
    reach = distance < lesion.radius * (1 + lesion.irregularity) + 1e-6
    mask = np.zeros(reach.shape, bool)
    if not reach.any():
        return mask
    box = ndimage.find_objects(reach.astype(np.int8))[0]
    spacing = (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm)
    field = smooth_field(reach[box].shape, 0.35, rng, spacing)
    mask[box] = distance[box] < lesion.radius * (1 + lesion.irregularity * field)
    return mask


def draw_lesions(tissues: np.ndarray, neck: Neck, scanner: Scanner, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the primary (and node) into ``tissues`` in place; their masks by role ("primary", "node")."""
    free = ~np.isin(tissues, (BONE, VESSEL, CANAL))
    masks = {}
    for role, lesion in (("primary", neck.primary), ("node", neck.node)):
        if lesion is None:
            continue
        mask = lesion_mask(neck, scanner, lesion, rng) & free
        tissues[mask] = TUMOUR if role == "primary" else NODE
        if lesion.cyst > 0:
            core = lesion_mask(
                neck, scanner, replace(lesion, radius=lesion.radius * lesion.cyst, irregularity=0.0), rng
            )
            tissues[core & mask] = CYST
        masks[role] = mask
    return masks


def scan(tissues: np.ndarray, values: list[float], scanner: Scanner, settings: TwinSettings, seed: int) -> np.ndarray:
    """The CT (HU) a vendor's scanner acquires of the phantom: its signature, its voxel size."""
    signature = twin_signature(scanner.vendor, "CT", settings)
    spacing = (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm)
    return acquire(tissues, values, signature, seed=seed, spacing=spacing)


# --------------------------------------------------------------------------------------------
# Writing in the TCIA layout
# --------------------------------------------------------------------------------------------


def tcia_folder(number: float, description: str, *key: object) -> str:
    """A folder name shaped as the NBIA Data Retriever writes it: number, description, five digits."""
    return f"{number:.6f}-{description}-{derive_seed('tcia-folder', *key) % 100000:05d}"


@dataclass(frozen=True)
class Identity:
    """The planted identity of one synthetic patient: ID (also its folder name), name and birth date."""

    patient_id: str
    name: str
    birth_date: str

    @classmethod
    def draw(cls, patient_id: str, rng: np.random.Generator) -> Identity:
        return cls(patient_id, str(rng.choice(FAKE_NAMES)), str(rng.choice(FAKE_BIRTH_DATES)))


def write_ct(
    patient: Path,
    who: Identity,
    volume: np.ndarray,
    scanner: Scanner,
    study: str,
    description: str,
    study_uid: str | None = None,
) -> WrittenSeries:
    """Write one CT series into ``patient/<study>/<series>/`` (origin centred in-plane) and return it."""
    half = (volume.shape[1] - 1) / 2 * scanner.pixel_mm
    folder = patient / study / tcia_folder(2, description, who.patient_id, study, description)
    return write_dicom_series(
        folder,
        volume,
        (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm),
        modality="CT",
        manufacturer=scanner.manufacturer,
        patient_name=who.name,
        patient_id=who.patient_id,
        birth_date=who.birth_date,
        series_description=description,
        study_uid=study_uid,
        origin=(-half, -half, -120.0),
        model_name=scanner.model,
        file_name="1-{index:03d}.dcm",
        extra={"KVP": 120},
    )


def write_structures(
    patient: Path, who: Identity, series: WrittenSeries, study: str, rois: dict[str, np.ndarray]
) -> Path:
    """Write the RTSTRUCT of ``series`` into its own series folder of ``study``, named ``1-1.dcm`` as TCIA does."""
    folder = patient / study / tcia_folder(1, "RTSTRUCT", who.patient_id, study)
    folder.mkdir(parents=True, exist_ok=True)
    return write_rtstruct(folder / "1-1.dcm", series, rois, patient_name=who.name, patient_id=who.patient_id)


def oar_rois(tissues: np.ndarray, gtv: np.ndarray) -> dict[str, np.ndarray]:
    """Two ROIs that are not GTVs: the spinal canal and a CTV (the GTVs grown by two voxels in every direction)."""
    return {"SpinalCord": tissues == CANAL, "CTV_70": ndimage.binary_dilation(gtv, iterations=2)}
