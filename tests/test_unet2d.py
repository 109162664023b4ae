"""unet2d: output shapes, that its features are the bottleneck and its levels the encoder levels,
gradient paths and input checks."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harmonia.api import Task
from harmonia.errors import InputError
from harmonia.registry import Registry
from harmonia_plugins.models.unet2d import UNet2D, UNet2DParams

SEG = Task("segmentation", ("background", "LV", "RV"))


def make(seed: int = 0, **params) -> UNet2D:
    torch.manual_seed(seed)
    return UNet2D(UNet2DParams(**params), SEG).eval()


def bottom_conv(model: UNet2D) -> nn.Conv2d:
    """The encoder's deepest convolution: the stride-1 one that outputs channels[-1]."""
    c = model.params.channels
    convs = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == c[-1] and m.in_channels == c[-2]
    ]
    return next(m for m in convs if m.kernel_size == (3, 3))


def decoder_modules(model: UNet2D) -> list[nn.Module]:
    """Transposed convolutions and everything after them in each up block (decoder-only parameters)."""
    ups = [
        m
        for m in model.modules()
        if isinstance(m, nn.Sequential) and len(m) and isinstance(getattr(m[0], "conv", None), nn.ConvTranspose2d)
    ]
    assert len(ups) == len(model.params.channels) - 1
    return ups


@pytest.mark.parametrize(
    "params, size, feature_size",
    [
        ({"channels": [4, 8]}, 16, 8),
        ({"channels": [4, 8, 16], "num_res_units": 0, "norm": "batch"}, 32, 8),
        ({"channels": [4, 8, 16, 32], "strides": [2, 1, 2]}, 24, 6),
    ],
)
def test_output_shapes(params, size, feature_size):
    model = make(**params)
    out = model(torch.randn(3, 1, size, size))
    channels = params["channels"]
    assert model.feature_channels == channels[-1]
    assert out.logits.shape == (3, SEG.num_classes, size, size)
    assert out.features.shape == (3, channels[-1], feature_size, feature_size)
    assert feature_size == size // math.prod(model.strides)


def test_default_params_and_strides():
    params = UNet2DParams()
    assert params.channels == [16, 32, 64, 128] and params.num_res_units == 2 and params.norm == "instance"
    model = UNet2D(params, SEG)
    assert model.strides == (2, 2, 2) and model.size_multiple == 8 and model.feature_channels == 128


def test_features_are_what_the_decoder_receives_from_the_bottom():
    """The features equal the bottom half of the input to the deepest up-convolution (skip ++ bottleneck)."""
    model = make(channels=[4, 8, 16])
    deepest_up = decoder_modules(model)[0]  # modules() is pre-order: an inner up block comes before the outer ones
    seen = []
    handle = deepest_up.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = model(torch.randn(2, 1, 32, 32))
    handle.remove()
    assert torch.equal(out.features, seen[0][:, 8:])


def test_levels_are_the_encoder_outputs_the_skip_connections_carry_shallowest_first():
    """Each level but the last is what the decoder receives around the bottleneck (the skip half of an up
    block's input); the last is the bottleneck, the features."""
    model = make(channels=[4, 8, 16])
    inner_up, outer_up = decoder_modules(model)  # pre-order: the inner up block first
    seen = []
    handles = [up.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for up in (inner_up, outer_up)]
    out = model(torch.randn(2, 1, 32, 32))
    for handle in handles:
        handle.remove()
    assert model.level_channels == (4, 8, 16)
    assert [tuple(level.shape[1:]) for level in out.levels] == [(4, 16, 16), (8, 8, 8), (16, 8, 8)]
    assert out.levels[-1] is out.features
    inner_input, outer_input = seen
    assert torch.equal(inner_input[:, :8], out.levels[1]) and torch.equal(outer_input[:, :4], out.levels[0])


def test_deepest_encoder_weights_change_the_features_decoder_weights_do_not():
    model = make(channels=[4, 8, 16])
    x = torch.randn(2, 1, 32, 32)
    before = model(x)
    with torch.no_grad():
        for m in decoder_modules(model):
            for p in m.parameters():
                p.add_(1.0)
    after_decoder = model(x)
    assert torch.equal(after_decoder.features, before.features)
    assert not torch.allclose(after_decoder.logits, before.logits)
    with torch.no_grad():
        bottom_conv(model).weight.mul_(2.0)
    assert not torch.allclose(model(x).features, before.features)


def test_gradient_from_features_reaches_encoder_not_decoder():
    model = make(channels=[4, 8, 16]).train()
    model(torch.randn(2, 1, 32, 32)).features.pow(2).mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert bottom_conv(model).weight.grad.abs().sum() > 0
    for m in decoder_modules(model):
        assert all(p.grad is None for p in m.parameters())


def test_capture_keeps_no_tensor_between_calls():
    model = make(channels=[4, 8])
    x1, x2 = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    f1 = model(x1).features
    out = model(x2)
    assert torch.equal(model(x1).features, f1) and not torch.equal(out.features, f1)
    ref = weakref.ref(out.features)
    del out
    gc.collect()
    assert ref() is None  # the model holds no reference to the last features


def test_channels_last_and_autocast():
    model = make(channels=[4, 8, 16])
    x = torch.randn(2, 1, 32, 32)
    reference = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out.features, reference.features, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.features.dtype == torch.bfloat16 and out.features.shape == reference.features.shape


def test_size_not_divisible_is_a_clear_error():
    model = make(channels=[4, 8, 16])
    with pytest.raises(ValueError, match=r"divisible by 4, got 30x32.*32x32"):
        model(torch.randn(1, 1, 30, 32))


def test_rejects_classification_and_bad_params():
    with pytest.raises(InputError, match="segmentation only"):
        UNet2D(UNet2DParams(), Task("classification", ("benign", "malignant")))
    with pytest.raises(ValidationError, match="strides"):
        UNet2DParams(channels=[4, 8, 16], strides=[2])
    with pytest.raises(ValidationError):
        UNet2DParams(channels=[8])
    with pytest.raises(ValidationError):
        UNet2DParams(norm="group")


def test_registered_through_entry_point():
    entry = Registry.from_entry_points().get("model", "unet2d")
    assert entry.cls is UNet2D and entry.description.startswith("2-D residual U-Net")
