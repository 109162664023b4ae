"""Throw-away third-party mitigations for the leaderboard's tests: one that fits any cohort, and one each that a
leaderboard must leave out (CT only, a required parameter, 3-D only, a no-op with its defaults)."""

from __future__ import annotations

import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Mitigation, Params, Task


class GainParams(Params):
    spread: float = Field(0.2, ge=0.0, lt=1.0, description="each training image is scaled by 1 ± up to this")


class BatchGain(Mitigation):
    """Scales each z-scored training image by a random gain: a stand-in for a third-party augmentation."""

    name = "batch_gain"
    Params = GainParams

    @classmethod
    def is_inactive(cls, params: GainParams) -> bool:
        return params.spread == 0.0

    def augment_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(images),) + (1,) * (images.ndim - 1)
        gain = 1.0 + self.params.spread * (2 * torch.rand(shape, device=images.device) - 1)
        return images * gain, targets


class CtWindow(Mitigation):
    """Made for CT only (it declares so)."""

    name = "ct_window"
    modalities = ("CT",)


class LevelParams(Params):
    level: float = Field(..., description="no default: a recipe must give it")


class NeedsLevel(Mitigation):
    """Has a required parameter, so it cannot run with its defaults."""

    name = "needs_level"
    Params = LevelParams


class VolumesOnly(Mitigation):
    """Refuses 2-D items when made, as ct_standardizer refuses 3-D ones."""

    name = "volumes_only"

    def __init__(self, params: Params, task: Task):
        super().__init__(params, task)
        if task.spatial_dims != 3:
            raise ValueError(f"volumes_only needs 3-D items; this cohort gives {task.spatial_dims}-D items")


class Idle(BatchGain):
    """Does nothing with its defaults (a spread of 0)."""

    name = "idle_gain"

    class Params(GainParams):
        spread: float = Field(0.0, ge=0.0, lt=1.0, description="no gain unless a recipe gives one")


@hookimpl
def harmonia_mitigations():
    return [BatchGain, CtWindow, NeedsLevel, VolumesOnly, Idle]
