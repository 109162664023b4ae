"""RTSTRUCT contours rasterised onto the grid of the image they were drawn on."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from skimage.draw import polygon

from harmonia.errors import DataError
from harmonia.io.dicom import frame_of_reference, read_dataset
from harmonia.io.image import MedicalImage

RoiSelector = str | re.Pattern | Callable[[str], bool]
#: how far (in slices) a contour's plane may sit from the nearest slice centre
PLANE_TOLERANCE = 0.25


def _structure_set(path: Path) -> Dataset:
    dataset = read_dataset(Path(path), header_only=True)
    if dataset.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in dataset:
        raise DataError(f"{path}: not an RTSTRUCT (Modality {dataset.get('Modality', 'missing')})")
    return dataset


def rtstruct_roi_names(path: Path) -> list[str]:
    """The ROI names of an RTSTRUCT file, in file order."""
    return [str(item.get("ROIName", "")) for item in _structure_set(path).StructureSetROISequence]


def _matcher(roi: RoiSelector) -> Callable[[str], bool]:
    if isinstance(roi, str):
        return lambda name: name.strip().lower() == roi.strip().lower()
    if isinstance(roi, re.Pattern):
        return lambda name: roi.search(name) is not None
    return roi


def read_rtstruct(path: Path, image: MedicalImage, roi: RoiSelector) -> dict[str, np.ndarray]:
    """Boolean masks (``image.shape``) of the ROIs whose name matches ``roi``, filled even-odd per slice.

    ``roi`` is a name (case-insensitive), a compiled pattern (``re.search``) or a predicate.
    DataError if the structure set belongs to another frame of reference, or a contour lies off
    the image or between its slices.
    """
    path = Path(path)
    dataset = _structure_set(path)
    if image.array.ndim != 3 or image.origin is None:
        raise DataError(f"{path}: contours need a volume with world geometry; {image.path} has none")
    own_frame = frame_of_reference(dataset)
    if own_frame and image.frame_of_reference_uid and own_frame != image.frame_of_reference_uid:
        raise DataError(
            f"{path}: drawn in frame of reference {own_frame}, but {image.path} is in {image.frame_of_reference_uid}"
        )
    wanted = _matcher(roi)
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in dataset.StructureSetROISequence}
    masks: dict[str, np.ndarray] = {}
    for contour_set in dataset.get("ROIContourSequence", []):
        name = names.get(int(contour_set.ReferencedROINumber), "")
        if not wanted(name):
            continue
        mask = masks.setdefault(name, np.zeros(image.shape, bool))
        for contour in contour_set.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") not in ("CLOSED_PLANAR", "OPEN_PLANAR"):
                continue
            _fill(mask, np.array(contour.ContourData, float).reshape(-1, 3), image, path, name)
    return masks


def _fill(mask: np.ndarray, points: np.ndarray, image: MedicalImage, path: Path, name: str) -> None:
    """Toggle the pixels inside one planar contour (even-odd rule, so inner contours cut holes)."""
    index = image.world_to_index(points)
    plane = float(np.mean(index[:, 0]))
    k = int(round(plane))
    if abs(plane - k) > PLANE_TOLERANCE or np.ptp(index[:, 0]) > 2 * PLANE_TOLERANCE:
        raise DataError(f"{path}: a contour of ROI '{name}' does not lie on a slice of {image.path}")
    _, rows, cols = image.shape
    off = (k < 0) | (k >= image.shape[0]) | (index[:, 1] < -0.5).any() | (index[:, 1] > rows - 0.5).any()
    if off or (index[:, 2] < -0.5).any() or (index[:, 2] > cols - 0.5).any():
        raise DataError(
            f"{path}: a contour of ROI '{name}' lies outside {image.path} ({image.shape[::-1]} voxels x, y, z)"
        )
    rr, cc = polygon(index[:, 1], index[:, 2], shape=(rows, cols))
    mask[k, rr, cc] ^= True
