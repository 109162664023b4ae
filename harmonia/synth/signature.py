"""The scanner signature: a typed, frozen description of one vendor's simulated acquisition.

A signature has one sub-model per component of the acquisition pipeline; each can be switched
off with ``enabled=False``, and its default values are the neutral (identity) acquisition.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# the component names are the recipe's vocabulary (``cohort.synthetic.components``): they live with
# TwinSettings in the core's ground floor, and the simulator applies them in that order
from harmonia.api import COMPONENTS


class Component(BaseModel):
    """Base of a signature component: frozen, unknown keys are errors, switchable on its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="apply this component (False skips it entirely)")


class Contrast(Component):
    """Vendor contrast that keeps tissue order: a random monotone remap of the clean tissue-intensity scale.

    Vendors run the same sequence (or beam quality) with different TE/TR/flip angle, readout and
    calibration, which stretches the contrast between some tissues and compresses it between
    others, but never makes a darker tissue brighter: bSSFP blood is brighter than myocardium on
    every scanner, CT numbers are calibrated to water and air. The remap cuts the tissue-intensity
    range into :attr:`SEGMENTS` equal parts, gives each a slope ``exp(log_slope_sd * z)`` with
    ``z`` drawn from ``key``, and rescales so both ends of the range stay put; the map is
    piecewise linear and strictly increasing, so it cannot reorder tissues, and it does not depend
    on how many tissues there are.
    """

    SEGMENTS: ClassVar[int] = 6

    key: int = Field(0, ge=0, description="seed of the segment slopes")
    log_slope_sd: float = Field(0.0, ge=0, description="standard deviation of each segment's log slope")

    def remap(self, u: np.ndarray) -> np.ndarray:
        """``u`` (clean values as fractions 0..1 of the tissue-intensity range) after the monotone remap."""
        slopes = np.exp(self.log_slope_sd * np.random.default_rng(self.key).standard_normal(self.SEGMENTS))
        knots = np.linspace(0.0, 1.0, self.SEGMENTS + 1)
        return np.interp(u, knots, np.r_[0.0, np.cumsum(slopes)] / slopes.sum())


class Psf(Component):
    """Point-spread function: Gaussian blur (lost resolution, smoother reconstruction kernel) and, for MRI,
    the k-space truncation of a smaller acquisition matrix, which blurs and rings (Gibbs) at edges."""

    sigma: float = Field(0.0, ge=0, description="Gaussian sigma in pixels along the finest axis")
    kspace: float = Field(
        1.0, gt=0, le=1, description="fraction of k-space kept along the finest axes, sharp cut-off (1 = all)"
    )


class Noise(Component):
    """Acquisition noise: its level and its texture (spatial correlation)."""

    level: float = Field(0.0, ge=0, description="standard deviation as a fraction of the tissue-intensity range")
    correlation: float = Field(0.0, ge=0, description="correlation length (Gaussian sigma) in pixels; 0 = white")
    rician: bool = Field(False, description="magnitude (Rician) noise as in MRI; Gaussian otherwise (CT, X-ray)")
    variation: float = Field(
        0.0, ge=0, lt=1, description="smooth spatial variation of the level, +- fraction (parallel-imaging g-factor)"
    )


class Bias(Component):
    """Smooth multiplicative bias field (coil sensitivity, heel effect), drawn per image."""

    amplitude: float = Field(0.0, ge=0, lt=1, description="peak relative gain change, e.g. 0.2 = +-20%")
    smoothness: float = Field(0.5, gt=0, description="distance between independent values, as a fraction of the FOV")


class Transfer(Component):
    """Monotone intensity transfer (a "style" change): ``lo + range * (gain * u**gamma + offset)``.

    ``u = (x - lo) / range`` is the value relative to the clean tissue intensities' minimum
    ``lo`` and range; the power is sign-preserving so the map stays monotone for any input.
    """

    gamma: float = Field(1.0, gt=0, description="exponent of the transfer curve (1 = linear)")
    gain: float = Field(1.0, gt=0, description="slope of the transfer curve")
    offset: float = Field(0.0, description="shift, as a fraction of the tissue-intensity range")


class ScannerSignature(BaseModel):
    """One vendor's simulated acquisition; the defaults are the neutral, noise-free identity.

    Make one with :func:`~harmonia.synth.signature_for`, apply it with :func:`~harmonia.synth.acquire`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    contrast: Contrast = Contrast()
    psf: Psf = Psf()
    noise: Noise = Noise()
    bias: Bias = Bias()
    transfer: Transfer = Transfer()

    def only(self, *components: str) -> ScannerSignature:
        """A copy with every component not named in ``components`` switched off."""
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown signature component(s) {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
        return self.model_copy(
            update={name: getattr(self, name).model_copy(update={"enabled": name in components}) for name in COMPONENTS}
        )
