"""Intensity tools shared by the histogram mitigations: foreground masks, per-item quantiles, piecewise-linear maps.

Everything here works on native-unit images (HU for CT, the scanner's arbitrary scale for MRI) as
the protocol hands them to a mitigation, float ``[N, C, *spatial]`` tensors; one *item* (all its
channels and voxels together) is one image. The arithmetic is numpy's, on the CPU, in chunks of
items so that memory stays bounded on thousands of slices:

- :class:`Foreground` says which voxels of an item count: all of them, those above a fixed
  threshold in native units, or those above the item's own Otsu threshold (scikit-image's
  ``threshold_otsu``, 256 bins over the item's range). An item with no voxel in its foreground (a
  blank slice, an all-air slice) falls back to all its voxels, so that every item has quantiles;
  :attr:`Landmarks.fallback` says which did.
- :func:`item_landmarks` gives each item's foreground percentiles, with numpy's default
  ("linear") definition, exactly as ``np.percentile`` would on the item's foreground alone;
- :func:`pooled_percentiles` gives the percentiles of all the items' foreground voxels pooled;
- :func:`piecewise_linear` maps each item from its own landmarks onto common ones (``np.interp``
  between them), with the ends either extended linearly or clamped.

No randomness anywhere: the same images give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from skimage.filters import threshold_otsu

from harmonia.api import ImageSet, Params
from harmonia.errors import InputError

ForegroundMethod = Literal["threshold", "otsu", "all"]
Ends = Literal["extrapolate", "clamp"]

#: items per chunk: a chunk of 128² float32 slices is 32 MiB, and a few copies of it are held at a time
CHUNK = 512


class IntensityFitParams(Params):
    """Parameters every histogram mitigation takes: which voxels count and which images it learns from."""

    foreground: ForegroundMethod = Field(
        "otsu",
        description="voxels that count for the landmarks: otsu (above each item's own Otsu threshold), threshold "
        "(above the threshold parameter, native units), all (every voxel: CT air or MRI background then dominates)",
    )
    threshold: float = Field(
        0.0,
        description="with foreground: threshold, the native-unit value a voxel must exceed to count "
        "(e.g. -500 HU for CT, to drop air; 0 for MRI background)",
    )
    fit_on: Literal["source", "source_and_target"] = Field(
        "source",
        description="source: learn from the training domain's train split only; source_and_target: also from the "
        "other domains' train splits (unlabelled; never a validation or test split)",
    )


@dataclass(frozen=True)
class Foreground:
    """Which voxels of an item count (see the module docstring)."""

    method: ForegroundMethod = "otsu"
    threshold: float = 0.0

    def masks(self, flat: np.ndarray) -> np.ndarray:
        """Boolean ``[n, P]`` mask of the items' foreground voxels, ``flat`` being ``[n, P]``; before the
        fallback to every voxel for an empty row (see :func:`item_landmarks`)."""
        if self.method == "all":
            return np.ones(flat.shape, dtype=bool)
        if self.method == "threshold":
            return flat > self.threshold
        thresholds = np.array([_otsu(row) for row in flat], dtype=flat.dtype)
        return flat > thresholds[:, None]


def _otsu(row: np.ndarray) -> float:
    """The Otsu threshold of one item; a constant item has none (its foreground is then empty, and falls back)."""
    low, high = row.min(), row.max()
    return float(high) if low == high else float(threshold_otsu(row))


@dataclass(frozen=True)
class Landmarks:
    """Per-item foreground percentiles and how the foreground was found.

    ``values`` is float64 ``[N, K]``; ``fallback`` marks the items whose foreground was empty and which
    counted every voxel instead; ``foreground_fraction`` is each item's fraction of voxels in its foreground
    (before that fallback).
    """

    values: np.ndarray
    fallback: np.ndarray
    foreground_fraction: np.ndarray

    def fit_figures(self) -> dict[str, int | float]:
        """What a fit on these items reports per cell: how many items, how many had no foreground, and the mean
        foreground fraction."""
        return {
            "fit_items": len(self.values),
            "fit_items_without_foreground": int(self.fallback.sum()),
            "foreground_fraction": float(self.foreground_fraction.mean()),
        }


def flatten_items(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``images`` ``[N, ...]`` as a numpy ``[N, P]`` array on the CPU (one row per item, no copy where possible)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.asarray(images).reshape(len(images), -1)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def _row_percentiles(sorted_rows: np.ndarray, counts: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """Percentiles of each row's first ``counts[i]`` (sorted) values, numpy's "linear" method, float64 ``[n, K]``."""
    position = (counts[:, None] - 1) * (percentiles[None] / 100.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, counts[:, None] - 1)
    weight = position - low
    below = np.take_along_axis(sorted_rows, low, axis=1).astype(np.float64)
    above = np.take_along_axis(sorted_rows, high, axis=1).astype(np.float64)
    return below + weight * (above - below)


def item_landmarks(
    images: torch.Tensor | np.ndarray, percentiles: Sequence[float], foreground: Foreground
) -> Landmarks:
    """Each item's foreground percentiles (numpy's definition), with the fallback of an empty foreground to every voxel."""
    flat = flatten_items(images)
    percentiles = np.asarray(percentiles, dtype=np.float64)
    values = np.empty((len(flat), len(percentiles)), dtype=np.float64)
    fallback = np.zeros(len(flat), dtype=bool)
    fraction = np.zeros(len(flat), dtype=np.float64)
    for part in _chunks(len(flat)):
        rows = flat[part]
        mask = foreground.masks(rows)
        counts = mask.sum(1)
        empty = counts == 0
        mask[empty] = True
        counts[empty] = rows.shape[1]
        fallback[part], fraction[part] = empty, np.where(empty, 0, counts) / max(rows.shape[1], 1)
        sorted_rows = np.sort(np.where(mask, rows, np.inf), axis=1)  # the foreground first, in order
        values[part] = _row_percentiles(sorted_rows, counts, percentiles)
    return Landmarks(values, fallback, fraction)


def pooled_percentiles(
    images: torch.Tensor | np.ndarray, percentiles: Sequence[float], foreground: Foreground
) -> np.ndarray:
    """Percentiles (numpy's definition, float64 ``[K]``) of every item's foreground voxels pooled into one sample.

    An item with an empty foreground contributes every voxel, as in :func:`item_landmarks`.
    """
    flat = flatten_items(images)
    pooled = []
    for part in _chunks(len(flat)):
        rows = flat[part]
        mask = foreground.masks(rows)
        mask[~mask.any(1)] = True
        pooled.append(rows[mask])
    values = np.sort(np.concatenate(pooled))  # numpy's sort of float32 beats np.percentile's partition here
    return _row_percentiles(values[None], np.array([len(values)]), np.asarray(percentiles, dtype=np.float64))[0]


def piecewise_linear(
    images: torch.Tensor,
    landmarks: np.ndarray,
    standard: np.ndarray,
    ends: Ends,
    fallback_slope: float,
) -> torch.Tensor:
    """Each item of ``images`` mapped from its own ``landmarks[i]`` (non-decreasing, ``[N, K]``) onto ``standard``.

    Between its first and last landmark an item is mapped by ``np.interp``; outside them ``ends`` decides:
    ``clamp`` sends every value below (above) to ``standard[0]`` (``standard[-1]``), ``extrapolate``
    continues the end segment's line (the nearest segment of non-zero width; an item whose landmarks are all
    equal uses ``fallback_slope``). Shape, dtype and device are kept.
    """
    flat = flatten_items(images)
    out = np.empty(flat.shape, dtype=np.float64 if flat.dtype == np.float64 else np.float32)
    standard = np.asarray(standard, dtype=np.float64)
    low_slope, high_slope = _end_slopes(landmarks, standard, fallback_slope)
    for i, row in enumerate(flat):
        out[i] = np.interp(row, landmarks[i], standard)  # clamps at the ends
    if ends == "extrapolate":
        for part in _chunks(len(flat)):
            rows, first, last = flat[part], landmarks[part, :1], landmarks[part, -1:]
            below = rows < first
            out[part][below] = (standard[0] + (rows - first) * low_slope[part, None])[below]
            above = rows > last
            out[part][above] = (standard[-1] + (rows - last) * high_slope[part, None])[above]
    result = torch.from_numpy(out.reshape(images.shape))
    return result.to(device=images.device, dtype=images.dtype)


def _end_slopes(landmarks: np.ndarray, standard: np.ndarray, fallback_slope: float) -> tuple[np.ndarray, np.ndarray]:
    """Each item's slope below its first landmark and above its last: that of the nearest segment of non-zero width."""
    widths = np.diff(landmarks, axis=1)
    rises = np.diff(standard)[None]
    slopes = np.divide(rises, widths, out=np.zeros_like(widths), where=widths > 0)
    usable = widths > 0
    first = usable.argmax(1)
    last = widths.shape[1] - 1 - usable[:, ::-1].argmax(1)
    rows = np.arange(len(landmarks))
    none = ~usable.any(1)
    low, high = slopes[rows, first], slopes[rows, last]
    low[none] = high[none] = fallback_slope
    return low, high


def fit_images(name: str, params: IntensityFitParams, train: ImageSet, target_train: ImageSet | None) -> torch.Tensor:
    """The images a histogram mitigation learns from: ``train``'s, plus ``target_train``'s with ``fit_on:
    source_and_target`` (an InputError naming ``name`` when there are none: a one-domain cohort)."""
    if params.fit_on == "source":
        return train.images
    if target_train is None or len(target_train) == 0:
        raise InputError(
            f"{name}: fit_on source_and_target needs target-domain training images, but the cohort has no other "
            f"domain with training data; use fit_on: source"
        )
    return torch.cat([train.images, target_train.images])


#: a broad CT window in HU, air to dense bone: keeps lung, soft tissue and bone apart on one scale
BROAD_CT_WINDOW = (-1000.0, 1000.0)


def window_to_unit(images: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Native intensities (e.g. HU) clipped to ``window`` (low, high) and scaled linearly to [0, 1], as float."""
    low, high = window
    return (images.float().clamp(low, high) - low) / (high - low)
