"""gaussian_noise: additive Gaussian noise on training batches (Guo et al., Appendix A.2).

Each training image x becomes x + α·ε with ε ~ N(0, I), the paper's test of whether noise alone
makes a model robust to another scanner (it found it does not). Only training batches are noised
(the ``augment_batch`` stage): validation and test images reach the model unchanged, since this
mitigation has no ``transform_images``.

Where the noise goes (``space``):

- ``native`` (the default, the paper's setting): α is in the modality's native units (HU for CT)
  and the noise is added *before* the engine's per-image z-score, which then rescales it: an
  image of native standard deviation σ carries noise of about α / √(σ² + α²) in z-scored units;
- ``normalized``: α is in z-scored units and the noise is added *after* the z-score, so the
  image the model sees has standard deviation √(1 + α²).

With ``probability`` p < 1 each image of a batch is noised with probability p (independently),
the others pass unchanged. All draws come from torch's global random number generator (on the
batch's device), which the engine seeds per cell; ``alpha: 0`` or ``probability: 0`` draw nothing,
so such a cell is the baseline bit for bit. Targets are never changed.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Mitigation, Params, Task


class GaussianNoiseParams(Params):
    alpha: float = Field(
        ...,
        ge=0.0,
        le=100_000.0,
        description="standard deviation α of the added noise, in the units of space (native: e.g. HU for CT; "
        "normalized: z-scored units); the paper's grid is 1, 2, 3, 4, 5, 7, 10, 15, 30, 50 (native)",
    )
    space: Literal["native", "normalized"] = Field(
        "native",
        description="native: add the noise before the per-image z-score, α in the modality's own units; "
        "normalized: add it after, α in z-scored units",
    )
    probability: float = Field(
        1.0, ge=0.0, le=1.0, description="chance that each training image gets noise (1: every image)"
    )


class GaussianNoise(Mitigation):
    """Additive Gaussian noise (α·ε, ε ~ N(0, I)) on training batches only, in native or z-scored units.

    Acts at the ``augment_batch`` stage, in ``batch_space`` = the ``space`` parameter; never on
    validation or test images. See the module docstring for how ``space`` changes what α means.
    """

    name = "gaussian_noise"
    Params = GaussianNoiseParams

    def __init__(self, params: GaussianNoiseParams, task: Task):
        super().__init__(params, task)
        self.batch_space = params.space

    @classmethod
    def is_inactive(cls, params: GaussianNoiseParams) -> bool:
        """No noise at all (α 0 or probability 0): the sweep point is the plain model, a noise sweep's baseline."""
        return params.alpha == 0.0 or params.probability == 0.0

    def augment_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` plus α·ε on each image chosen with ``probability``; dtype, device and memory format kept."""
        alpha, probability = self.params.alpha, self.params.probability
        if alpha == 0.0 or probability == 0.0 or images.numel() == 0:
            return images, targets
        noise = torch.randn_like(images)  # same dtype, device and memory format as the batch
        if probability < 1.0:
            chosen = torch.rand(len(images), device=images.device) < probability
            scale = chosen.to(images.dtype).mul_(alpha).view(-1, *([1] * (images.ndim - 1)))
            noise.mul_(scale)
        else:
            noise.mul_(alpha)
        return images + noise, targets


@hookimpl
def harmonia_mitigations():
    return [GaussianNoise]
