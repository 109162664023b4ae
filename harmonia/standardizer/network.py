"""The standardizer's networks: an RRDB generator that works at a quarter of the pixels, and a U-Net critic.

Architecture after Real-ESRGAN (Wang et al. 2021) as adapted for CT by seed 003: the generator's
first layer is a pixel-unshuffle (factor 2), so its body sees a quarter of the spatial size without
losing a pixel, and it adds what it computes to its input (a global residual), so an untrained
generator is the identity. The discriminator is a U-Net with spectral normalisation that gives one
real/fake logit per pixel. Both take single-channel images of any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

#: residual scaling inside a dense block and around each RRDB (Real-ESRGAN's 0.2)
RESIDUAL_SCALE = 0.2
#: factor of the first layer's pixel-unshuffle: the body works on (H/2) x (W/2) at 4 channels
UNSHUFFLE = 2


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing all the features before it; adds 0.2 x its output to its input."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(features + i * growth, growth if i < 4 else features, 3, padding=1) for i in range(5)
        )
        for conv in self.convs:  # small initial residuals keep the deep stack stable (Real-ESRGAN scales by 0.1)
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for conv in self.convs[:-1]:
            seen.append(_lrelu(conv(torch.cat(seen, 1))))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(seen, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks in sequence, 0.2 x their result added to the input."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(features, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its last row and column repeated where H or W is odd, so the pixel-unshuffle tiles it exactly."""
    return F.pad(x, (0, x.shape[-1] % UNSHUFFLE, 0, x.shape[-2] % UNSHUFFLE), mode="replicate")


class Generator(nn.Module):
    """Image-to-image RRDB network for single-channel images in [0, 1]; output shape = input shape (any H, W).

    pixel-unshuffle(2) -> conv -> ``blocks`` RRDBs -> conv (+ trunk residual) -> nearest x2 + conv
    -> conv -> conv to one channel, added to the input. The last convolution starts at zero, so the
    untrained generator returns its input exactly and training learns a correction to it.
    Real-ESRGAN's size is ``Generator(features=64, blocks=23, growth=32)``; the defaults are a CPU-sized net.
    """

    def __init__(self, features: int = 16, blocks: int = 2, growth: int = 8):
        super().__init__()
        self.features, self.blocks, self.growth = features, blocks, growth
        self.unshuffle = nn.PixelUnshuffle(UNSHUFFLE)
        self.conv_first = nn.Conv2d(UNSHUFFLE**2, features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up = nn.Conv2d(features, features, 3, padding=1)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, 1, 3, padding=1)
        nn.init.zeros_(self.conv_last.weight)
        nn.init.zeros_(self.conv_last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = pad_to_even(x)
        trunk = self.conv_first(self.unshuffle(padded))
        trunk = trunk + self.conv_body(self.body(trunk))
        full = _lrelu(self.conv_up(F.interpolate(trunk, scale_factor=UNSHUFFLE, mode="nearest")))
        residual = self.conv_last(_lrelu(self.conv_hr(full)))
        return (padded + residual)[..., :height, :width]


class Discriminator(nn.Module):
    """U-Net critic with spectral normalisation: one real/fake logit per pixel, ``[N, 1, H, W]`` for ``[N, 1, H, W]``.

    Three stride-2 convolutions down (width ``features`` -> 8 x ``features``), three bilinear upsamplings
    back, each added to the encoder features of its size, then two convolutions and a 1-channel head.
    Every convolution but the first and the head is spectrally normalised. H and W must be at least 8.
    """

    def __init__(self, features: int = 16):
        super().__init__()
        self.features = features
        widths = [features, 2 * features, 4 * features, 8 * features]
        self.conv_first = nn.Conv2d(1, features, 3, padding=1)
        self.down = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False)) for a, b in zip(widths, widths[1:])
        )
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(b, a, 3, padding=1, bias=False)) for a, b in reversed(list(zip(widths, widths[1:])))
        )
        self.refine = nn.ModuleList(
            spectral_norm(nn.Conv2d(features, features, 3, padding=1, bias=False)) for _ in range(2)
        )
        self.head = nn.Conv2d(features, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [_lrelu(self.conv_first(x))]
        for conv in self.down:
            skips.append(_lrelu(conv(skips[-1])))
        h = skips.pop()
        for conv, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = _lrelu(conv(h)) + skip
        for conv in self.refine:
            h = _lrelu(conv(h))
        return self.head(h)
