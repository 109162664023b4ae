"""What CT cohorts share: the HU of air, the geometry of axial-slice items and resampling slices in HU."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harmonia.api import CohortParams
from harmonia.geometry import to_grid

#: HU of air: what crops around a point are padded with where they leave the scanned volume
AIR_HU = -1000.0
#: what resampled slices are padded with outside the scanned field of view: the value scanners store there
OUTSIDE_FOV_HU = -1024.0


class SliceParams(CohortParams):
    """The geometry every axial CT slice is brought to."""

    image_size: int = Field(
        128, ge=16, le=1024, description="side of the square slice in pixels, after resampling (centre crop or pad)"
    )
    spacing_mm: float = Field(
        3.0,
        gt=0,
        le=10,
        description="in-plane pixel size in mm every slice is resampled to; field of view = image_size x spacing_mm",
    )


def hu_to_grid(
    volume: np.ndarray, spacing_xy: tuple[float, float], size: int, target_mm: float, fill: float = OUTSIDE_FOV_HU
) -> np.ndarray:
    """CT slices ``[Z, Y, X]`` resampled by :func:`~harmonia.geometry.to_grid` (linear), padded with air, not water."""
    return to_grid(volume, spacing_xy, size, target_mm, 1, fill=fill)
