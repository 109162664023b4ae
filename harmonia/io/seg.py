"""DICOM SEG (binary or fractional) read onto the grid of the image series it segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from harmonia.errors import DataError
from harmonia.io.dicom import pixels, read_dataset
from harmonia.io.image import MedicalImage


def _segmentation(path: Path) -> Dataset:
    dataset = read_dataset(Path(path))
    if dataset.get("Modality") != "SEG" or "SegmentSequence" not in dataset:
        raise DataError(f"{path}: not a DICOM SEG (Modality {dataset.get('Modality', 'missing')})")
    return dataset


def seg_segment_labels(path: Path) -> dict[int, str]:
    """SegmentNumber -> SegmentLabel of a SEG file."""
    dataset = read_dataset(Path(path), header_only=True)
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in dataset.get("SegmentSequence", [])}


def read_seg(path: Path, image: MedicalImage) -> np.ndarray:
    """An int label map (``image.shape``; each voxel the number of its segment, 0 for none) of a SEG file.

    Frames are placed by the source instance they reference, else by their plane position.
    Where segments overlap, the higher number wins; :func:`seg_segment_labels` names the numbers.
    """
    path = Path(path)
    dataset = _segmentation(path)
    if image.array.ndim != 3:
        raise DataError(f"{path}: a SEG needs a volume to lie on; {image.path} is {image.array.ndim}-D")
    frames = pixels(dataset, path)
    frames = frames[None] if frames.ndim == 2 else frames
    if frames.shape[1:] != image.shape[1:]:
        raise DataError(
            f"{path}: SEG frames are {frames.shape[2]}x{frames.shape[1]} pixels, but {image.path} slices are "
            f"{image.shape[2]}x{image.shape[1]}"
        )
    if dataset.get("SegmentationType") == "FRACTIONAL":
        frames = frames > float(dataset.get("MaximumFractionalValue", 255)) / 2
    labels = np.zeros(image.shape, np.int32)
    slice_of_uid = {uid: k for k, uid in enumerate(image.sop_instance_uids)}
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != len(frames):
        raise DataError(f"{path}: {len(frames)} frames but {len(per_frame)} per-frame descriptions")
    for frame, groups in zip(frames, per_frame):
        segment = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = _slice_of(groups, slice_of_uid, image, path)
        labels[k][frame > 0] = segment
    return labels


def _slice_of(groups: Dataset, slice_of_uid: dict[str, int], image: MedicalImage, path: Path) -> int:
    """The image slice one SEG frame lies on: by referenced SOP instance, else by plane position."""
    for derivation in groups.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if uid in slice_of_uid:
                return slice_of_uid[uid]
    position = groups.get("PlanePositionSequence")
    if position and image.origin is not None:
        z = float(image.world_to_index(np.array([[float(v) for v in position[0].ImagePositionPatient]]))[0, 0])
        k = int(round(z))
        if abs(z - k) < 0.25 and 0 <= k < image.shape[0]:
            return k
    raise DataError(f"{path}: a SEG frame matches no slice of {image.path}; does it segment another series?")
