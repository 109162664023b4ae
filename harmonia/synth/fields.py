"""Random fields the simulator draws per image: smooth fields (bias, anatomy) and textured noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage


def axis_spacing(spacing: float | Sequence[float], ndim: int) -> np.ndarray:
    """``spacing`` as one positive voxel size per axis (a scalar applies to every axis)."""
    values = np.asarray(spacing, dtype=float)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be a positive number or {ndim} positive numbers, got {spacing!r}")
    return values


def smooth_field(
    shape: Sequence[int], scale: float, rng: np.random.Generator, spacing: float | Sequence[float] = 1.0
) -> np.ndarray:
    """A smooth random field of ``shape`` with zero mean and peak ``|value|`` 1 (float32).

    Independent Gaussian values sit on a coarse grid whose nodes are at most ``scale`` x the
    field of view apart (the FOV is the largest physical extent, ``shape * spacing``), and are
    interpolated with cubic splines. Small ``scale`` gives blotchy fields, ``scale >= 1`` a
    gentle gradient. Used for bias fields; cohort authors can threshold one to draw blob-shaped
    anatomy or lesions.
    """
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"shape must be non-empty with positive sizes, got {shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive (a fraction of the field of view), got {scale}")
    extent = np.asarray(shape) * axis_spacing(spacing, len(shape))
    node_distance = scale * extent.max()
    nodes = tuple(max(2, math.ceil(e / node_distance) + 1) for e in extent)
    field = rng.standard_normal(nodes)
    for axis, n in enumerate(shape):
        field = np.moveaxis(np.tensordot(_cubic_zoom_operator(nodes[axis], n), field, axes=(1, axis)), 0, axis)
    field = field.astype(np.float32)
    field -= field.mean()
    peak = np.abs(field).max()
    return field / peak if peak > 0 else field


@lru_cache(maxsize=128)
def _cubic_zoom_operator(nodes: int, size: int) -> np.ndarray:
    """The ``size x nodes`` matrix of ``ndimage.zoom(..., order=3, mode="nearest")`` from ``nodes`` values to ``size``.

    Cubic-spline zoom is linear and separable, so applying this matrix along each axis in turn
    gives the n-D zoom (equal to float64 rounding) at a fraction of its cost: the n-D zoom sums
    4**ndim spline taps per output voxel, the matrices 4 per axis.
    """
    basis = np.eye(nodes)
    operator = np.stack([ndimage.zoom(column, size / nodes, order=3, mode="nearest") for column in basis], axis=1)
    operator.setflags(write=False)
    return operator


def textured_noise(
    shape: Sequence[int], correlation: float, rng: np.random.Generator, spacing: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise (float32) with spatial correlation length ``correlation``.

    ``correlation`` is the sigma, in pixels along the finest axis, of the Gaussian filter that
    colours white noise (0 = white); coarser axes get proportionally fewer pixels. The result
    is rescaled to unit standard deviation so texture and level stay independent parameters.
    """
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    if correlation > 0:
        step = axis_spacing(spacing, len(noise.shape))
        noise = ndimage.gaussian_filter(noise, correlation * step.min() / step, mode="wrap")
        noise /= noise.std()
    return noise
