"""``MedicalImage``: one image or volume in native units with its geometry and (non-identifying) scanner facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harmonia.io.vendors import canonical_vendor


@dataclass(frozen=True, eq=False)
class MedicalImage:
    """Pixels in native units (HU for CT) with spacing, geometry, modality and vendor; never patient identifiers.

    ``array`` is ``(z, y, x)`` for a volume, slices sorted along the slice normal, or ``(y, x)``
    for a planar image. ``spacing`` is in mm per array axis. ``origin`` is the world (x, y, z)
    position of voxel 0 and the columns of ``axes`` are the world steps of the x, y and z index
    axes (both None when the file has no geometry, e.g. PNG).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    path: Path
    origin: np.ndarray | None = None
    axes: np.ndarray | None = None
    modality: str | None = None
    manufacturer: str | None = None
    description: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    #: DICOM InstanceNumber of each slice (None where a file has none), for numbering schemes that count by it
    instance_numbers: tuple[int | None, ...] = ()
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def vendor(self) -> str | None:
        """The canonical vendor of ``manufacturer`` (``GE``, ``Siemens``...), None when the file names none."""
        return canonical_vendor(self.manufacturer) or None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Fractional ``(z, y, x)`` indices of world points ``[n, 3]`` given as (x, y, z) in mm."""
        if self.origin is None or self.axes is None:
            raise ValueError(f"{self.path}: the image has no world geometry")
        xyz = np.linalg.solve(self.axes, (np.asarray(points, float) - self.origin).T).T
        return xyz[:, ::-1]

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """World (x, y, z) positions in mm of fractional ``(z, y, x)`` indices ``[n, 3]``."""
        if self.origin is None or self.axes is None:
            raise ValueError(f"{self.path}: the image has no world geometry")
        return self.origin + (np.asarray(indices, float)[:, ::-1] @ self.axes.T)
