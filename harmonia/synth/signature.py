"""The scanner signature: a typed, frozen description of one vendor's simulated acquisition.

A signature has one sub-model per component of the acquisition pipeline; each can be switched
off with ``enabled=False``, and its default values are the neutral (identity) acquisition.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: the components, in the order :func:`~harmonia.synth.acquire` applies them
COMPONENTS: tuple[str, ...] = ("contrast", "psf", "bias", "transfer", "noise")


class Component(BaseModel):
    """Base of a signature component: frozen, unknown keys are errors, switchable on its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="apply this component (False skips it entirely)")


class Contrast(Component):
    """Tissue-contrast mapping: each tissue's clean value gets its own gain and offset.

    Models the different relative tissue contrast of different sequences (TE/TR/flip angle) or
    beam qualities. Gains and offsets are drawn from ``key`` per tissue index, so a signature
    works for any number of tissues.
    """

    key: int = Field(0, ge=0, description="seed of the per-tissue draws")
    log_gain_sd: float = Field(0.0, ge=0, description="standard deviation of each tissue's log gain")
    offset_sd: float = Field(
        0.0, ge=0, description="standard deviation of each tissue's offset, as a fraction of the tissue-intensity range"
    )

    def tissue_mapping(self, n_tissues: int) -> tuple[np.ndarray, np.ndarray]:
        """Gains and offsets (fractions of the range) of tissues ``0 .. n_tissues-1``.

        Tissue ``i``'s draw depends only on ``(key, i)``, never on how many tissues there are.
        """
        z = np.array([np.random.default_rng([self.key, i]).standard_normal(2) for i in range(n_tissues)])
        z = z.reshape(n_tissues, 2)
        return np.exp(self.log_gain_sd * z[:, 0]), self.offset_sd * z[:, 1]


class Psf(Component):
    """Point-spread blur: a Gaussian of ``sigma`` pixels (lost resolution, smoother reconstruction kernel)."""

    sigma: float = Field(0.0, ge=0, description="Gaussian sigma in pixels along the finest axis")


class Noise(Component):
    """Acquisition noise: its level and its texture (spatial correlation)."""

    level: float = Field(0.0, ge=0, description="standard deviation as a fraction of the tissue-intensity range")
    correlation: float = Field(0.0, ge=0, description="correlation length (Gaussian sigma) in pixels; 0 = white")
    rician: bool = Field(False, description="magnitude (Rician) noise as in MRI; Gaussian otherwise (CT, X-ray)")


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
