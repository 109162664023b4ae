"""Writing images the way scanners and planning systems do, for synthetic twins: DICOM series, RTSTRUCT, SEG, MHA.

UIDs derive from the patient ID and file names, so a twin written twice with the same settings
is byte-for-byte the same. Only axial slices with identity orientation are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from skimage.measure import find_contours

#: SOP classes by modality; projection X-ray (DX/CR) series are single planar images
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"
CT_INTERCEPT = -1024.0
#: every written file says what it is, whatever folder it is copied to
SYNTHETIC_NOTE = "SYNTHETIC: written by harmonia for a synthetic twin; no patient was imaged"
#: DICOM Image Comments (0020,4000) as an ITK header key, where MHA files carry the note
IMAGE_COMMENTS_KEY = "0020|4000"
IDENTITY_ORIENTATION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass(frozen=True)
class WrittenSeries:
    """What a written image series is referenced by: files, UIDs, geometry and its (pixel-less) headers."""

    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    origin: tuple[float, float, float]
    spacing: tuple[float, ...]
    datasets: tuple[Dataset, ...]


def _save(dataset: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _file_meta(sop_class: str, sop_instance: str, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    return meta


def _patient(dataset: Dataset, patient_name: str, patient_id: str, birth_date: str, study_uid: str) -> None:
    """Patient and study module: the (planted, synthetic) identifiers a real export would carry."""
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = birth_date
    dataset.PatientSex = "O"
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = "20200101"
    dataset.StudyTime = "120000"
    dataset.StudyID = "1"
    dataset.AccessionNumber = ""
    dataset.ReferringPhysicianName = ""
    dataset.ImageComments = SYNTHETIC_NOTE


def _stored(slice_values: np.ndarray, modality: str) -> tuple[np.ndarray, dict[str, object]]:
    """Stored pixel values and the tags that turn them back into native units (HU for CT)."""
    if modality == "CT":
        stored = np.clip(np.rint(slice_values - CT_INTERCEPT), -32768, 32767).astype(np.int16)
        return stored, {
            "PixelRepresentation": 1,
            "RescaleIntercept": CT_INTERCEPT,
            "RescaleSlope": 1.0,
            "RescaleType": "HU",
        }
    stored = np.clip(np.rint(slice_values), 0, 65535).astype(np.uint16)
    return stored, {"PixelRepresentation": 0}


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing: Sequence[float],
    *,
    modality: str,
    manufacturer: str,
    patient_name: str,
    patient_id: str,
    birth_date: str = "19500101",
    series_description: str = "",
    study_uid: str | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    model_name: str = "",
    extra: Mapping[str, object] | None = None,
    file_name: str = "{index:03d}.dcm",
    transfer_syntax: str | None = None,
) -> WrittenSeries:
    """Write ``volume`` (``(z, y, x)``, or ``(y, x)`` for DX/CR) as one DICOM series into ``folder``.

    ``spacing`` is in mm per array axis; CT values are HU (stored with intercept -1024), others
    are stored as unsigned 16-bit. ``transfer_syntax`` (e.g. ``RLELossless``) compresses the pixels.
    """
    if modality not in SOP_CLASS:
        raise ValueError(f"modality {modality!r} not one of {sorted(SOP_CLASS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planar = volume.ndim == 2
    slices = volume[None] if planar else volume
    dz, dr, dc = (1.0, *spacing) if planar else tuple(float(s) for s in spacing)
    study_uid = study_uid or str(_uid("study", patient_id))
    series_uid = str(_uid("series", patient_id, folder.name, series_description, modality))
    frame_uid = str(_uid("frame", study_uid))
    files, uids, headers = [], [], []
    for k, values in enumerate(slices):
        sop_uid = str(_uid("instance", series_uid, k))
        ds = Dataset()
        ds.file_meta = _file_meta(SOP_CLASS[modality], sop_uid)
        _patient(ds, patient_name, patient_id, birth_date, study_uid)
        ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], sop_uid
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, manufacturer, model_name
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 1, series_description
        ds.FrameOfReferenceUID, ds.InstanceNumber = frame_uid, k + 1
        position = [float(origin[0]), float(origin[1]), float(origin[2]) + k * dz]
        if planar:
            ds.ImagerPixelSpacing = [dr, dc]
            ds.PixelSpacing = [dr, dc]
        else:
            ds.ImagePositionPatient, ds.ImageOrientationPatient = position, IDENTITY_ORIENTATION
            ds.SliceLocation, ds.SliceThickness, ds.PixelSpacing = position[2], dz, [dr, dc]
        stored, rescale = _stored(values, modality)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        for keyword, value in rescale.items():
            setattr(ds, keyword, value)
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / file_name.format(index=k + 1)
        ds.save_as(path, enforce_file_format=True)
        del ds.PixelData
        files.append(path)
        uids.append(sop_uid)
        headers.append(ds)
    return WrittenSeries(
        files=tuple(files),
        sop_instance_uids=tuple(uids),
        series_uid=series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=frame_uid,
        sop_class_uid=SOP_CLASS[modality],
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing=(dz, dr, dc),
        datasets=tuple(headers),
    )


def _derived(
    series: WrittenSeries, modality: str, sop_class: str, name: str, patient_name: str, patient_id: str
) -> Dataset:
    """The header shared by objects derived from ``series`` (RTSTRUCT, SEG): same patient, study and frame."""
    sop_uid = str(_uid(modality, series.series_uid, name))
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    birth_date = str(series.datasets[0].get("PatientBirthDate", ""))
    _patient(ds, patient_name, patient_id, birth_date, series.study_uid)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.SeriesInstanceUID, ds.SeriesNumber = str(_uid(modality, "series", series.series_uid, name)), 100
    ds.Manufacturer, ds.SeriesDescription, ds.InstanceNumber = "harmonia synthetic twin", name, 1
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    return ds


def _image_reference(series: WrittenSeries, k: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = series.sop_class_uid, series.sop_instance_uids[k]
    return item


def write_rtstruct(
    path: Path, series: WrittenSeries, rois: Mapping[str, np.ndarray], patient_name: str, patient_id: str
) -> Path:
    """Write one RTSTRUCT with a closed planar contour set per ROI mask (``(z, y, x)`` on ``series``' grid)."""
    ds = _derived(series, "RTSTRUCT", RTSTRUCT_CLASS, "RTSTRUCT", patient_name, patient_id)
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "twin", "20200101", "120000"
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_uid
    referenced_series.ContourImageSequence = DicomSequence(
        [_image_reference(series, k) for k in range(len(series.files))]
    )
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_CLASS, series.study_uid
    study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    structures, contour_sets, observations = [], [], []
    for number, (name, mask) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "MANUAL"
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        structures.append(roi)
        contour_set = Dataset()
        contour_set.ReferencedROINumber, contour_set.ROIDisplayColor = number, [255, 0, 0]
        contour_set.ContourSequence = DicomSequence(_contours(series, np.asarray(mask, bool)))
        contour_sets.append(contour_set)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV" if "gtv" in name.lower() else "ORGAN", ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(structures)
    ds.ROIContourSequence = DicomSequence(contour_sets)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    return _save(ds, Path(path))


def _contours(series: WrittenSeries, mask: np.ndarray) -> list[Dataset]:
    """Contour items tracing ``mask`` slice by slice, at the half-pixel boundary, in world mm."""
    dz, dr, dc = series.spacing
    x0, y0, z0 = series.origin
    items = []
    for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        # padding closes contours that touch the image border
        for line in find_contours(np.pad(mask[k], 1).astype(float), 0.5):
            rows, cols = line[:-1, 0] - 1, line[:-1, 1] - 1
            points = np.stack([x0 + cols * dc, y0 + rows * dr, np.full(len(rows), z0 + k * dz)], axis=1)
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_reference(series, int(k))])
            item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            item.ContourData = [round(float(v), 3) for v in points.ravel()]
            items.append(item)
    return items


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def write_seg(
    path: Path, series: WrittenSeries, segments: Mapping[str, np.ndarray], patient_name: str, patient_id: str
) -> Path:
    """Write a binary DICOM SEG with one segment per mask (numbered from 1), a frame per non-empty slice."""
    ds = _derived(series, "SEG", SEG_CLASS, "SEG", patient_name, patient_id)
    dz, dr, dc = series.spacing
    rows, cols = np.asarray(next(iter(segments.values()))).shape[1:]
    ds.SegmentationType, ds.ContentLabel, ds.ContentCreatorName = "BINARY", "TWIN", ""
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    descriptions, frames, per_frame = [], [], []
    for number, (label, mask) in enumerate(segments.items(), start=1):
        description = Dataset()
        description.SegmentNumber, description.SegmentLabel, description.SegmentAlgorithmType = number, label, "MANUAL"
        description.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code("85756007", "Tissue")])
        description.SegmentedPropertyTypeCodeSequence = DicomSequence([_code("85756007", "Tissue")])
        descriptions.append(description)
        mask = np.asarray(mask, bool)
        for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
            frames.append(mask[k])
            per_frame.append(_frame_groups(series, int(k), number))
    ds.SegmentSequence = DicomSequence(descriptions)
    shared, measures, orientation = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = [dr, dc], dz, dz
    orientation.ImageOrientationPatient = IDENTITY_ORIENTATION
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = (
        DicomSequence([measures]),
        DicomSequence([orientation]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    reference = Dataset()
    reference.SeriesInstanceUID = series.series_uid
    reference.ReferencedInstanceSequence = DicomSequence(
        [_image_reference(series, k) for k in range(len(series.files))]
    )
    ds.ReferencedSeriesSequence = DicomSequence([reference])
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack(frames).astype(np.uint8)) if frames else b""
    return _save(ds, Path(path))


def _frame_groups(series: WrittenSeries, k: int, segment: int) -> Dataset:
    """Per-frame description: which slice it lies on (by reference and by position) and which segment it holds."""
    source = _image_reference(series, k)
    source.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code("121322", "Source image for image processing operation")]
    )
    source.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator = "DCM"
    derivation = Dataset()
    derivation.SourceImageSequence = DicomSequence([source])
    position = Dataset()
    x0, y0, z0 = series.origin
    position.ImagePositionPatient = [x0, y0, z0 + k * series.spacing[0]]
    identification = Dataset()
    identification.ReferencedSegmentNumber = segment
    groups = Dataset()
    groups.DerivationImageSequence = DicomSequence([derivation])
    groups.PlanePositionSequence = DicomSequence([position])
    groups.SegmentIdentificationSequence = DicomSequence([identification])
    return groups


def write_mha(
    path: Path,
    array: np.ndarray,
    spacing: Sequence[float],
    metadata: Mapping[str, str],
    origin: Sequence[float] | None = None,
) -> Path:
    """Write a compressed MetaImage (``(z, y, x)`` or ``(y, x)``, spacing in mm per array axis) with header keys
    (and the synthetic note under ``0020|4000``)."""
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    if origin is not None:
        image.SetOrigin([float(o) for o in origin])
    for key, value in {IMAGE_COMMENTS_KEY: SYNTHETIC_NOTE, **metadata}.items():
        image.SetMetaData(key, str(value))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return Path(path)
