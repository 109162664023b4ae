"""Paired CT reconstructions (Lee et al.): the same abdominal exams reconstructed several ways; liver segmentation.

Seed 003 reconstructed each dual-energy portal-phase CT six ways: filtered back projection (FBP),
iterative reconstruction (IR), virtual mono-energetic images at 40, 60 and 80 keV (M40, M60, M80)
and optimum contrast (OC; the paper's "OPT"), and took the liver mask of the 80 keV images as the
ground truth of all six. Its data are not public; this loader reads such a set arranged as::

    <root>/<exam>/<recon>/*.dcm              one DICOM series per reconstruction, or
    <root>/<exam>/<recon>.nii.gz             one volume file (.nii, .nii.gz, .mha, .mhd, .nrrd)
    <root>/<exam>/liver_mask.nii.gz          the liver mask on the reference reconstruction's grid
                                             (.nii, .mha, .mhd, .nrrd, or a folder liver_mask/ holding a DICOM SEG)

``<recon>`` is matched case-insensitively through an alias table (``M80``, ``mono80``,
``80keV`` -> M80; ``SAFIRE``, ``ADMIRE``, ``iDose`` -> IR; ``OPT`` -> OC; see :data:`RECON_HELP`).
Each reconstruction is a scanner domain; an exam is one patient in every domain, so the exam
folder name leaves this module only as a pseudonym, the same in every domain. Items are the
axial slices that contain liver, with the mask as the label map.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.api import Cohort, Items, PatientRecord, Task, TwinSettings
from harmonia.ct import SliceParams, hu_to_grid
from harmonia.errors import DataError
from harmonia.geometry import to_grid
from harmonia.io import MedicalImage, find_series, read_image, read_seg, seg_segment_labels
from harmonia_plugins.cohorts.ct_recon_twin import write_twin

#: Lee et al.'s reconstructions, in the order of their tables
RECONS = ("FBP", "IR", "M40", "M60", "M80", "OC")
REFERENCE = "M80"
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
MASK_NAMES = ("liver_mask", "livermask", "liver_seg", "liver")
#: names (lower case, without spaces, '-', '_' and '.') of the non-mono-energetic reconstructions
ALIASES = {
    "fbp": "FBP",
    "filteredbackprojection": "FBP",
    "oc": "OC",
    "opt": "OC",
    "optimum": "OC",
    "optimumcontrast": "OC",
    "optimalcontrast": "OC",
}
#: iterative reconstructions by generic and vendor name, optionally followed by a strength (SAFIRE 3, ADMIRE 2)
ITERATIVE = re.compile(r"^(ir|iterative|iterativereconstruction|hybridir|safire|admire|idose4?|asirv?|aidr3d|aidr)\d*$")
#: virtual mono-energetic images: M80, mono80, mono80kev, monoe80, vmi80, 80kev
MONO = re.compile(r"^(?:(?:m|mono|monoe|vmi|vmc|monoenergetic|virtualmonoenergetic)(\d{2,3})(?:kev)?|(\d{2,3})kev)$")
RECON_HELP = (
    "FBP (fbp, filtered_back_projection), IR (ir, iterative, SAFIRE, ADMIRE, iDose, ASiR, AIDR, optionally with "
    "a strength: SAFIRE3), M<keV> (M40, mono40, mono_40keV, VMI40, 40keV; any keV from 40 to 190), "
    "OC (oc, opt, optimum_contrast); names are matched ignoring case, spaces, '-', '_' and '.'"
)
OBTAIN = (
    "Lee et al.'s exams are not public (the authors share them on request); arrange paired reconstructions as "
    "<root>/<exam>/<recon>/ (DICOM) or <root>/<exam>/<recon>.nii.gz plus <root>/<exam>/liver_mask.nii.gz "
    "(docs/data/ct_recon.md) and point cohort.root (or $HARMONIA_DATA/ct_recon) at <root>"
)


def canonical_recon(name: str) -> str | None:
    """The canonical reconstruction a folder or file stem names (``mono80keV`` -> ``M80``), None if none."""
    key = re.sub(r"[\s._-]+", "", name.lower())
    if key in ALIASES:
        return ALIASES[key]
    if ITERATIVE.match(key):
        return "IR"
    found = MONO.match(key)
    if found and 40 <= int(found.group(1) or found.group(2)) <= 190:
        return f"M{int(found.group(1) or found.group(2))}"
    return None


def _recon_name(value: str) -> str:
    """The canonical name of a reconstruction given as a parameter; ValueError listing the accepted names."""
    recon = canonical_recon(value)
    if recon is None:
        raise ValueError(f"unknown reconstruction {value!r}; accepted: {RECON_HELP}")
    return recon


class ReconParams(SliceParams):
    """Which reconstructions are domains, which one the mask lies on, and the geometry of every slice."""

    domains: list[str] = Field(
        default_factory=lambda: list(RECONS),
        description="reconstructions (scanner domains) to use, in study order: FBP, IR, M40, M60, M80, OC or any "
        "alias (mono40, SAFIRE, OPT...)",
    )
    reference: str = Field(
        REFERENCE,
        description="the reconstruction whose grid the liver mask lies on (Lee et al.: M80, their ground truth)",
    )
    liver_slices_only: bool = Field(
        True, description="keep only slices with liver in the mask (False: every slice of the exam)"
    )

    @field_validator("domains")
    @classmethod
    def _known_recons(cls, value: list[str]) -> list[str]:
        recons = [_recon_name(name) for name in value]
        if len(set(recons)) != len(recons):
            raise ValueError(f"a reconstruction is listed twice: {recons}")
        if not recons:
            raise ValueError(f"give at least one reconstruction of {', '.join(RECONS)}")
        return recons

    @field_validator("reference")
    @classmethod
    def _known_reference(cls, value: str) -> str:
        return _recon_name(value)


@dataclass(frozen=True)
class Exam:
    """One exam folder: its raw name (never leaves this module), reconstructions and liver mask."""

    raw_id: str
    folder: Path
    recons: dict[str, Path]
    mask: Path


# --------------------------------------------------------------------------------------------
# The folder layout
# --------------------------------------------------------------------------------------------


def entry_stem(path: Path) -> str | None:
    """The name of an exam-folder entry without its volume suffix; None for files that are not volumes."""
    if path.is_dir():
        return path.name
    lower = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def read_exam(folder: Path) -> Exam:
    """The reconstructions and mask of one exam folder; DataError for unknown or doubled names, or no mask."""
    recons: dict[str, Path] = {}
    mask: Path | None = None
    for entry in sorted(folder.iterdir()):
        stem = entry_stem(entry)
        if stem is None or entry.name.startswith("."):
            continue
        if re.sub(r"[\s.-]+", "_", stem.lower()) in MASK_NAMES:
            if mask is not None:
                raise DataError(f"{entry}: a second liver mask next to {mask.name}; keep one")
            mask = entry
            continue
        recon = canonical_recon(stem)
        if recon is None:
            raise DataError(f"{entry}: unknown reconstruction name {entry.name!r}; accepted: {RECON_HELP}")
        if recon in recons:
            raise DataError(f"{entry}: reconstruction {recon} is also given by {recons[recon].name}; keep one")
        recons[recon] = entry
    if mask is None:
        raise DataError(
            f"{folder}: no liver mask (liver_mask.nii.gz, .nii, .mha, .nrrd, or a folder liver_mask/ holding a "
            f"DICOM SEG) in this exam folder"
        )
    return Exam(raw_id=folder.name, folder=folder, recons=recons, mask=mask)


def exam_folders(root: Path) -> list[Path]:
    """Every exam folder under ``root``, sorted by name (hidden folders are skipped)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Volumes on one grid
# --------------------------------------------------------------------------------------------


def _shape(shape: tuple[int, ...]) -> str:
    """A shape as ``z x y x x`` text for messages."""
    return " x ".join(str(n) for n in shape)


def on_grid(image: MedicalImage, reference: MedicalImage, what: str) -> np.ndarray:
    """``image``'s voxels in ``reference``'s index order; DataError unless both lie on one grid.

    Reversed axes (a converter that stores rows or slices the other way round) are undone from the
    world geometry; any other difference in size, spacing, orientation or position is an error.
    """
    if image.shape != reference.shape:
        raise DataError(
            f"{image.path}: {what} is {_shape(image.shape)} voxels (z x y x x) but the reference reconstruction "
            f"{reference.path} is {_shape(reference.shape)}; an exam's reconstructions and liver mask share one grid"
        )
    if image.axes is None or reference.axes is None:
        return image.array
    # index (x, y, z) of ``image`` = turn @ index of ``reference`` + shift
    turn = np.linalg.solve(image.axes, reference.axes)
    shift = np.linalg.solve(image.axes, reference.origin - image.origin)
    signs = np.sign(np.round(np.diag(turn)))
    last = np.array(image.shape[::-1]) - 1
    if not (
        np.all(signs != 0)
        and np.allclose(turn, np.diag(signs), atol=0.01)
        and np.allclose(shift, np.where(signs < 0, last, 0), atol=0.25)
    ):
        raise DataError(
            f"{image.path}: {what} does not lie on the grid of the reference reconstruction {reference.path} "
            f"(different spacing, orientation or position)"
        )
    flipped = tuple(2 - axis for axis in range(3) if signs[axis] < 0)
    return np.flip(image.array, axis=flipped) if flipped else image.array


def read_mask(path: Path, reference: MedicalImage) -> np.ndarray:
    """The boolean liver mask on ``reference``'s grid, from a volume file or a folder holding a DICOM SEG."""
    if path.is_dir():
        return read_seg_mask(path, reference)
    return on_grid(read_image(path), reference, "the liver mask") > 0.5


def read_seg_mask(folder: Path, reference: MedicalImage) -> np.ndarray:
    """The liver segment(s) of the one SEG in ``folder``, which must segment the reference reconstruction."""
    segs = [s for s in find_series(folder) if s.modality == "SEG"]
    if len(segs) != 1:
        raise DataError(f"{folder}: expected one DICOM SEG (the liver mask) in this folder, found {len(segs)}")
    seg, path = segs[0], segs[0].files[0]
    if seg.referenced_series_uids and reference.series_uid not in seg.referenced_series_uids:
        raise DataError(
            f"{path}: the SEG segments series {seg.referenced_series_uids[0]}, not the reference reconstruction "
            f"{reference.path} (series {reference.series_uid})"
        )
    names = seg_segment_labels(path)
    livers = [n for n, label in names.items() if "liver" in label.lower()] if len(names) > 1 else list(names)
    if not livers:
        raise DataError(f"{path}: {len(names)} segments and none labelled liver: {sorted(names.values())}")
    return np.isin(read_seg(path, reference), livers)


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconstruction(PatientRecord):
    """One reconstruction (the ``domain``) of an exam (``raw_id`` is the exam folder's name)."""

    exam: Exam


@dataclass(frozen=True)
class Reference:
    """What every reconstruction of an exam is read against: the reference volume, the kept slices and their labels."""

    folder: Path
    image: MedicalImage
    keep: np.ndarray
    labels: np.ndarray


class ReconCohort(Cohort):
    """Paired CT reconstructions (FBP, IR, 40/60/80 keV, optimum contrast) of the same exams: liver segmentation."""

    name = "ct_recon"
    modality = "CT"
    paired = True
    obtain = OBTAIN
    Params = ReconParams
    params: ReconParams

    task = Task(kind="segmentation", class_names=("background", "liver"), spatial_dims=2)

    #: the reference of the exam read last, which its other reconstructions are read against next
    _reference: Reference | None = None

    def domains(self) -> list[str]:
        return list(self.params.domains)

    @property
    def item_shape(self) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def records(self) -> Iterator[Reconstruction]:
        """Every configured reconstruction of every exam folder, exams in folder-name order: an exam is the
        same patient in every domain."""
        for folder in exam_folders(self.root):
            exam = read_exam(folder)
            if self.params.reference not in exam.recons:
                raise DataError(
                    f"{folder}: no {self.params.reference} reconstruction, the grid its liver mask lies on "
                    f"(found {', '.join(sorted(exam.recons)) or 'none'})"
                )
            for recon in self.params.domains:
                if recon in exam.recons:
                    yield Reconstruction(raw_id=exam.raw_id, domain=recon, exam=exam)

    def read_items(self, recon: Reconstruction) -> Items:
        """The kept slices of one reconstruction on the common grid, in HU, and the liver label maps."""
        p = self.params
        reference = self.reference(recon.exam)
        image = reference.image if recon.domain == p.reference else read_image(recon.exam.recons[recon.domain])
        volume = on_grid(image, reference.image, f"reconstruction {recon.domain}")[reference.keep]
        spacing_xy = (reference.image.spacing[2], reference.image.spacing[1])
        return hu_to_grid(volume, spacing_xy, p.image_size, p.spacing_mm), reference.labels

    def reference(self, exam: Exam) -> Reference:
        """The exam's reference reconstruction and liver labels on the grid, read once for all its reconstructions."""
        if self._reference is None or self._reference.folder != exam.folder:
            p = self.params
            image = read_image(exam.recons[p.reference])
            mask = read_mask(exam.mask, image)
            spacing_xy = (image.spacing[2], image.spacing[1])
            y = to_grid(mask.astype(np.uint8), spacing_xy, p.image_size, p.spacing_mm, 0).astype(np.int64)
            keep = y.reshape(len(y), -1).any(axis=1) if p.liver_slices_only else np.ones(len(y), bool)
            if not keep.any():
                fov = p.image_size * p.spacing_mm
                raise DataError(f"{exam.mask}: the liver mask is empty (within the {fov:g} mm field of view)")
            self._reference = Reference(exam.folder, image, keep, y[keep])
        return self._reference

    @classmethod
    def check_root(cls, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected exam folders of paired reconstructions here; {OBTAIN}")
        folders = exam_folders(root)
        if not folders:
            raise DataError(f"{root}: no exam folders (<exam>/<recon>/ and <exam>/liver_mask.nii.gz) found; {OBTAIN}")
        exam = read_exam(folders[0])
        if not exam.recons:
            raise DataError(f"{folders[0]}: no reconstructions ({RECON_HELP}) in this exam folder")

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        write_twin(Path(out), settings)


@hookimpl
def harmonia_cohorts():
    return [ReconCohort]
