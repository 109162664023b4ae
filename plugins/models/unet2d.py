"""unet2d: MONAI's 2-D residual U-Net for segmentation, exposing its bottleneck as the features
and every encoder level as ``ModelOutput.levels``.

The network is ``monai.networks.nets.UNet`` unchanged, held as ``net`` (MONAI weights load into it). The
encoder levels are the outputs of MONAI's down layers (the layer before each ``SkipConnection``)
and, last, of its bottom layer, the submodule of the innermost ``SkipConnection``: the bottleneck.
They are captured by forward hooks that live only for one call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import Field, model_validator

from harmonia import hookimpl
from harmonia.api import Model, ModelOutput, Params, Task
from harmonia.errors import InputError

if TYPE_CHECKING:
    from monai.networks.nets import UNet


class UNet2DParams(Params):
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        [16, 32, 64, 128],
        min_length=2,
        description="feature channels per level, shallowest first; the last is the bottleneck",
    )
    strides: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="downsampling stride between consecutive levels (len(channels) - 1 values); default 2 each"
    )
    num_res_units: int = Field(2, ge=0, le=8, description="residual units per block (0: plain convolutions)")
    norm: Literal["instance", "batch"] = Field("instance", description="normalisation layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in every block")

    @model_validator(mode="after")
    def _strides_match_levels(self) -> UNet2DParams:
        if self.strides is not None and len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} values, got {len(self.strides)}"
            )
        return self


class UNet2D(Model):
    """2-D residual U-Net (MONAI) for segmentation; features are its bottleneck, levels its encoder levels."""

    name = "unet2d"
    Params = UNet2DParams
    tasks = ("segmentation",)
    image_dims = (2,)

    def __init__(self, params: UNet2DParams, task: Task):
        super().__init__(params, task)
        if task.kind not in self.tasks:
            raise InputError(f"unet2d does segmentation only; this cohort's task is {task.kind}")
        if task.spatial_dims != 2:
            raise InputError(f"unet2d needs 2-D images; this cohort's images are {task.spatial_dims}-D")
        from monai.networks.nets import UNet  # imported on use: MONAI takes seconds to import, listing plugins none

        self.strides = tuple(params.strides or [2] * (len(params.channels) - 1))
        self.net = UNet(
            spatial_dims=2,
            in_channels=task.in_channels,
            out_channels=task.num_classes,
            channels=tuple(params.channels),
            strides=self.strides,
            num_res_units=params.num_res_units,
            norm=params.norm,
            dropout=params.dropout,
        )
        #: the encoder levels' layer names inside ``net``, shallowest first, the bottom layer last
        #: (names, not the modules, so that they are not registered twice)
        self.level_names = (*_down_layer_names(self.net), _bottom_layer_name(self.net))
        self.bottleneck_name = self.level_names[-1]
        self.feature_channels = params.channels[-1]
        self.level_channels = tuple(params.channels)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the product of the strides)."""
        return math.prod(self.strides)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if x.ndim != 4:
            raise ValueError(f"unet2d expects images [N, C, H, W], got shape {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"unet2d with strides {list(self.strides)} needs height and width divisible by {m}, got "
                f"{x.shape[-2]}x{x.shape[-1]}; crop or pad the images (e.g. to "
                f"{math.ceil(x.shape[-2] / m) * m}x{math.ceil(x.shape[-1] / m) * m})"
            )
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self.net.get_submodule(name).register_forward_hook(_capture_into(captured, name))
            for name in self.level_names
        ]
        try:
            logits = self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        levels = tuple(captured[name] for name in self.level_names)
        return ModelOutput(logits=logits, features=levels[-1], levels=levels)


def _capture_into(captured: dict[str, torch.Tensor], name: str):
    """A forward hook that stores its module's output in ``captured[name]``."""

    def hook(module, args, out):
        captured[name] = out

    return hook


def _down_layer_names(net: UNet) -> list[str]:
    """Names of MONAI's down layers, shallowest first: each ``SkipConnection``'s predecessor in its Sequential."""
    from monai.networks.layers import SkipConnection

    names = []
    for name, m in net.named_modules():
        if isinstance(m, SkipConnection):
            parent, index = name.rsplit(".", 1)
            names.append(f"{parent}.{int(index) - 1}")
    return names


def _bottom_layer_name(net: UNet) -> str:
    """Name of the innermost SkipConnection's submodule: MONAI's bottom (bottleneck) layer."""
    from monai.networks.layers import SkipConnection

    innermost = [
        name
        for name, m in net.named_modules()
        if isinstance(m, SkipConnection) and not any(isinstance(s, SkipConnection) for s in m.submodule.modules())
    ]
    if len(innermost) != 1:
        raise RuntimeError(f"unexpected MONAI UNet layout: {len(innermost)} innermost skip connections")
    return f"{innermost[0]}.submodule"


@hookimpl
def harmonia_models():
    return [UNet2D]
