"""Bringing images to a common geometry: in-plane resampling to a fixed grid, fixed-size crops around a point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field
from scipy import ndimage

SLICE_SIZE = "side of the square slice in pixels, after resampling (centre crop or pad)"


def slice_size_field(description: str = SLICE_SIZE) -> Any:
    """A cohort's ``image_size`` parameter: the side of its square items, 16 to 1024 pixels, default 128."""
    return Field(128, ge=16, le=1024, description=description)


def pixel_spacing_field(default: float) -> Any:
    """A cohort's ``spacing_mm`` parameter: the in-plane pixel size its slices are resampled to, up to 10 mm."""
    return Field(
        default,
        gt=0,
        le=10,
        description="in-plane pixel size in mm every slice is resampled to; field of view = image_size x spacing_mm",
    )


def to_grid(
    volume: np.ndarray, spacing: tuple[float, float], size: int, target: float, order: int, fill: float = 0.0
) -> np.ndarray:
    """Slices ``[Z, Y, X]`` resampled to ``target`` mm and centre-cropped/padded to ``size`` x ``size``.

    ``spacing`` is the in-plane pixel size (x, y) in mm. One affine map does both: output pixel
    ``o`` samples input position ``centre_in + (o - centre_out) * target / spacing``; ``order`` is 1
    for images, 0 (nearest) for labels. Images are smoothed before they are shrunk, so noise and
    edges do not alias. Padding takes the value ``fill`` (e.g. -1000 HU, air, for CT).
    """
    step = np.array([1.0, target / spacing[1], target / spacing[0]])
    if order > 0 and (step > 1).any():
        volume = ndimage.gaussian_filter(volume, np.maximum(0.0, (step - 1) / 2))
    out_shape = (volume.shape[0], size, size)
    offset = (np.array(volume.shape) - 1) / 2 - step * (np.array(out_shape) - 1) / 2
    return ndimage.affine_transform(
        volume, step, offset=offset, output_shape=out_shape, order=order, mode="constant", cval=fill
    )


def crop_around(volume: np.ndarray, centre: Sequence[float], shape: Sequence[int], fill: float) -> np.ndarray:
    """The ``shape`` block of ``volume`` centred on the index point ``centre``, padded with ``fill`` outside it.

    For an even side the block holds one more voxel before the centre than after it. The
    centre is rounded to the nearest voxel, so the crop is an exact copy (no interpolation).
    """
    if len(centre) != volume.ndim or len(shape) != volume.ndim:
        raise ValueError(
            f"centre {tuple(centre)} and shape {tuple(shape)} must have {volume.ndim} axes like the volume"
        )
    out = np.full(tuple(int(s) for s in shape), fill, dtype=volume.dtype)
    source, target = [], []
    for c, side, length in zip(centre, shape, volume.shape):
        start = int(np.floor(c + 0.5)) - int(side) // 2
        lo, hi = max(start, 0), min(start + int(side), length)
        if lo >= hi:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = volume[tuple(source)]
    return out
