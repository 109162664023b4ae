"""densenet121: torchvision's DenseNet-121 (Huang et al., CVPR 2017) for one-channel 2-D images, optionally
started from a local ImageNet state dict.

The network is ``torchvision.models.densenet121(weights=None, num_classes=...)`` with its first
convolution (``features.conv0``) replaced by one of the same geometry for the cohort's channels;
it is held as ``net``. ``features`` is what torchvision's classifier receives: the last dense
block's map after ReLU and global average pooling, ``[N, 1024]``.

ImageNet weights come only from a file the user gives (``weights``); nothing is downloaded. The
file is a state dict in torchvision's ``densenet121`` key layout, read with
``torch.load(..., weights_only=True)``; the old key names of torchvision's hub files
(``denselayer1.norm.1.weight`` for ``denselayer1.norm1.weight``) are accepted too, and so are files
saved before BatchNorm counted its batches (no ``num_batches_tracked``). For one-channel
images the first convolution starts from the sum of the file's kernels over its three RGB inputs
(for a grey image copied into R, G and B, the ImageNet network would compute the same); for
three-channel images it takes them as they are. The classifier is taken from the file only where
its shape fits (it never does for a 2-class task: 1000 ImageNet classes), and is otherwise left
freshly initialised. :attr:`DenseNet121.weights_source` says where the starting weights came from.

DenseNet-121 halves the image five times: height and width must be at least 29 pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import Model, ModelOutput, Params, Task
from harmonia.errors import InputError, one_line

#: the smallest height and width DenseNet-121's five downsamplings leave a non-empty map for
MIN_SIDE = 29
HEAD_KEYS = ("classifier.weight", "classifier.bias")
FIRST_CONV_KEY = "features.conv0.weight"
#: an old-style key of torchvision's hub files: ``...denselayer3.norm.1.weight`` for ``...denselayer3.norm1.weight``
_OLD_STYLE_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


class DenseNet121Params(Params):
    weights: Path | None = Field(
        None,
        description="a local ImageNet state-dict file in torchvision's densenet121 key layout to start from "
        "(never downloaded); null: random initialisation",
    )
    memory_efficient: bool = Field(
        False, description="recompute the dense layers' concatenations in the backward pass (less memory, slower)"
    )
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after each dense layer")


class DenseNet121(Model):
    """DenseNet-121 (torchvision) for one-channel 2-D images; random or local ImageNet starting weights."""

    name = "densenet121"
    Params = DenseNet121Params
    tasks = ("classification",)
    image_dims = (2,)

    def __init__(self, params: DenseNet121Params, task: Task):
        super().__init__(params, task)
        if task.kind not in self.tasks:
            raise InputError(f"densenet121 does classification only; this cohort's task is {task.kind}")
        if task.spatial_dims not in self.image_dims:
            raise InputError(
                f"densenet121 needs 2-D images; this cohort's images are {task.spatial_dims}-D (use nodulex for 3-D crops)"
            )
        import torchvision  # imported on use: seconds that building the plugin registry need not pay

        self.net = torchvision.models.densenet121(
            weights=None,
            num_classes=task.num_classes,
            memory_efficient=params.memory_efficient,
            drop_rate=params.drop_rate,
        )
        conv0 = self.net.features.conv0
        self.net.features.conv0 = nn.Conv2d(
            task.in_channels, conv0.out_channels, conv0.kernel_size, conv0.stride, conv0.padding, bias=False
        )
        nn.init.kaiming_normal_(self.net.features.conv0.weight)  # as torchvision initialises its convolutions
        self.feature_channels = self.net.classifier.in_features
        #: whether the classifier came from the weights file (only where its shape fits)
        self.head_from_weights = False
        self._weights_source = "random"
        if params.weights is not None:
            self._load_imagenet(Path(params.weights))

    @property
    def weights_source(self) -> str:
        """Where the starting weights came from: ``imagenet:<file name>`` or ``random``."""
        return self._weights_source

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if x.ndim != 4:
            raise ValueError(f"densenet121 expects images [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.task.in_channels:
            raise ValueError(
                f"densenet121 expects {self.task.in_channels} input channel(s), got shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"densenet121 needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )
        features = torch.flatten(F.adaptive_avg_pool2d(F.relu(self.net.features(x)), 1), 1)
        return ModelOutput(logits=self.net.classifier(features), features=features)

    def _load_imagenet(self, path: Path) -> None:
        """Start from the state dict in ``path`` (see the module docstring); a one-line InputError naming it if not."""
        if not path.is_file():
            raise InputError(f"{path}: no such file (densenet121 weights; harmonia never downloads them)")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not a weights-only checkpoint
            raise InputError(f"{path}: cannot be read as a weights-only state dict: {one_line(exc)}") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise InputError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
        state = {_OLD_STYLE_KEY.sub(r"\1\2.", key): value for key, value in loaded.items()}
        own = self.net.state_dict()
        for key in own:  # files saved before BatchNorm counted its batches lack these; torch fills them in too
            if key.endswith(".num_batches_tracked"):
                state.setdefault(key, own[key])
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
            parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
            raise InputError(
                f"{path}: does not hold torchvision densenet121 weights (keys such as {FIRST_CONV_KEY}): "
                f"{', '.join(parts)}"
            )
        conv0 = state[FIRST_CONV_KEY]
        if conv0.ndim != 4 or conv0.shape[1] != 3:
            raise InputError(
                f"{path}: {FIRST_CONV_KEY} has shape {tuple(conv0.shape)}, not an RGB kernel [64, 3, 7, 7]"
            )
        if self.task.in_channels == 1:
            state[FIRST_CONV_KEY] = conv0.sum(1, keepdim=True)
        elif self.task.in_channels != 3:
            raise InputError(
                f"{path}: ImageNet weights fit 1- or 3-channel images; this cohort's have {self.task.in_channels}"
            )
        self.head_from_weights = all(state[k].shape == own[k].shape for k in HEAD_KEYS)
        if not self.head_from_weights:
            for key in HEAD_KEYS:
                state[key] = own[key]
        misfits = [key for key in own if state[key].shape != own[key].shape]
        if misfits:
            raise InputError(
                f"{path}: {len(misfits)} tensor(s) do not fit densenet121, e.g. {misfits[0]} "
                f"{tuple(state[misfits[0]].shape)} where {tuple(own[misfits[0]].shape)} is needed"
            )
        self.net.load_state_dict(state)
        self._weights_source = f"imagenet:{path.name}"


@hookimpl
def harmonia_models():
    return [DenseNet121]
