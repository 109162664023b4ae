"""Reading DICOM: headers of a folder grouped into series, and pixel data of a file or a series in native units.

Pixel values go through the modality LUT (``RescaleSlope``/``RescaleIntercept``, so CT comes out
in HU). Slices of a series are ordered along the slice normal from their positions, not by file
name or instance number. Every failure to read a file is an :class:`UnreadableFile` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from harmonia.errors import DataError, UnreadableFile, one_line
from harmonia.io.image import MedicalImage
from harmonia.io.vendors import canonical_vendor

#: file suffixes that promise DICOM; a file with another suffix is DICOM only if it has the "DICM" preamble
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
#: slices whose spacing differs from the median by more than this fraction mean a gap or a mixed series
SPACING_TOLERANCE = 0.1


def looks_like_dicom(path: Path) -> bool:
    """True for a ``.dcm``-style name or a file carrying the DICOM preamble; other files are not DICOM."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dataset(path: Path, header_only: bool = False) -> Dataset:
    """The DICOM dataset of ``path`` (without pixel data when ``header_only``); UnreadableFile if it is not one."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        if path.stat().st_size < 132:
            raise UnreadableFile(
                path, f"only {path.stat().st_size} bytes: not DICOM, or truncated before its header"
            ) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableFile(path, f"corrupt or truncated DICOM ({one_line(exc)})") from exc
    # files written without the 128-byte preamble (older exports) are still DICOM when they parse as such
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableFile(path, f"not a readable DICOM file ({one_line(exc)})") from exc
    if "SOPClassUID" not in dataset and "Modality" not in dataset:
        raise UnreadableFile(path, "not a DICOM file (no DICOM preamble and no SOP class or modality)")
    return dataset


def _decodable(uid: UID) -> bool:
    """Whether an installed pydicom decoder plugin handles the transfer syntax ``uid``."""
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def transfer_syntax(dataset: Dataset) -> UID | None:
    meta = getattr(dataset, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """The frame(s) of ``dataset`` in native units, greyscale with brighter meaning more signal."""
    if "PixelData" not in dataset:
        if "Modality" not in dataset:
            raise UnreadableFile(path, "DICOM file ends before its pixel data (truncated?) and names no modality")
        raise UnreadableFile(path, f"DICOM file has no pixel data ({dataset.Modality}; expected an image)")
    try:
        stored = dataset.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        uid = transfer_syntax(dataset)
        name = f"{uid.name} ({uid})" if uid is not None else "unknown"
        if uid is not None and _decodable(uid):
            raise UnreadableFile(path, f"corrupt {name} compressed pixel data ({one_line(exc)})") from exc
        raise UnreadableFile(
            path, f"pixel data in transfer syntax {name}, which no installed decoder handles ({one_line(exc)})"
        ) from exc
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as exc:
        raise UnreadableFile(path, f"corrupt or truncated pixel data ({one_line(exc)})") from exc
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise UnreadableFile(path, f"colour image ({dataset.get('PhotometricInterpretation')}); expected greyscale")
    values = apply_modality_lut(stored, dataset).astype(np.float32)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        # MONOCHROME1 shows high values dark; flip so that, as everywhere else, high means bright
        values = float(2 ** int(dataset.get("BitsStored", 16)) - 1) - values
    return values


# --------------------------------------------------------------------------------------------
# Series in a folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder, from its headers only (no patient identifiers)."""

    uid: str
    modality: str
    manufacturer: str
    description: str
    folder: Path
    files: tuple[Path, ...]
    frame_of_reference_uid: str | None
    referenced_series_uids: tuple[str, ...]

    @property
    def vendor(self) -> str | None:
        return canonical_vendor(self.manufacturer) or None


def referenced_series(dataset: Dataset) -> tuple[str, ...]:
    """The image series an RTSTRUCT or SEG refers to (empty for an image)."""
    uids = [
        item.SeriesInstanceUID for item in dataset.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item
    ]
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            uids += [
                s.SeriesInstanceUID for s in study.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in s
            ]
    return tuple(dict.fromkeys(uids))


def frame_of_reference(dataset: Dataset) -> str | None:
    if "FrameOfReferenceUID" in dataset:
        return str(dataset.FrameOfReferenceUID)
    for item in dataset.get("ReferencedFrameOfReferenceSequence", []):
        if "FrameOfReferenceUID" in item:
            return str(item.FrameOfReferenceUID)
    return None


def find_series(folder: Path, on_unreadable: Callable[[UnreadableFile], None] | None = None) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (recursively), from headers; sorted by modality, then description.

    A file that should be DICOM but cannot be read raises :class:`UnreadableFile`, or is handed
    to ``on_unreadable`` and left out when that is given. Files that are not DICOM (the reader
    XML of LIDC, spreadsheets, notes) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected DICOM series here")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and looks_like_dicom(p)):
        try:
            dataset = read_dataset(path, header_only=True)
            if "SeriesInstanceUID" not in dataset:
                raise UnreadableFile(path, "DICOM file without a SeriesInstanceUID (truncated header?)")
        except UnreadableFile as error:
            if on_unreadable is None:
                raise
            on_unreadable(error)
            continue
        groups.setdefault(str(dataset.SeriesInstanceUID), []).append((path, dataset))
    found = []
    for uid, members in groups.items():
        first = members[0][1]
        found.append(
            SeriesInfo(
                uid=uid,
                modality=str(first.get("Modality", "")),
                manufacturer=str(first.get("Manufacturer", "") or ""),
                description=str(first.get("SeriesDescription", "") or ""),
                folder=members[0][0].parent,
                files=tuple(p for p, _ in members),
                frame_of_reference_uid=frame_of_reference(first),
                referenced_series_uids=referenced_series(first),
            )
        )
    return sorted(found, key=lambda s: (s.modality, s.description, s.uid))


# --------------------------------------------------------------------------------------------
# Pixel data
# --------------------------------------------------------------------------------------------


def _scanner_facts(dataset: Dataset) -> dict[str, object]:
    """The non-identifying header facts a MedicalImage carries."""
    return {
        "modality": str(dataset.get("Modality", "")) or None,
        "manufacturer": str(dataset.get("Manufacturer", "") or "") or None,
        "description": str(dataset.get("SeriesDescription", "") or ""),
        "series_uid": str(dataset.get("SeriesInstanceUID", "")) or None,
        "frame_of_reference_uid": frame_of_reference(dataset),
    }


def _orientation(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Row direction, column direction and slice normal from ImageOrientationPatient, if present."""
    if "ImageOrientationPatient" not in dataset:
        return None
    cosines = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row, column = cosines[:3], cosines[3:]
    return row, column, np.cross(row, column)


def _instance_number(dataset: Dataset) -> int | None:
    value = dataset.get("InstanceNumber")
    return int(value) if value not in (None, "") else None


def _nominal_slice_spacing(dataset: Dataset) -> float:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm: the spacing a header states, not one measured."""
    return float(dataset.get("SpacingBetweenSlices", 0) or dataset.get("SliceThickness", 0) or 1.0)


def _pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm: PixelSpacing, else ImagerPixelSpacing (projection X-ray), else 1."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in dataset and dataset.get(keyword):
            spacing = dataset.get(keyword)
            return float(spacing[0]), float(spacing[1])
    return 1.0, 1.0


def read_dicom_file(path: Path) -> MedicalImage:
    """One DICOM file: a planar ``(y, x)`` image, or a ``(frames, y, x)`` volume for a multi-frame file."""
    path = Path(path)
    dataset = read_dataset(path)
    values = pixels(dataset, path)
    dr, dc = _pixel_spacing(dataset)
    orientation = _orientation(dataset)
    origin = axes = None
    if values.ndim == 3:
        dz = _nominal_slice_spacing(dataset)
        spacing: tuple[float, ...] = (dz, dr, dc)
    else:
        dz = float(dataset.get("SliceThickness", 0) or 1.0)
        spacing = (dr, dc)
    if orientation is not None and "ImagePositionPatient" in dataset:
        row, column, normal = orientation
        origin = np.array([float(v) for v in dataset.ImagePositionPatient])
        axes = np.stack([row * dc, column * dr, normal * dz], axis=1)
    uid = str(dataset.get("SOPInstanceUID", ""))
    return MedicalImage(
        array=values,
        spacing=spacing,
        path=path,
        origin=origin,
        axes=axes,
        sop_instance_uids=(uid,) if uid else (),
        **_scanner_facts(dataset),
    )


def read_dicom_series(files: Sequence[Path] | Iterable[Path]) -> MedicalImage:
    """The volume ``(z, y, x)`` of one series' single-frame files, ordered along the slice normal."""
    files = [Path(f) for f in files]
    if not files:
        raise DataError("no DICOM files given for a series")
    datasets = [read_dataset(f) for f in files]
    series = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(series) > 1:
        raise DataError(f"{files[0].parent}: files of {len(series)} series mixed; read one series at a time")
    slices = [pixels(d, f) for d, f in zip(datasets, files)]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1 or slices[0].ndim != 2:
        raise DataError(f"{files[0].parent}: slices of different sizes {sorted(shapes)} in one series")
    first = datasets[0]
    dr, dc = _pixel_spacing(first)
    orientation = _orientation(first)
    positioned = orientation is not None and all("ImagePositionPatient" in d for d in datasets)
    if positioned:
        row, column, normal = orientation
        positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
        order = np.argsort(positions @ normal, kind="stable")
        dz = _slice_step(positions[order] @ normal, files[0].parent, first)
        origin = positions[order[0]]
        axes = np.stack([row * dc, column * dr, normal * dz], axis=1)
    else:
        # no geometry: fall back on the instance numbers and the nominal slice thickness
        order = np.argsort([int(d.get("InstanceNumber", i) or i) for i, d in enumerate(datasets)], kind="stable")
        dz = _nominal_slice_spacing(first)
        origin = axes = None
    return MedicalImage(
        array=np.stack([slices[i] for i in order]),
        spacing=(abs(dz), dr, dc),
        path=files[0].parent,
        origin=origin,
        axes=axes,
        sop_instance_uids=tuple(str(datasets[i].get("SOPInstanceUID", "")) for i in order),
        instance_numbers=tuple(_instance_number(datasets[i]) for i in order),
        **_scanner_facts(first),
    )


def _slice_step(heights: np.ndarray, folder: Path, first: Dataset) -> float:
    """The slice spacing from the sorted slice heights; DataError for duplicates or uneven gaps."""
    if len(heights) == 1:
        return _nominal_slice_spacing(first)
    steps = np.diff(heights)
    step = float(np.median(steps))
    if step <= 1e-3:
        raise DataError(
            f"{folder}: several slices at the same position; is more than one series (or echo) in this folder?"
        )
    uneven = np.abs(steps - step) > SPACING_TOLERANCE * step + 1e-3
    if uneven.any():
        k = int(np.argmax(uneven))
        raise DataError(
            f"{folder}: slices unevenly spaced ({steps[k]:.3g} mm after slice {k + 1}, {step:.3g} mm elsewhere); "
            f"a slice is missing or two series are mixed"
        )
    return step
