"""Perceptual loss: the L1 distance between VGG19 features of two single-channel images in [0, 1].

The layer: seed 003 takes "the 16th convolution layer" of the pretrained VGG19. Counting convolutions, that
is conv5_4, VGG19's last (torchvision's ``features[34]``), which is also where ESRGAN takes its perceptual
features (before the activation); so the default is 34. Reading "16" as torchvision's index would give conv3_4
(``features[16]``) instead: pass ``layer=16`` for that reading. Any convolution's index is accepted.

Pretrained VGG19 weights cannot be downloaded here, so the loss takes a local weights file or runs on
randomly initialised features; :attr:`PerceptualLoss.pretrained` says which, for the caller to record.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harmonia.errors import InputError, one_line

#: ImageNet statistics the torchvision VGG19 weights were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_convs() -> dict[int, str]:
    """Index in torchvision's ``vgg19().features`` of each convolution, and its name (``conv1_1`` ... ``conv5_4``)."""
    convs, index = {}, 0
    for block, count in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, count + 1):
            convs[index] = f"conv{block}_{conv}"
            index += 2  # the convolution and its ReLU
        index += 1  # the max-pool that closes the block
    return convs


#: ``{features index: name}`` of VGG19's 16 convolutions: {0: "conv1_1", 2: "conv1_2", ..., 34: "conv5_4"}
VGG19_CONVS = _vgg19_convs()

#: conv5_4, VGG19's 16th and last convolution (see the module docstring for why)
DEFAULT_LAYER = 34


def check_layer(layer: int) -> int:
    """``layer`` when it indexes a convolution of VGG19's ``features``; a ValueError naming the valid indices if not."""
    if layer not in VGG19_CONVS:
        valid = ", ".join(f"{i} ({name})" for i, name in VGG19_CONVS.items())
        raise ValueError(f"VGG19 features[{layer}] is not a convolution; choose one of {valid}")
    return layer


def vgg19_features() -> nn.Sequential:
    """torchvision's VGG19 ``features`` stack (its keys match torchvision's weights), randomly initialised as
    ``torchvision.models.vgg19()`` does: PyTorch's default init would shrink the activations to ~0 by conv5_4."""
    from torchvision.models.vgg import cfgs, make_layers  # on use: importing torchvision takes a second or two

    features = make_layers(cfgs["E"], batch_norm=False)
    for index in VGG19_CONVS:
        nn.init.kaiming_normal_(features[index].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(features[index].bias)
    return features


def load_vgg19_weights(features: nn.Sequential, path: Path) -> None:
    """Load a local VGG19 weights file (torchvision's ``vgg19-*.pth``, or a ``features`` state_dict) into ``features``.

    A missing, unreadable or non-VGG19 file is a one-line InputError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such VGG19 weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: holds objects other than tensors, or is damaged; loaded as weights only") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise InputError(f"{path}: not a readable VGG19 weights file ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a VGG19 state_dict (holds a {type(state).__name__})")
    if any(str(key).startswith("features.") for key in state):  # a whole torchvision VGG19: keep its features
        state = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit VGG19's features ({one_line(exc)})") from None


class PerceptualLoss(nn.Module):
    """Mean absolute difference of VGG19 ``features[: layer + 1]`` (before that convolution's ReLU) of two images.

    ``layer`` defaults to conv5_4, VGG19's 16th convolution, as seed 003 says (the module docstring has more).
    Inputs are ``[N, 1, H, W]`` in [0, 1]: repeated to three channels and ImageNet-normalised. The VGG
    weights are frozen and stay in eval mode. L1 rather than squared error on the features, as Real-ESRGAN,
    whose training seed 003 follows. ``weights`` is a local VGG19 weights file; without it the features are
    random (``pretrained`` False) and the loss is then a fixed random-feature distance, not a perceptual one.
    """

    def __init__(self, layer: int = DEFAULT_LAYER, weights: Path | None = None):
        super().__init__()
        self.layer = check_layer(layer)
        features = vgg19_features()
        if weights is not None:
            load_vgg19_weights(features, weights)
        self.pretrained = weights is not None
        self.features = features[: layer + 1].requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Switch the module's mode but keep the VGG features in eval mode, as they were trained."""
        super().train(mode)
        self.features.eval()
        return self

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """VGG19 features of ``[N, 1, H, W]`` images in [0, 1]."""
        return self.features((images.expand(-1, 3, -1, -1) - self.mean) / self.std)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = self.extract(target)
        return F.l1_loss(self.extract(output), wanted)
