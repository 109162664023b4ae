"""Medical image I/O: one image type for DICOM, NIfTI, MHA/MHD, NRRD and PNG, contours, SEGs, vendor names.

Readers return :class:`MedicalImage` in native units and never carry patient identifiers;
writers produce the formats scanners and planning systems export, for synthetic twins.
"""

from harmonia.errors import UnreadableFile
from harmonia.io.dicom import SeriesInfo, find_series
from harmonia.io.image import MedicalImage
from harmonia.io.itk import read_header
from harmonia.io.read import read_image
from harmonia.io.rtstruct import read_rtstruct, rtstruct_roi_names
from harmonia.io.seg import read_seg, seg_segment_labels
from harmonia.io.vendors import canonical_vendor
from harmonia.io.write import WrittenSeries, write_dicom_series, write_mha, write_rtstruct, write_seg

__all__ = [
    "MedicalImage",
    "SeriesInfo",
    "UnreadableFile",
    "WrittenSeries",
    "canonical_vendor",
    "find_series",
    "read_header",
    "read_image",
    "read_rtstruct",
    "read_seg",
    "rtstruct_roi_names",
    "seg_segment_labels",
    "write_dicom_series",
    "write_mha",
    "write_rtstruct",
    "write_seg",
]
