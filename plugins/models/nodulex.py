"""nodulex: a NoduleX-style classifier of 3-D crops (Causey et al., Sci Rep 2018), by default 2.5-D.

What follows NoduleX. Its released code (github.com/jcausey-astate/NoduleX_code, ``keras_CNN/``)
trains a Keras *2-D* CNN on crops of 5 CT slices (47x47 in its README's example, model ``CNN47``),
the slices given as the input channels (``img_channels = 5``, input shape ``(5, rows, cols)``),
built from ``Convolution2D``, ``MaxPooling2D``, ``Dropout`` and ``Dense`` layers, two classes and
categorical cross-entropy. The default ``variant: 2.5d`` does the same: a crop ``[N, 1, D, H, W]``
becomes a 2-D image of D channels.

What is harmonia's choice. The exact layer stack ships only as a JSON file inside NoduleX's data
archive (``data/CNN_models/CNN47.json``), which was not available. Its training script is
visibly adapted from Keras's ``cifar10_cnn`` example, so the blocks follow that example's pattern:
each block is ``convs_per_block`` 3x3 convolutions with ReLU, a 2x2 max-pool and dropout
(``block_dropout``, 0.25 there), then a dense layer with ReLU and dropout (``dropout``, 0.5 there)
and the output layer. Beyond that, harmonia's own: the block widths (``channels``: the example's 32
and 64 and a third block of 128, for a wider view of a 47x47 crop); "same" padding
everywhere and max-pools that round up (``ceil_mode``), so no crop size shrinks to nothing (16^3,
5x47x47 and 72^3 all work); and a global average pool in place of Keras's ``Flatten``, so one model
fits any crop size and the dense layer does not grow with it.

``variant: 3d`` is harmonia's own, not the paper's: the same blocks with 3-D convolutions and
pools over the whole crop (one input channel per image channel; pools round up, so 5 slices
become 3, 2, 1).

The 2.5-D variant fixes its input channels when it is built: the number of slices is
``slices`` if given, else the cohort's item depth (``task.item_shape[0]``); a crop of another
depth is a ValueError that says which parameter to set.

``features`` is the dense layer's output (after ReLU, before dropout and the output layer), ``[N, hidden]``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import Model, ModelOutput, Params, Task
from harmonia.errors import InputError


class NoduleXParams(Params):
    variant: Literal["2.5d", "3d"] = Field(
        "2.5d",
        description="2.5d: a 2-D CNN taking the crop's slices as channels (NoduleX's code); "
        "3d: 3-D convolutions (harmonia's own variant)",
    )
    slices: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="slices per crop, the 2.5d variant's input channels; default: the cohort's item depth",
    )
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [32, 64, 128], min_length=1, max_length=8, description="output channels of each conv block, first to last"
    )
    convs_per_block: int = Field(2, ge=1, le=4, description="3x3 convolutions (with ReLU) per block")
    block_dropout: float = Field(0.25, ge=0.0, lt=1.0, description="dropout probability after each block's pool")
    hidden: int = Field(512, ge=1, le=8192, description="width of the dense layer, whose output is the features")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout probability before the output layer")


class NoduleX(Model):
    """NoduleX-style crop classifier: conv/pool/dropout blocks and a dense layer; slices as channels (2.5d) or 3-D."""

    name = "nodulex"
    Params = NoduleXParams
    tasks = ("classification",)
    image_dims = (3,)

    def __init__(self, params: NoduleXParams, task: Task):
        super().__init__(params, task)
        if task.kind not in self.tasks:
            raise InputError(f"nodulex does classification only; this cohort's task is {task.kind}")
        if task.spatial_dims not in self.image_dims:
            raise InputError(
                f"nodulex needs 3-D crops; this cohort's images are {task.spatial_dims}-D (use mrnet2d for 2-D images)"
            )
        depth = task.item_shape[0] if task.item_shape else None
        if params.variant == "2.5d":
            if params.slices is None and depth is None:
                raise InputError(
                    "nodulex (variant 2.5d) takes a crop's slices as channels, but the task gives no item shape; "
                    "set the model parameter slices"
                )
            if params.slices is not None and depth is not None and params.slices != depth:
                raise InputError(
                    f"nodulex: parameter slices is {params.slices} but this cohort's crops have {depth} slices; "
                    f"set slices to {depth} or leave it out"
                )
            self.slices: int | None = params.slices or depth
            conv, pool, in_channels = nn.Conv2d, nn.MaxPool2d, task.in_channels * self.slices
        else:
            self.slices = None
            conv, pool, in_channels = nn.Conv3d, nn.MaxPool3d, task.in_channels
        layers: list[nn.Module] = []
        for c_out in params.channels:
            for _ in range(params.convs_per_block):
                layers += [conv(in_channels, c_out, 3, padding=1), nn.ReLU()]
                in_channels = c_out
            layers += [pool(2, ceil_mode=True), nn.Dropout(params.block_dropout)]
        self.encoder = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(in_channels, params.hidden), nn.ReLU())
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.hidden, task.num_classes)
        self.feature_channels = params.hidden

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if x.ndim != 5:
            raise ValueError(f"nodulex expects crops [N, C, D, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.task.in_channels:
            raise ValueError(f"nodulex expects {self.task.in_channels} input channel(s), got shape {tuple(x.shape)}")
        if self.slices is not None:
            if x.shape[2] != self.slices:
                raise ValueError(
                    f"nodulex (variant 2.5d) was built for crops of {self.slices} slices (its input channels) but "
                    f"got {x.shape[2]} (shape {tuple(x.shape)}); set the model parameter slices to {x.shape[2]}"
                )
            x = x.flatten(1, 2)  # [N, C, D, H, W] -> [N, C*D, H, W]: the slices become channels
        pooled = self.encoder(x).flatten(2).mean(2)
        features = self.dense(pooled)
        return ModelOutput(logits=self.head(self.dropout(features)), features=features)


@hookimpl
def harmonia_models():
    return [NoduleX]
