"""Reading MetaImage (MHA/MHD), NRRD and PNG through SimpleITK, in world (LPS) geometry like DICOM."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from harmonia.errors import UnreadableFile
from harmonia.io.image import MedicalImage

#: header keys dropped on reading: the DICOM patient module (group 0010: name, ID, birth date...) and ITK's own
DROPPED_KEY_PREFIXES = ("0010|", "ITK_")
MODALITY_KEY, MANUFACTURER_KEY, DESCRIPTION_KEY = "0008|0060", "0008|0070", "0008|103e"
PLANAR_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _reason(exc: RuntimeError, path: Path) -> str:
    """ITK's multi-line exception text cut down to its description, without the path."""
    text = str(exc)
    found = re.search(r"ITK ERROR: [^:]*: *(.+)", text) or re.search(r"Description:\s*(.+)", text)
    message = found.group(1) if found else text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return " ".join(message.replace(str(path), "<file>").split())[:300]


def _metadata(image: sitk.Image | sitk.ImageFileReader) -> dict[str, str]:
    """Header keys and values, less the patient module and ITK's bookkeeping."""
    return {k: image.GetMetaData(k).strip() for k in image.GetMetaDataKeys() if not k.startswith(DROPPED_KEY_PREFIXES)}


def read_header(path: Path) -> dict[str, str]:
    """The header keys of an MHA/MHD/NRRD file (e.g. ``0008|0070``, the manufacturer) without reading its pixels."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableFile(path, f"unreadable image header ({_reason(exc, path)})") from exc
    return _metadata(reader)


def read_itk(path: Path) -> MedicalImage:
    """One image file SimpleITK reads: ``(z, y, x)`` volumes with geometry, ``(y, x)`` planar images without."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UnreadableFile(path, f"unreadable or truncated image file ({_reason(exc, path)})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        if path.suffix.lower() not in PLANAR_SUFFIXES:
            raise UnreadableFile(path, f"{image.GetNumberOfComponentsPerPixel()} values per voxel; expected greyscale")
        image = _grey(image)
    metadata = _metadata(image)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    planar = image.GetDimension() == 2 and path.suffix.lower() in PLANAR_SUFFIXES
    origin = axes = None
    if not planar:
        dims = image.GetDimension()
        direction = np.array(image.GetDirection(), float).reshape(dims, dims)
        steps = direction @ np.diag(image.GetSpacing())
        axes, origin = np.eye(3), np.zeros(3)
        axes[:dims, :dims] = steps
        origin[:dims] = image.GetOrigin()
    return MedicalImage(
        array=array,
        spacing=spacing,
        path=path,
        origin=origin,
        axes=axes,
        modality=metadata.get(MODALITY_KEY) or None,
        manufacturer=metadata.get(MANUFACTURER_KEY) or None,
        description=metadata.get(DESCRIPTION_KEY, ""),
        metadata=metadata,
    )


def _grey(image: sitk.Image) -> sitk.Image:
    """An RGB(A) picture as one greyscale channel (ITU-R 601 luma), for PNGs saved in colour."""
    rgb = sitk.GetArrayFromImage(image).astype(np.float32)[..., :3]
    grey = sitk.GetImageFromArray(rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    grey.CopyInformation(sitk.VectorIndexSelectionCast(image, 0))
    return grey
