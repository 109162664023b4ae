"""Simulated CT acquisition differences: a reference-reconstruction slice made noisier, softer or sharper, coarser.

Seed 003 trained its standardizer on paired reconstructions. Without pairs, Real-ESRGAN's "pure
synthetic data" idea applies: degrade reference-domain slices by a random, physically motivated
acquisition and learn to undo it. :func:`degrade` does, in order:

1. *dose*: HU to linear attenuation, μ = μ_water (1 + HU / 1000) (clipped at 0), forward projection
   (:func:`skimage.transform.radon`) to line integrals p (in mm⁻¹ · mm), Poisson counts
   N ~ Poisson(N₀ e^(−p)) for ``photons`` N₀ incident per ray (counts below 1 set to 1), p̂ = −ln(N / N₀);
2. *kernel*: filtered back projection of p̂ (:func:`skimage.transform.iradon`) with one of iradon's
   filters, ``ramp`` the sharpest, ``hann`` the smoothest, then an optional unsharp mask in image space
   (a sharper vendor kernel than ramp);
3. *resolution*: Gaussian blur and a downsample-upsample round trip.

Each setting is a range (low, high); every slice draws its own values from them, so a range with equal
ends fixes a value. Draws and noise come from the ``rng`` passed in, so a seed gives the same output.
The slice is padded with air to a square and projected with ``circle=False`` (skimage pads it further to
its diagonal), so anatomy in the corners is projected too; the reconstruction is cropped back to the
input's shape. Values below −1000 HU (outside the field of view) come back as air, about −1000 HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from scipy import ndimage
from skimage.transform import iradon, radon, resize

from harmonia.strict import StrictModel

FilterName = Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"]
#: linear attenuation of water in mm⁻¹ at about 70 keV, a typical effective energy of a 120 kVp spectrum
MU_WATER_PER_MM = 0.0193
Range = tuple[float, float]


class DegradeSettings(StrictModel):
    """Ranges each degraded slice draws its acquisition from; (a, a) fixes a value."""

    photons: Range = Field(
        (1e4, 1e6), description="incident photons per ray (a detector bin one pixel wide), drawn log-uniformly"
    )
    filters: tuple[FilterName, ...] = Field(
        ("ramp", "shepp-logan", "cosine", "hamming", "hann"),
        min_length=1,
        description="filtered back projection filters, one drawn uniformly per slice (ramp sharpest, hann smoothest)",
    )
    sharpen: Range = Field((0.0, 0.0), description="unsharp-mask amount in image space (Gaussian sd 1 pixel); 0: none")
    blur_sigma: Range = Field((0.0, 1.0), description="Gaussian blur sd in pixels; 0: none")
    downsample: Range = Field((1.0, 1.5), description="downsample-upsample factor (1: none, 2: half the pixels)")
    pixel_mm: float = Field(3.0, gt=0, le=10, description="in-plane pixel size of the slices in mm")
    views: int | None = Field(
        None, ge=8, description="projection angles over 180 degrees; none: ceil(π/2 · side), enough for the grid"
    )
    mu_water: float = Field(MU_WATER_PER_MM, gt=0, description="linear attenuation of water in mm⁻¹")

    @model_validator(mode="after")
    def _valid_ranges(self) -> DegradeSettings:
        lowest = {"photons": 1.0, "sharpen": 0.0, "blur_sigma": 0.0, "downsample": 1.0}
        for name, floor in lowest.items():
            low, high = getattr(self, name)
            if not floor <= low <= high:
                raise ValueError(f"{name} must be (low, high) with {floor} <= low <= high, got ({low}, {high})")
        return self


@dataclass(frozen=True)
class Acquisition:
    """One slice's drawn degradation: its dose, filter, image-space sharpening and resolution loss."""

    photons: float
    filter_name: FilterName
    sharpen: float
    blur_sigma: float
    downsample: float


def draw(settings: DegradeSettings, rng: np.random.Generator) -> Acquisition:
    """One acquisition drawn from ``settings``' ranges (photons log-uniformly, the rest uniformly)."""
    low, high = np.log(settings.photons)
    return Acquisition(
        photons=float(np.exp(rng.uniform(low, high))),
        filter_name=settings.filters[int(rng.integers(len(settings.filters)))],
        sharpen=float(rng.uniform(*settings.sharpen)),
        blur_sigma=float(rng.uniform(*settings.blur_sigma)),
        downsample=float(rng.uniform(*settings.downsample)),
    )


def degrade(slice_hu: np.ndarray, settings: DegradeSettings, rng: np.random.Generator) -> np.ndarray:
    """A degraded copy (float32, same shape) of one 2-D slice in HU, with an acquisition drawn from ``rng``."""
    return apply(slice_hu, draw(settings, rng), settings, rng)


def apply(
    slice_hu: np.ndarray, acquisition: Acquisition, settings: DegradeSettings, rng: np.random.Generator
) -> np.ndarray:
    """``slice_hu`` through ``acquisition``: noisy projections, filtered back projection, sharpening, blur."""
    slice_hu = np.asarray(slice_hu, dtype=float)
    if slice_hu.ndim != 2:
        raise ValueError(f"degrade takes one 2-D slice, got shape {slice_hu.shape}")
    image = reconstruct(slice_hu, acquisition, settings, rng)
    if acquisition.sharpen:
        image = image + acquisition.sharpen * (image - ndimage.gaussian_filter(image, 1.0))
    if acquisition.blur_sigma:
        image = ndimage.gaussian_filter(image, acquisition.blur_sigma)
    if acquisition.downsample > 1:
        coarse = [max(1, round(side / acquisition.downsample)) for side in image.shape]
        image = resize(resize(image, coarse, order=1, anti_aliasing=True), image.shape, order=1)
    return image.astype(np.float32)


def reconstruct(
    slice_hu: np.ndarray, acquisition: Acquisition, settings: DegradeSettings, rng: np.random.Generator
) -> np.ndarray:
    """The slice in HU after projection with Poisson noise at ``acquisition.photons`` and filtered back projection."""
    mu = np.clip(settings.mu_water * (1 + slice_hu / 1000), 0, None)
    square, crop = _pad_square(mu)
    side = square.shape[0]
    views = settings.views or math.ceil(math.pi / 2 * side)
    theta = np.linspace(0.0, 180.0, views, endpoint=False)
    line_integrals = radon(square, theta, circle=False) * settings.pixel_mm
    counts = rng.poisson(acquisition.photons * np.exp(-line_integrals))
    noisy = -np.log(np.maximum(counts, 1) / acquisition.photons)
    mu_hat = iradon(
        noisy / settings.pixel_mm, theta, output_size=side, filter_name=acquisition.filter_name, circle=False
    )
    return 1000 * (mu_hat[crop] / settings.mu_water - 1)


def _pad_square(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``image`` padded with zeros (air) to a centred square, and the slices that crop it back."""
    side = max(image.shape)
    before = [(side - n) // 2 for n in image.shape]
    padding = [(b, side - n - b) for b, n in zip(before, image.shape)]
    crop = tuple(slice(b, b + n) for b, n in zip(before, image.shape))
    return np.pad(image, padding), crop


def degrade_batch(images: torch.Tensor, settings: DegradeSettings, rng: np.random.Generator) -> torch.Tensor:
    """:func:`degrade` of every slice of ``images`` ``[N, 1, H, W]`` in HU, each with its own draw, in order."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"degrade_batch takes slices [N, 1, H, W], got shape {tuple(images.shape)}")
    slices = images.detach().cpu().double().numpy()[:, 0]
    degraded = np.stack([degrade(s, settings, rng) for s in slices]) if len(slices) else slices.astype(np.float32)
    return torch.from_numpy(degraded)[:, None].to(device=images.device, dtype=images.dtype)
