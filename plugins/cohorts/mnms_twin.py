"""The SYNTHETIC twin of M&Ms: a miniature open release whose hearts are phantoms, not patients.

It writes the real release's layout and information sheet (see :mod:`harmonia_plugins.cohorts.mnms`)
so the loader reads it exactly as it reads the real data. Each patient is a short-axis stack of
a phantom chest: LV blood pool inside a myocardial ring, an RV crescent beside it, pericardial
fat, lungs, liver, the descending aorta and chest wall, beating from end-diastole (ED) to
end-systole (ES) and shrinking from base to apex. Pathology (NOR, DCM, HCM) sets LV size, wall
thickness and contraction. Every vendor difference in appearance comes from the scanner
signatures of :mod:`harmonia.synth`; only the matrix, pixel size and frame count are
vendor-typical acquisition choices here.

Nothing in this module is written by the loader, and it does not import the loader: the file
names and column names below are spelled out independently, so a loader that misreads the
real layout fails its tests on the twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from harmonia.api import TwinSettings
from harmonia.seeding import derive_seed
from harmonia.synth import acquire, smooth_field, twin_signature

INFO_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
COLUMNS = ["External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Age", "Pathology", "Sex", "Height", "Weight"]
SLICE_MM = 10.0

# Tissues of the phantom and their clean bSSFP-like intensities (arbitrary units); blood is set per difficulty.
AIR, LUNG, WALL, FAT, LIVER, MYO, LV, RV, AORTA = range(9)
CLEAN = {AIR: 0.0, LUNG: 30.0, WALL: 150.0, FAT: 420.0, LIVER: 180.0, MYO: 120.0}
#: label of the ``_sa_gt`` files for each tissue that has one (papillary muscles are labelled LV separately)
LABEL_OF = {LV: 1, MYO: 2, RV: 3}


@dataclass(frozen=True)
class Site:
    """How one vendor's scanner is written into the sheet and how it acquires (vendor-typical protocol)."""

    letter: str
    vendor_name: str
    centre: int
    pixel_mm: float
    matrix: int
    labelled_in: tuple[str, ...]


#: the M&Ms vendors as the sheet spells them (centre numbers illustrative); labelled GE and Canon cases sit
#: in Validation/Testing only
SITES = {
    "Siemens": Site("A", "SIEMENS", 1, 1.9, 112, ("Training/Labeled", "Training/Labeled", "Validation", "Testing")),
    "Philips": Site("B", "Philips Medical Systems", 2, 1.6, 128, ("Training/Labeled", "Training/Labeled", "Testing")),
    "GE": Site("C", "GE MEDICAL SYSTEMS", 4, 2.0, 104, ("Validation", "Testing")),
    "Canon": Site("D", "Canon Medical Systems", 5, 1.75, 120, ("Validation", "Testing")),
}
#: invented names an anonymiser could have left in a header; they must never reach harmonia's output
FAKE_NAMES = ("DOE^JANE", "ROE^RICHARD", "MUSTERMANN^ERIKA", "GARCIA^LUCIA")


@dataclass(frozen=True)
class Heart:
    """One patient's anatomy in mm (image-centred, y pointing posterior) and its cardiac cycle."""

    pathology: str
    centre: tuple[float, float]
    tilt: tuple[float, float]
    lv_radius: float
    wall: float
    lv_es_ratio: float
    rv_radius: float
    rv_depth: float
    rv_angle: float
    shape: tuple[float, float, float, float]
    slices: int
    beyond_apex: int
    frames: int
    ed: int
    es: int


# --------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------


def draw_heart(rng: np.random.Generator, difficulty: float) -> Heart:
    """A random heart; pathology sets size, wall and contraction, ``difficulty`` thins the walls."""
    pathology = str(rng.choice(["NOR", "DCM", "HCM"], p=[0.4, 0.3, 0.3]))
    radius, wall, es_ratio = {
        "NOR": (rng.uniform(21, 26), rng.uniform(7, 9), rng.uniform(0.6, 0.7)),
        "DCM": (rng.uniform(28, 33), rng.uniform(5.5, 7.5), rng.uniform(0.8, 0.9)),
        "HCM": (rng.uniform(18, 23), rng.uniform(12, 16), rng.uniform(0.45, 0.6)),
    }[pathology]
    frames = int(rng.integers(10, 15))
    ed = int(rng.choice([0, 0, 0, 1, frames - 1]))
    return Heart(
        pathology=pathology,
        centre=(rng.normal(0, 6), rng.normal(0, 6)),
        tilt=(rng.normal(0, 1.5), rng.normal(0, 1.5)),
        lv_radius=radius,
        wall=wall * (1 - 0.45 * difficulty),
        lv_es_ratio=es_ratio,
        rv_radius=rng.uniform(1.0, 1.2) * (radius + wall),
        rv_depth=rng.uniform(16, 26),
        rv_angle=math.pi + rng.normal(0.35, 0.15),  # image left and anterior (up)
        shape=(rng.uniform(0, 0.06), rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.05), rng.uniform(0, 2 * math.pi)),
        slices=int(rng.integers(6, 11)),
        beyond_apex=int(rng.integers(0, 3)),
        frames=frames,
        ed=ed,
        es=(ed + round(frames * rng.uniform(0.33, 0.42))) % frames,
    )


def contraction(heart: Heart, frame: int) -> float:
    """0 at ED, 1 at ES, smooth in between: systole from ED to ES, diastole back to the next ED."""
    systole = (heart.es - heart.ed) % heart.frames
    t = (frame - heart.ed) % heart.frames
    if t <= systole:
        return 0.5 * (1 - math.cos(math.pi * t / systole))
    return 0.5 * (1 + math.cos(math.pi * (t - systole) / (heart.frames - systole)))


def patient_codes(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct codes shaped like the real ones (letter-digit-letter-digit-letter-digit, e.g. A0S9V9)."""
    alphabets = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789") * 3
    codes: set[str] = set()
    while len(codes) < count:
        codes.add("".join(chars[rng.integers(len(chars))] for chars in alphabets))
    return list(rng.permutation(sorted(codes)))


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates (mm, image-centred) of one in-plane matrix."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def of(cls, rows: int, cols: int, pixel_mm: float) -> Grid:
        y, x = np.mgrid[:rows, :cols].astype(np.float32)
        return cls((x - (cols - 1) / 2) * pixel_mm, (y - (rows - 1) / 2) * pixel_mm)


def chest(grid: Grid, level: float, texture: np.ndarray) -> np.ndarray:
    """The tissues around the heart at ``level`` (0 base .. 1 apex): wall, fat, lungs, liver, aorta."""
    x, y = grid.x, grid.y
    tissues = np.full(x.shape, WALL, np.int64)
    tissues[(y > -88 - 4 * texture) & (y < -78 - 4 * texture)] = FAT
    for side in (-1, 1):
        lung = ((x - side * 78) / 48) ** 2 + ((y + 5) / 75) ** 2 < 1 + 0.25 * texture
        tissues[lung] = LUNG
    if level > 0.45:
        tissues[((x + 55) / 60) ** 2 + ((y - 45 + 40 * level) / 45) ** 2 < 1 + 0.2 * texture] = LIVER
    tissues[(x - 22) ** 2 + (y - 62) ** 2 < 11**2] = AORTA
    return tissues


def heart_slice(heart: Heart, grid: Grid, level: float, kappa: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the heart at ``level`` (0 base .. 1 apex) and contraction ``kappa``: a tissue and a label map.

    Endocardium and epicardium share one smooth angular deformation; myocardial area is conserved
    over the cycle, so the wall thickens as the cavity shrinks. The RV cavity is a disc minus the
    LV epicardium, i.e. a crescent on the septal side, and does not reach the apex.
    """
    scale = math.sqrt(max(0.0, 1 - level**2.2))
    rv_scale = math.sqrt(max(0.0, 1 - (level / 0.85) ** 2))
    # the long axis is tilted: the centre drifts by ``tilt`` mm per tenth of the base-apex distance
    cx, cy = heart.centre[0] + level * 10 * heart.tilt[0], heart.centre[1] + level * 10 * heart.tilt[1]
    dx, dy = grid.x - cx, grid.y - cy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    a1, p1, a2, p2 = heart.shape
    wobble = 1 + a1 * np.cos(theta - p1) + a2 * np.cos(2 * theta - p2)

    endo = heart.lv_radius * (1 - kappa * (1 - heart.lv_es_ratio)) * scale
    outer_ed = (heart.lv_radius + heart.wall) * scale
    epi = math.sqrt(endo**2 + outer_ed**2 - (heart.lv_radius * scale) ** 2)
    cavity, muscle = rho < endo * wobble, rho < epi * wobble

    rv_radius = heart.rv_radius * (1 - 0.1 * kappa) * rv_scale
    depth = heart.rv_depth * (1 - 0.4 * kappa) * rv_scale
    offset = epi - rv_radius + depth
    rv_rho = np.hypot(dx - offset * math.cos(heart.rv_angle), dy - offset * math.sin(heart.rv_angle))
    # the septum is LV myocardium; a 3 mm free wall surrounds the rest of the RV cavity
    rv = (rv_rho < rv_radius) & ~muscle
    rv_wall = (rv_rho < rv_radius + 3) & ~muscle & ~rv if rv_radius > 0 else np.zeros_like(rv)

    tissues = np.full(dx.shape, -1, np.int64)
    labels = np.zeros(dx.shape, np.uint8)
    pericardium = rho < (epi + 4) * wobble
    tissues[pericardium | rv_wall] = WALL
    # epicardial fat in two opposite arcs (the grooves), not all round the heart
    tissues[pericardium & (np.cos(2 * (theta - heart.rv_angle) + p2) > 0.2)] = FAT
    tissues[muscle] = MYO
    tissues[cavity] = LV
    tissues[rv] = RV
    labels[muscle] = LABEL_OF[MYO]
    labels[cavity] = LABEL_OF[LV]
    labels[rv] = LABEL_OF[RV]
    # papillary muscles: myocardial signal inside the cavity, labelled as LV cavity (as M&Ms annotates them)
    for angle in (0.9, 2.3):
        px, py = 0.6 * endo * math.cos(angle), 0.6 * endo * math.sin(angle)
        tissues[cavity & (np.hypot(dx - px, dy - py) < 0.14 * endo)] = MYO
    return tissues, labels


def patient_volumes(heart: Heart, grid: Grid, texture: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and label stacks ``[Z, Y, X]`` of one frame, base (z = 0) to apex."""
    kappa = contraction(heart, frame)
    tissues, labels = [], []
    for k in range(heart.slices + heart.beyond_apex):
        level = k / heart.slices
        body = chest(grid, level, texture)
        organ, label = heart_slice(heart, grid, level, kappa)
        tissues.append(np.where(organ >= 0, organ, body))
        labels.append(label)
    return np.stack(tissues), np.stack(labels)


def intensities(difficulty: float) -> list[float]:
    """Clean intensity per tissue; blood-to-myocardium contrast falls with ``difficulty``."""
    blood = CLEAN[MYO] + 280.0 * (1 - 0.65 * difficulty)
    values = {**CLEAN, LV: blood, RV: 0.96 * blood, AORTA: 1.04 * blood}
    return [values[t] for t in range(len(values))]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_patient(folder: Path, code: str, heart: Heart, site: Site, vendor: str, settings: TwinSettings) -> None:
    """One patient's 4-D cine and (when ``folder`` is labelled) its ED/ES labels, in the release's file names."""
    rng = np.random.default_rng(derive_seed("mnms-twin-geometry", settings.seed, code))
    pixel = site.pixel_mm * rng.uniform(0.96, 1.04)
    rows = site.matrix - 2 * int(rng.integers(0, 7))
    grid = Grid.of(rows, site.matrix, pixel)
    texture = smooth_field((rows, site.matrix), 0.3, rng)
    signature = twin_signature(vendor, "MRI", settings)
    values = intensities(settings.difficulty)

    cine = np.zeros((site.matrix, rows, heart.slices + heart.beyond_apex, heart.frames), np.int16)
    gt = np.zeros(cine.shape, np.uint8)
    for frame in range(heart.frames):
        tissues, labels = patient_volumes(heart, grid, texture, frame)
        seed = derive_seed("mnms-twin-acquire", settings.seed, code, frame)
        image = acquire(tissues, values, signature, seed=seed, spacing=(SLICE_MM, pixel, pixel))
        cine[..., frame] = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).transpose(2, 1, 0)
        if frame in (heart.ed, heart.es):
            gt[..., frame] = labels.transpose(2, 1, 0)

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([pixel, pixel, SLICE_MM, 1.0])
    fake = FAKE_NAMES[int(rng.integers(len(FAKE_NAMES)))]
    save(cine, affine, folder / f"{code}_sa.nii.gz", zooms=(pixel, pixel, SLICE_MM, 0.04), descrip=f"{fake} {code}")
    if "Unlabeled" not in folder.parts:
        save(gt, affine, folder / f"{code}_sa_gt.nii.gz", zooms=(pixel, pixel, SLICE_MM, 0.04), descrip="")


def save(array: np.ndarray, affine: np.ndarray, path: Path, zooms: tuple[float, ...], descrip: str) -> None:
    """Write one NIfTI-1 file with voxel sizes in mm (and the frame interval in s) and a header description."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = descrip.encode()[:79]
    nib.save(image, path)


def sheet_row(code: str, heart: Heart, site: Site, rng: np.random.Generator, labelled: bool) -> dict[str, object]:
    """The information-sheet row of one patient; unlabelled cases carry ED = ES = 0 as in the release."""
    sex = str(rng.choice(["M", "F"]))
    height = round(rng.normal(176 if sex == "M" else 163, 7))
    return {
        "External code": code,
        "VendorName": site.vendor_name,
        "Vendor": site.letter,
        "Centre": site.centre,
        "ED": heart.ed if labelled else 0,
        "ES": heart.es if labelled else 0,
        "Age": int(rng.integers(18, 80)),
        "Pathology": heart.pathology,
        "Sex": sex,
        # as in the release, height and weight are sometimes missing
        "Height": height if rng.random() > 0.15 else None,
        "Weight": round(rng.normal(78 if sex == "M" else 65, 10)) if rng.random() > 0.15 else None,
    }


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` labelled patients per vendor, one unlabelled GE case.

    Deterministic in ``settings``; the release's folder split is mimicked (GE and Canon labelled
    cases only in Validation/Testing, as in M&Ms).
    """
    rng = np.random.default_rng(derive_seed("mnms-twin", settings.seed))
    codes = iter(patient_codes(rng, len(SITES) * settings.patients + 1))
    rows = []
    for vendor, site in SITES.items():
        folders = [site.labelled_in[i % len(site.labelled_in)] for i in range(settings.patients)]
        if vendor == "GE":
            folders.append("Training/Unlabeled")
        for split in folders:
            code = next(codes)
            heart_rng = np.random.default_rng(derive_seed("mnms-twin-heart", settings.seed, code))
            heart = draw_heart(heart_rng, settings.difficulty)
            write_patient(out / split / code, code, heart, site, vendor, settings)
            rows.append(sheet_row(code, heart, site, rng, labelled=split != "Training/Unlabeled"))
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("External code").reset_index(drop=True)
    table.to_csv(out / INFO_CSV)
