"""Random fields the simulator draws per image: smooth fields (bias, anatomy) and textured noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    coarse = rng.standard_normal(nodes)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, nodes)], order=3, mode="nearest").astype(np.float32)
    field -= field.mean()
    peak = np.abs(field).max()
    return field / peak if peak > 0 else field


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
