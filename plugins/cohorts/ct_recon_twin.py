"""Synthetic twin of a paired-reconstruction liver CT set (Lee et al.): SYNTHETIC phantoms, not patients.

Seed 003 reconstructed each portal-phase dual-energy abdominal CT six ways (FBP, iterative
reconstruction, virtual mono-energetic 40, 60 and 80 keV, optimum contrast) and segmented the
liver on the 80 keV images. Its data are not public, so the twin writes the layout harmonia
documents for such a set (see :mod:`harmonia_plugins.cohorts.ct_recon`)::

    <out>/<exam>/FBP/IR/M40/M60/M80/OC/*.dcm      one DICOM series per reconstruction (even exams)
    <out>/<exam>/fbp.nii.gz, safire3.nii.gz, mono40keV.nii.gz, ...     one NIfTI per reconstruction (odd exams)
    <out>/<exam>/liver_mask.nii.gz                 on the 80 keV grid (the first exam: a DICOM SEG, liver_mask/)

Every reconstruction of an exam images the same phantom abdomen (the shared phantom
:func:`~harmonia.synth.abdomen.abdomen`, sized like Lee et al.'s children and
adolescents) on one grid, and differs only as Lee et al. describe: iodine contrast rises steeply
towards 40 keV, with much more noise; 80 keV is the reference; 60 keV lies between; FBP is
noisier than IR, whose noise is coarser; optimum contrast blends low- and high-energy contrast.
Each reconstruction is a per-tissue HU table plus a noise level, noise texture and blur, applied
with :func:`harmonia.synth.acquire`; ``strength`` scales every reconstruction's departure from 80 keV.

The loader is not imported: folder and file names are spelled out here independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from harmonia.api import TwinSettings
from harmonia.io import write_dicom_series, write_seg
from harmonia.seeding import derive_seed
from harmonia.synth import Noise, Psf, ScannerSignature, acquire
from harmonia.synth.abdomen import LIVER, MUSCLE, TISSUES, Grid, abdomen, draw_anatomy

REFERENCE = "M80"
#: the order of Lee et al.'s tables
RECONS = ("FBP", "IR", "M40", "M60", "M80", "OC")
#: how the NIfTI exams name each reconstruction's file (any spelling the loader's alias table must accept)
NIFTI_NAMES = {
    "FBP": "fbp",
    "IR": "safire3",
    "M40": "mono40keV",
    "M60": "mono60keV",
    "M80": "mono80keV",
    "OC": "optimum_contrast",
}
#: clean portal-venous HU per tissue (order of TISSUES): iodine-enhanced tissues brighten towards low keV,
#: fat darkens; FBP and IR are the mixed (120 kVp-like) image; OC lies between M60 and the mixed image
HU_TABLE = {
    "M40": (-1000, -140, 85, 75, 15, 235, 255, 390, 340, 470, 420, 1250, 150, 25),
    "M60": (-1000, -112, 62, 52, 10, 140, 152, 225, 198, 265, 240, 880, 95, 18),
    "M80": (-1000, -95, 52, 42, 6, 105, 112, 162, 142, 175, 158, 640, 72, 14),
    "FBP": (-1000, -100, 56, 46, 8, 118, 126, 185, 162, 205, 185, 740, 80, 16),
    "IR": (-1000, -100, 56, 46, 8, 118, 126, 185, 162, 205, 185, 740, 80, 16),
    "OC": (-1000, -106, 59, 49, 9, 129, 139, 205, 180, 235, 212, 810, 88, 17),
}


@dataclass(frozen=True)
class Reconstruction:
    """How one reconstruction renders the phantom: noise SD in HU, noise correlation and blur in pixels."""

    noise_hu: float
    correlation: float
    blur: float


RENDERING = {
    "FBP": Reconstruction(noise_hu=22.0, correlation=0.6, blur=0.6),
    "IR": Reconstruction(noise_hu=12.0, correlation=1.3, blur=0.8),
    "M40": Reconstruction(noise_hu=42.0, correlation=0.9, blur=0.8),
    "M60": Reconstruction(noise_hu=17.0, correlation=0.9, blur=0.8),
    "M80": Reconstruction(noise_hu=11.0, correlation=0.9, blur=0.8),
    "OC": Reconstruction(noise_hu=15.0, correlation=0.8, blur=0.7),
}
#: at difficulty 1 the liver's HU moves this fraction of the way to the muscle's in every reconstruction
LIVER_FADE = 0.6
SLICE_MM, MATRIX, PIXEL_MM = 5.0, 96, 3.6
#: the scanned range in mm (relative to the renal hila, before body scaling): kidneys to the liver dome
SCAN_RANGE_MM = (-40.0, 180.0)
#: invented identifiers an export could carry; they must never reach harmonia's output
FAKE_NAMES = ("KIM^MINJUN", "LEE^SEOYEON", "PARK^JIHO", "CHOI^HAEUN", "JUNG^DOYUN", "KANG^SOYUL")


def hu_values(recon: str, strength: float, difficulty: float) -> list[float]:
    """Clean HU per tissue index: the reference table moved ``strength`` of the way to ``recon``'s, liver faded."""
    reference, own = np.array(HU_TABLE[REFERENCE], float), np.array(HU_TABLE[recon], float)
    table = reference + strength * (own - reference)
    liver, muscle = TISSUES.index(LIVER), TISSUES.index(MUSCLE)
    table[liver] -= LIVER_FADE * difficulty * (table[liver] - table[muscle])
    values = np.zeros(len(TISSUES))
    values[list(TISSUES)] = table
    return values.tolist()


def signature(recon: str, strength: float, values: list[float]) -> ScannerSignature:
    """The reconstruction's noise and blur, geometric interpolation from the reference's by ``strength``."""
    reference, own = RENDERING[REFERENCE], RENDERING[recon]

    def between(a: float, b: float) -> float:
        """``a`` at strength 0, ``b`` at strength 1, geometrically in between."""
        return float(a * (b / a) ** strength)

    span = max(values) - min(values)
    return ScannerSignature(
        psf=Psf(sigma=between(reference.blur, own.blur)),
        noise=Noise(
            level=between(reference.noise_hu, own.noise_hu) / span,
            correlation=between(reference.correlation, own.correlation),
        ),
    )


def write_nifti(path: Path, volume: np.ndarray, grid: Grid, dtype: type, flip_rows: bool = False) -> None:
    """One NIfTI volume on ``grid`` (or stored with its rows reversed, geometry adjusted, as some converters do)."""
    array = volume[:, ::-1] if flip_rows else volume
    image = sitk.GetImageFromArray(np.ascontiguousarray(array).astype(dtype))
    dz, dy, dx = grid.spacing
    image.SetSpacing((dx, dy, dz))
    x0, y0, z0 = grid.origin
    if flip_rows:
        image.SetOrigin((x0, y0 + (volume.shape[1] - 1) * dy, z0))
        image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    else:
        image.SetOrigin((x0, y0, z0))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_exam(folder: Path, number: int, settings: TwinSettings) -> None:
    """One exam: the phantom rendered by every reconstruction, and the liver mask on the reference grid."""
    exam_id = folder.name
    rng = np.random.default_rng(derive_seed("ct_recon-twin", settings.seed, exam_id))
    # Lee et al.'s patients were 7 months to 49 years old (mean 10): bodies from toddler to adult size
    anatomy = draw_anatomy(rng, scale=float(rng.uniform(0.55, 1.0)))
    lo, hi = (z * anatomy.scale for z in SCAN_RANGE_MM)
    pixel = PIXEL_MM * anatomy.scale
    grid = Grid.of(int((hi - lo) / SLICE_MM) + 1, MATRIX, pixel, SLICE_MM, z0=lo)
    tissues = abdomen(anatomy, grid, rng)
    liver = tissues == LIVER
    as_dicom = number % 2 == 0
    person = {
        "patient_name": FAKE_NAMES[number % len(FAKE_NAMES)],
        "patient_id": f"{int(rng.integers(10**7, 10**8))}",
        "birth_date": f"{rng.integers(2004, 2021)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
    }
    study_uid = None
    for recon in RECONS:
        values = hu_values(recon, settings.strength, settings.difficulty)
        hu = acquire(
            tissues,
            values,
            signature(recon, settings.strength, values),
            seed=derive_seed("ct_recon-twin-acquire", settings.seed, exam_id, recon),
            spacing=grid.spacing,
        )
        if not as_dicom:
            write_nifti(folder / f"{NIFTI_NAMES[recon]}.nii.gz", np.rint(hu), grid, np.int16)
            continue
        series = write_dicom_series(
            folder / recon,
            hu,
            grid.spacing,
            modality="CT",
            manufacturer="SIEMENS",
            model_name="SOMATOM Force",
            series_description=f"Abdomen portal {recon}",
            study_uid=study_uid,
            origin=grid.origin,
            extra={"ConvolutionKernel": "Br40"},
            **person,
        )
        study_uid = series.study_uid
        if recon == REFERENCE and number == 0:
            (folder / "liver_mask").mkdir()
            seg = folder / "liver_mask" / "1-1.dcm"
            write_seg(seg, series, {"Liver": liver}, person["patient_name"], person["patient_id"])
    if not (as_dicom and number == 0):
        # odd exams store the mask with its rows reversed, as some converters write NIfTI
        write_nifti(folder / "liver_mask.nii.gz", liver, grid, np.uint8, flip_rows=not as_dicom)


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write ``settings.patients`` exams, each in all six reconstructions; deterministic in ``settings``."""
    rng = np.random.default_rng(derive_seed("ct_recon-twin", settings.seed))
    accessions = rng.choice(10**6, size=settings.patients, replace=False)
    for number, accession in enumerate(accessions):
        folder = Path(out) / f"DE21{int(accession):06d}"
        folder.mkdir(parents=True)
        write_exam(folder, number, settings)
