"""Reading NIfTI through nibabel, which (unlike ITK's reader) refuses truncated files instead of padding them."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from harmonia.errors import UnreadableFile, one_line
from harmonia.io.image import MedicalImage

#: NIfTI's world is RAS+, DICOM's and ITK's is LPS+: x and y change sign
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def read_nifti(path: Path) -> MedicalImage:
    """A NIfTI file as ``(z, y, x)`` (4-D files ``(t, z, y, x)``) in stored units with scaling applied, LPS geometry.

    The header's free-text fields (``descrip``, ``aux_file``) are not carried: exporters put
    patient names there.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise UnreadableFile(path, f"unreadable or truncated NIfTI ({one_line(exc)})") from exc
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    affine = image.affine
    zooms = [float(z) for z in image.header.get_zooms()[: data.ndim]]
    return MedicalImage(
        array=np.ascontiguousarray(data.T, dtype=np.float32),
        spacing=tuple(reversed(zooms)),
        path=path,
        origin=RAS_TO_LPS @ affine[:3, 3],
        axes=RAS_TO_LPS @ affine[:3, :3],
    )
