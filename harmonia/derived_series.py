"""Derived DICOM series: read each CT series below a folder, pass its HU volume through a transform, write the result.

This is the DICOM side of ``harmonia standardize``. A derived series keeps its source's patient,
study, geometry and stored pixel type, gets new UIDs, ImageType ``DERIVED\\SECONDARY`` and a
SourceImageSequence per slice, and is written uncompressed (Explicit VR Little Endian). Series and
files are named by pseudonyms only: folder and file names below the input may carry a patient's name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from harmonia.errors import DataError, InputError, UnreadableFile
from harmonia.io.dicom import SeriesInfo, find_series, read_dataset, read_dicom_series
from harmonia.privacy import pseudonymize

log = logging.getLogger(__name__)

#: pseudonym namespaces: a series by its source SeriesInstanceUID, an unreadable file by its path below INPUT
SERIES_NAMESPACE = "derived-series"
FILE_NAMESPACE = "derived-series/file"
#: CT Image Storage: the single-frame CT slices this module reads and writes
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: how many skipped series the error for "nothing written" lists before counting the rest
LISTED_SKIPS = 3
#: DICOM LO, the VR of SeriesDescription, holds at most 64 characters
DESCRIPTION_LENGTH = 64
#: CID 7202 "Source image for image processing operation": why each SourceImageSequence item is referenced
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
#: header elements that describe the source's pixel values or its own derivation, no longer true of the output
STALE_KEYWORDS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "SourceImageSequence",
    "DerivationCodeSequence",
)

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DerivedSeries:
    """One series written: its pseudonym (also its folder's name), new SeriesInstanceUID, slices and clipped pixels.

    ``source`` is the input series' folder, for the user's console only: its path may name the patient,
    so it is left out of :meth:`line` and of the repr.
    """

    name: str
    series_uid: str
    folder: Path
    slices: int
    clipped: int
    source: Path = field(repr=False)

    def line(self) -> str:
        clipped = f", {self.clipped} pixels clipped" if self.clipped else ""
        return f"{self.name}: wrote {self.slices} slices as series {self.series_uid}{clipped}"


@dataclass(frozen=True)
class SkippedSeries:
    """A series (or an unreadable file) left out, by pseudonym, with a one-line reason that holds no path.

    ``source`` is the series' folder or the file, for the user's console only (see :class:`DerivedSeries`).
    """

    name: str
    reason: str
    source: Path = field(repr=False)
    already_written: bool = False

    def line(self) -> str:
        return f"{self.name}: skipped, {self.reason}"


@dataclass(frozen=True)
class StandardizeResult:
    """The series written and the ones skipped, in the order found."""

    written: tuple[DerivedSeries, ...]
    skipped: tuple[SkippedSeries, ...]

    def lines(self) -> list[str]:
        """One line per series, free of patient identifiers and paths below the input."""
        return [s.line() for s in self.written] + [s.line() for s in self.skipped]


def standardize_series_folder(
    input: Path,
    out: Path,
    transform: Transform,
    *,
    derivation: str,
    description_suffix: str = " harmonia standardized",
    overwrite: bool = False,
    on_series: Callable[[str], None] | None = None,
) -> StandardizeResult:
    """Write one derived series into ``out/<pseudonym>/`` for every CT series below ``input``.

    ``transform`` maps a float32 HU volume ``[z, y, x]`` (slices in spatial order) to HU of the same
    shape; ``derivation`` becomes each slice's DerivationDescription. A series that is not CT or
    cannot be read is skipped with its reason. An output folder that already exists is a series
    written before (folders appear only once complete), so it is skipped, keeping reruns resumable,
    unless ``overwrite``. ``on_series`` is called with each series' pseudonym before it is handled.
    InputError when ``out`` lies inside ``input`` or when no series was written or found written;
    ValueError when the transform returns another shape, NaN or infinity.
    """
    input, out = Path(input), Path(out)
    _refuse_output_inside_input(input, out)
    unreadable: list[UnreadableFile] = []
    series = find_series(input, on_unreadable=unreadable.append)
    written: list[DerivedSeries] = []
    skipped = [_unreadable_file(error, input) for error in unreadable]
    for skip in skipped:
        log.warning(skip.line())
    for info in series:
        name = pseudonymize(info.uid, SERIES_NAMESPACE)
        if on_series is not None:
            on_series(name)
        outcome = _standardize_one(info, name, out, transform, derivation, description_suffix, overwrite)
        if isinstance(outcome, DerivedSeries):
            written.append(outcome)
            log.info(outcome.line())
        else:
            skipped.append(outcome)
            log.warning(outcome.line())
    if not written and not any(s.already_written for s in skipped):
        raise InputError(f"{input}: no CT series could be standardized ({_summary(skipped)})")
    return StandardizeResult(tuple(written), tuple(skipped))


def _refuse_output_inside_input(input: Path, out: Path) -> None:
    """InputError when ``out`` is ``input`` or below it: harmonia never writes into its input."""
    source, target = input.resolve(), out.resolve()
    if target == source or source in target.parents:
        raise InputError(f"{out}: output folder is inside the input folder {input}; choose one outside it")


def _summary(skipped: list[SkippedSeries]) -> str:
    """The first few skips as one line, and how many more there were."""
    if not skipped:
        return "no DICOM series below it"
    listed = "; ".join(s.line() for s in skipped[:LISTED_SKIPS])
    return listed + (f"; and {len(skipped) - LISTED_SKIPS} more" if len(skipped) > LISTED_SKIPS else "")


def _unreadable_file(error: UnreadableFile, input: Path) -> SkippedSeries:
    """A file whose header could not be read, named by a salted hash of its path below ``input``."""
    path = Path(error.path)
    relative = path.relative_to(input) if path.is_relative_to(input) else path
    name = "file-" + pseudonymize(relative.as_posix(), FILE_NAMESPACE)[1:13]
    return SkippedSeries(name, _reason(error, [path]), path)


def _reason(error: UnreadableFile | DataError, paths: Iterable[Path]) -> str:
    """The error's text without any of ``paths``, which may name the patient: a leading ``path: `` goes,
    any other mention becomes ``<path>``."""
    text = error.reason if isinstance(error, UnreadableFile) else str(error)
    for path in sorted({str(p) for p in paths}, key=len, reverse=True):
        text = text.replace(f"{path}: ", "").replace(path, "<path>")
    return text


def _standardize_one(
    info: SeriesInfo,
    name: str,
    out: Path,
    transform: Transform,
    derivation: str,
    description_suffix: str,
    overwrite: bool,
) -> DerivedSeries | SkippedSeries:
    """Derive one series into ``out/name``, or say why not."""
    if info.modality != "CT":
        return SkippedSeries(name, f"modality {info.modality or 'missing'}, not CT", info.folder)
    target = out / name
    if target.exists() and not overwrite:
        reason = f"output folder {name} exists from an earlier run (overwrite to replace it)"
        return SkippedSeries(name, reason, info.folder, already_written=True)
    try:
        headers, volume = _read_ct_series(info)
    except (UnreadableFile, DataError) as error:
        return SkippedSeries(name, _reason(error, [*info.files, *{f.parent for f in info.files}]), info.folder)
    output = _checked(transform(volume.copy()), volume.shape, name)
    series_uid = generate_uid()
    clipped = 0
    with _series_folder(target, overwrite) as folder:
        for k, (header, source_hu, hu) in enumerate(zip(headers, volume, output)):
            padding = _padding_mask(source_hu, header)
            stored, lost = _stored_pixels(hu, header, padding)
            derived = _derived_slice(header, stored, series_uid, derivation, description_suffix)
            derived.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
            clipped += lost
    if clipped:
        low, high = _hu_range(headers[0])
        log.warning(
            f"{name}: {clipped} of {output.size} pixels ({100 * clipped / output.size:.2g}%) beyond the "
            f"HU range [{low:g}, {high:g}] the source's stored type holds; clipped"
        )
    return DerivedSeries(name, str(series_uid), target, len(headers), clipped, info.folder)


def _read_ct_series(info: SeriesInfo) -> tuple[list[Dataset], np.ndarray]:
    """The headers of a single-frame series (without pixel data) and its HU volume, both in spatial order."""
    headers = {}
    for path in info.files:
        header = read_dataset(path, header_only=True)
        if header.get("SOPClassUID") != CT_IMAGE_STORAGE:
            raise UnreadableFile(path, f"SOP class {header.get('SOPClassUID')}, not CT Image Storage (single-frame)")
        if header.get("PhotometricInterpretation") != "MONOCHROME2":
            raise UnreadableFile(
                path, f"photometric interpretation {header.get('PhotometricInterpretation')}, not MONOCHROME2"
            )
        if "SOPInstanceUID" not in header:
            raise UnreadableFile(path, "no SOPInstanceUID")
        headers[str(header.SOPInstanceUID)] = header
    if len(headers) < len(info.files):
        raise DataError(f"{len(info.files) - len(headers)} files repeat another file's SOPInstanceUID")
    image = read_dicom_series(info.files)
    return [headers[uid] for uid in image.sop_instance_uids], image.array


def _checked(output: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The transform's output as float64; ValueError when its shape differs or it holds NaN or infinity."""
    output = np.asarray(output, dtype=np.float64)
    if output.shape != shape:
        raise ValueError(f"{name}: transform returned shape {output.shape} for a volume of shape {shape}")
    if not np.isfinite(output).all():
        raise ValueError(f"{name}: transform returned {int((~np.isfinite(output)).sum())} NaN or infinite values")
    return output


def _stored_range(header: Dataset) -> tuple[int, int]:
    """The lowest and highest stored value that BitsStored and PixelRepresentation allow."""
    bits = int(header.BitsStored)
    if int(header.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _rescale(header: Dataset) -> tuple[float, float]:
    """(slope, intercept) of the slice: stored value times slope plus intercept is HU."""
    return float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)


def _hu_range(header: Dataset) -> tuple[float, float]:
    """The HU range the slice's stored type and rescale can represent."""
    (low, high), (slope, intercept) = _stored_range(header), _rescale(header)
    return low * slope + intercept, high * slope + intercept


def _padding_mask(source_hu: np.ndarray, header: Dataset) -> np.ndarray | None:
    """Where the source slice holds PixelPaddingValue (up to PixelPaddingRangeLimit): outside the scanned field."""
    if "PixelPaddingValue" not in header:
        return None
    slope, intercept = _rescale(header)
    stored = np.rint((source_hu - intercept) / slope)
    first = int(header.PixelPaddingValue)
    last = int(header.get("PixelPaddingRangeLimit", first))
    return (stored >= min(first, last)) & (stored <= max(first, last))


def _stored_pixels(hu: np.ndarray, header: Dataset, padding: np.ndarray | None) -> tuple[np.ndarray, int]:
    """HU as stored values of the source's type under the source slice's own slope and intercept.

    Keeping the source's BitsAllocated/BitsStored/PixelRepresentation and its RescaleSlope/Intercept
    (per slice, as the source has them) makes the derived series interchangeable with its source:
    same HU resolution (rounding moves a value by at most half a slope), same range, and the usual
    CT slope 1 that viewers and pipelines assume stays. Values beyond the range are clipped and counted;
    padding pixels keep the padding value, so PixelPaddingValue still marks them.
    Returns the stored pixels and how many were clipped.
    """
    slope, intercept = _rescale(header)
    low, high = _stored_range(header)
    values = np.rint((hu - intercept) / slope)
    outside = (values < low) | (values > high)
    if padding is not None:
        values[padding] = int(header.PixelPaddingValue)
        outside &= ~padding
    dtype = np.dtype(f"<{'i' if int(header.PixelRepresentation) == 1 else 'u'}{int(header.BitsAllocated) // 8}")
    return np.clip(values, low, high).astype(dtype), int(outside.sum())


def _derived_slice(
    header: Dataset, stored: np.ndarray, series_uid: str, derivation: str, description_suffix: str
) -> Dataset:
    """The source slice's header turned into the derived slice's (in place) and given ``stored`` as its pixels.

    Private elements go: they describe the source's pixels in ways harmonia cannot update.
    """
    source_class, source_instance = str(header.SOPClassUID), str(header.SOPInstanceUID)
    header.remove_private_tags()
    for keyword in STALE_KEYWORDS:
        if keyword in header:
            delattr(header, keyword)
    header.SOPInstanceUID = generate_uid()
    header.SeriesInstanceUID = series_uid
    image_type = header.get("ImageType", [])
    header.ImageType = ["DERIVED", "SECONDARY", *([image_type] if isinstance(image_type, str) else image_type)[2:]]
    header.SeriesDescription = _description(str(header.get("SeriesDescription", "") or ""), description_suffix)
    header.DerivationDescription = derivation
    header.SourceImageSequence = [_source_reference(source_class, source_instance)]
    if "RescaleSlope" not in header or "RescaleIntercept" not in header:
        header.RescaleSlope, header.RescaleIntercept = _rescale(header)
    header.PixelData = stored.tobytes()
    header["PixelData"].VR = "OW"
    header.file_meta = _file_meta(source_class, str(header.SOPInstanceUID))
    return header


def _description(source: str, suffix: str) -> str:
    """The source's SeriesDescription with ``suffix``, the source's part shortened to fit DICOM's 64 characters."""
    return (source.rstrip()[: max(0, DESCRIPTION_LENGTH - len(suffix))] + suffix)[:DESCRIPTION_LENGTH].strip()


def _source_reference(sop_class: str, sop_instance: str) -> Dataset:
    """A SourceImageSequence item pointing at one source slice."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_PURPOSE
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    """File meta information for an uncompressed (Explicit VR Little Endian) slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


@contextmanager
def _series_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary folder beside ``target`` that becomes ``target`` only once every slice is in it.

    On an error the temporary folder is removed, so ``target`` never holds half a series; with
    ``overwrite`` an existing ``target`` is moved aside first and removed after the swap.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = None
    if overwrite and target.exists():
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        target.rename(old)
    temporary.rename(target)
    if old is not None:
        shutil.rmtree(old)
