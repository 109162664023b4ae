"""mrnet2d: an MRNet-style classifier (Bien et al., PLoS Med 2018) of 2-D images and of 3-D items slice by slice.

Each slice goes through torchvision's AlexNet convolution stack (``torchvision.models.alexnet().features``,
its first convolution replaced by one of the same geometry for the cohort's channels), then global
average pooling: one vector per slice. A 2-D image is one slice. A 3-D item ``[N, C, D, H, W]`` is
cut into its D slices along the first spatial axis, each slice is encoded alone, and the D vectors
are pooled into one (``slice_pooling``; MRNet takes the maximum). A linear head (after optional
dropout) gives the logits.

What is MRNet's and what is harmonia's:

- MRNet: the AlexNet stack, global average pooling per slice, the maximum over slices, one linear
  layer. MRNet starts from ImageNet weights; this plugin starts from random weights (it loads none).
- Guo et al. call their 2-D adaptation "MRNet2D" without detail; here a 2-D image is a 1-slice item,
  so the 2-D path is the 3-D one with D = 1.
- harmonia's: the logits are ``num_classes`` wide (MRNet's one sigmoid output becomes a softmax head),
  ``width`` (scaled channel counts), ``dropout`` and the resizing of small slices below.

Small slices. AlexNet's stack (an 11x11 stride-4 convolution and three 3x3 stride-2 max-pools)
leaves nothing for its last pool below 63x63 pixels: a 47x47 crop fails there. Slices whose
shorter side is under ``min_side`` are therefore resized up (bilinear, both sides by one factor, so
the aspect ratio is kept) until the shorter side is ``min_side``; larger slices pass untouched. This
was chosen over making the pools adaptive (or ``ceil_mode``) because it keeps AlexNet's layers as
they are, so the stack stays the one MRNet used, whatever the cohort; the price is that a small crop
is seen through interpolated pixels.

``features`` is the pooled vector (after slice pooling, before dropout and head), ``[N, feature_channels]``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import Model, ModelOutput, Params, Task
from harmonia.errors import InputError

#: the smallest square input AlexNet's convolution stack turns into a non-empty map
ALEXNET_MIN_SIDE = 63


class MRNet2DParams(Params):
    slice_pooling: Literal["max", "mean"] = Field(
        "max", description="how the slice vectors of a 3-D item become one (MRNet: max); unused for 2-D images"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability before the linear head")
    width: float = Field(
        1.0,
        gt=0.0,
        le=4.0,
        description="multiplier of AlexNet's channel counts (64, 192, 384, 256, 256); 1 is AlexNet's own",
    )
    min_side: int = Field(
        64,
        ge=ALEXNET_MIN_SIDE,
        le=1024,
        description=f"slices whose shorter side is smaller are resized up (bilinear) to it; AlexNet's stack "
        f"needs at least {ALEXNET_MIN_SIDE}",
    )


class MRNet2D(Model):
    """MRNet-style classifier: AlexNet features per slice, pooled over slices (3-D items), a linear head."""

    name = "mrnet2d"
    Params = MRNet2DParams
    tasks = ("classification",)
    image_dims = (2, 3)

    def __init__(self, params: MRNet2DParams, task: Task):
        super().__init__(params, task)
        if task.kind not in self.tasks:
            raise InputError(f"mrnet2d does classification only; this cohort's task is {task.kind}")
        if task.spatial_dims not in self.image_dims:
            raise InputError(f"mrnet2d needs 2-D images or 3-D items; this cohort's are {task.spatial_dims}-D")
        self.encoder, channels = alexnet_stack(task.in_channels, params.width)
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(channels, task.num_classes)
        self.feature_channels = channels

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Slices ``[M, C, H, W]`` -> one vector per slice ``[M, feature_channels]`` (resized up when small)."""
        h, w = x.shape[-2:]
        if min(h, w) < self.params.min_side:
            scale = self.params.min_side / min(h, w)
            size = (max(self.params.min_side, round(h * scale)), max(self.params.min_side, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.flatten(F.adaptive_avg_pool2d(self.encoder(x), 1), 1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        rank = self.task.spatial_dims + 2
        if x.ndim != rank:
            expected = "[N, C, H, W]" if rank == 4 else "[N, C, D, H, W]"
            raise ValueError(
                f"mrnet2d for {self.task.spatial_dims}-D items expects {expected}, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.task.in_channels:
            raise ValueError(f"mrnet2d expects {self.task.in_channels} input channel(s), got shape {tuple(x.shape)}")
        if rank == 4:
            features = self.encode_slices(x)
        else:
            n, c, d = x.shape[:3]
            slices = x.transpose(1, 2).reshape(n * d, c, *x.shape[3:])  # item-major: item 0's D slices first
            per_slice = self.encode_slices(slices).reshape(n, d, -1)
            features = per_slice.amax(1) if self.params.slice_pooling == "max" else per_slice.mean(1)
        return ModelOutput(logits=self.head(self.dropout(features)), features=features)


def alexnet_stack(in_channels: int, width: float) -> tuple[nn.Sequential, int]:
    """torchvision's AlexNet ``features`` for ``in_channels`` inputs with every channel count times ``width``,
    and its output channels. Convolutions keep AlexNet's geometry; each one whose channels change is replaced.

    AlexNet is built on the meta device and only its convolution stack is materialised: its classifier
    (58M parameters, unused here) would cost a quarter of a gigabyte and half a second to initialise. The
    convolutions are then initialised as torchvision leaves them (PyTorch's default), in layer order.
    """
    import torchvision  # imported on use: seconds that building the plugin registry need not pay

    with torch.device("meta"):
        stack = torchvision.models.alexnet(weights=None).features
        c_in = in_channels
        for i, layer in enumerate(stack):
            if isinstance(layer, nn.Conv2d):
                c_out = max(1, math.floor(layer.out_channels * width + 0.5))
                if (c_in, c_out) != (layer.in_channels, layer.out_channels):
                    stack[i] = nn.Conv2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding)
                c_in = c_out
    stack = stack.to_empty(device="cpu")
    for layer in stack:
        if isinstance(layer, nn.Conv2d):
            layer.reset_parameters()
    return stack, c_in


@hookimpl
def harmonia_models():
    return [MRNet2D]
