"""``read_image``: one entry point for every file and folder kind a cohort meets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harmonia.errors import DataError
from harmonia.io.dicom import find_series, looks_like_dicom, read_dicom_file, read_dicom_series
from harmonia.io.image import MedicalImage
from harmonia.io.itk import read_itk
from harmonia.io.nifti import read_nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(source: Path | str | Sequence[Path | str], series_uid: str | None = None) -> MedicalImage:
    """Read a DICOM file, a folder holding a DICOM series, a list of one series' files, NIfTI, MHA/MHD, NRRD or PNG.

    A folder with several image series needs ``series_uid``; the error lists the ones found.
    """
    if not isinstance(source, (str, Path)):
        return read_dicom_series(source)
    path = Path(source)
    if path.is_dir():
        return read_dicom_series(_series_files(path, series_uid))
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if path.name.lower().endswith(ITK_SUFFIXES):
        return read_itk(path)
    if looks_like_dicom(path):
        return read_dicom_file(path)
    raise DataError(f"{path}: unknown image format; expected DICOM, NIfTI, MHA/MHD, NRRD or PNG")


def _series_files(folder: Path, series_uid: str | None) -> tuple[Path, ...]:
    """The files of the one image series in ``folder``, or of ``series_uid``; DataError naming what is there."""
    series = [
        s for s in find_series(folder) if s.uid == series_uid or (series_uid is None and not s.referenced_series_uids)
    ]
    if not series:
        wanted = f"series {series_uid}" if series_uid else "an image series"
        raise DataError(f"{folder}: no DICOM files of {wanted} in this folder")
    if len(series) > 1:
        listed = "; ".join(f"{s.uid} ({s.modality} '{s.description}', {len(s.files)} files)" for s in series)
        raise DataError(f"{folder}: {len(series)} image series in one folder, pass series_uid= one of: {listed}")
    return series[0].files
