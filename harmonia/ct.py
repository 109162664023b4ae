"""What CT cohorts share: the HU of air, the geometry of axial-slice items and resampling slices in HU."""

from __future__ import annotations

import numpy as np

from harmonia.api import CohortParams
from harmonia.geometry import pixel_spacing_field, slice_size_field, to_grid

#: HU of air: what crops around a point are padded with where they leave the scanned volume
AIR_HU = -1000.0
#: what resampled slices are padded with outside the scanned field of view: the value scanners store there
OUTSIDE_FOV_HU = -1024.0


class SliceParams(CohortParams):
    """The geometry every axial CT slice is brought to."""

    image_size: int = slice_size_field()
    spacing_mm: float = pixel_spacing_field(3.0)


def hu_to_grid(
    volume: np.ndarray, spacing_xy: tuple[float, float], size: int, target_mm: float, fill: float = OUTSIDE_FOV_HU
) -> np.ndarray:
    """CT slices ``[Z, Y, X]`` resampled by :func:`~harmonia.geometry.to_grid` (linear), padded with air, not water."""
    return to_grid(volume, spacing_xy, size, target_mm, 1, fill=fill)
