"""kornia_intensity and kornia_spatial: batch-wise augmentation on the training device.

Intensity: nothing clamped to [0, 1] (z-scored values survive), each operation's own effect (gamma keeps
the order and the range, blur removes high frequencies, noise has the configured sd, the bias field is a
smooth multiplicative field), probability 0 is the identity, 3-D volumes get one set of parameters for
all their slices, reproducibility from torch's seed, dtype / shape / channels_last kept. Spatial: image
and label map stay aligned (2-D and 3-D), labels stay integers of the label set, flips are torch.flip,
classification targets are untouched. Both register, and train end to end through the runner.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import pandas as pd
import pytest
import torch
import toy_plugins
from pydantic import ValidationError

from harmonia import hookimpl, runner
from harmonia import registry as registry_module
from harmonia.api import Mitigation, Task
from harmonia.registry import Registry
from harmonia_plugins.mitigations import kornia_intensity, kornia_spatial
from harmonia_plugins.mitigations.kornia_intensity import OPERATIONS, KorniaIntensity, KorniaIntensityParams
from harmonia_plugins.mitigations.kornia_spatial import KorniaSpatial, KorniaSpatialParams

SEG = Task("segmentation", ("background", "one", "two"))
CLS = Task("classification", ("no", "yes"))

pytestmark = pytest.mark.usefixtures("one_thread")


def intensity(**params) -> KorniaIntensity:
    return KorniaIntensity(KorniaIntensityParams(**params), SEG)


def only(op: str, **params) -> KorniaIntensity:
    """kornia_intensity with every probability 0 but ``op``'s, which is 1."""
    return intensity(**{"preset": "none", f"{op}_probability": 1.0, **params})


def spatial(task: Task = SEG, **params) -> KorniaSpatial:
    return KorniaSpatial(KorniaSpatialParams(**params), task)


def zscored(n: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth z-scored-looking images spanning about -3 .. +5 (a skewed, bright-tailed distribution)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(n, 1, 6, 6, generator=g), size=size, mode="bilinear")
    x = x.exp()
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True)
    return x


def no_labels(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(x), *x.shape[2:], dtype=torch.long)


# -- kornia_intensity ---------------------------------------------------------------------------------


def test_values_outside_the_unit_interval_survive_every_operation():
    torch.manual_seed(0)
    x = zscored()
    assert x.min() < -0.5 and x.max() > 3  # far outside [0, 1]
    for op in OPERATIONS:
        out, _ = only(op).augment_batch(x, no_labels(x))
        assert out.min() < -0.3 and out.max() > 2.5, op  # no clamp to [0, 1]
        assert (out.flatten(1).amax(1) - out.flatten(1).amin(1)).min() > 1.5, op
    out, _ = intensity().augment_batch(x, no_labels(x))  # the mnms preset, all together
    assert out.min() < -0.3 and out.max() > 2.5


def test_gamma_keeps_each_images_range_and_order_but_bends_it():
    torch.manual_seed(1)
    x = zscored()
    out, _ = only("gamma", gamma_range=(1.5, 1.5)).augment_batch(x, no_labels(x))
    flat_in, flat_out = x.flatten(1), out.flatten(1)
    assert torch.allclose(flat_out.amin(1), flat_in.amin(1), atol=1e-5)  # the range is not cut
    assert torch.allclose(flat_out.amax(1), flat_in.amax(1), atol=1e-5)
    order = flat_in.argsort(1)
    assert (flat_out.gather(1, order).diff(1) >= -1e-6).all()  # monotone: the ordering is kept
    unit_in = (flat_in - flat_in.amin(1, keepdim=True)) / (
        flat_in.amax(1, keepdim=True) - flat_in.amin(1, keepdim=True)
    )
    unit_out = (flat_out - flat_out.amin(1, keepdim=True)) / (
        flat_out.amax(1, keepdim=True) - flat_out.amin(1, keepdim=True)
    )
    assert torch.allclose(unit_out, unit_in**1.5, atol=1e-5)  # the shape is u ** gamma


def test_contrast_scales_about_the_mean_and_brightness_shifts():
    torch.manual_seed(2)
    x = zscored()
    out, _ = only("contrast", contrast_range=(1.4, 1.4)).augment_batch(x, no_labels(x))
    mean = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out, (x - mean) * 1.4 + mean, atol=1e-5)
    out, _ = only("brightness", brightness_range=(-0.7, -0.7)).augment_batch(x, no_labels(x))
    assert torch.allclose(out, x - 0.7, atol=1e-6)


def _high_frequency_energy(x: torch.Tensor) -> float:
    return (x.diff(dim=-1).square().mean() + x.diff(dim=-2).square().mean()).item()


def test_blur_lowers_and_sharpening_raises_high_frequency_energy():
    torch.manual_seed(3)
    x = torch.randn(6, 1, 20, 20)
    blurred, _ = only("blur").augment_batch(x, no_labels(x))
    sharpened, _ = only("sharpen").augment_batch(x, no_labels(x))
    assert _high_frequency_energy(blurred) < 0.5 * _high_frequency_energy(x)
    assert _high_frequency_energy(sharpened) > 1.3 * _high_frequency_energy(x)
    assert blurred.mean().item() == pytest.approx(x.mean().item(), abs=0.02)  # a blur keeps the mean


def test_noise_has_the_configured_sd():
    torch.manual_seed(4)
    x = torch.full((20, 1, 32, 32), 2.0)
    out, _ = only("noise", noise_sd_range=(0.3, 0.3)).augment_batch(x, no_labels(x))
    assert (out - x).std().item() == pytest.approx(0.3, rel=0.03)
    assert abs((out - x).mean().item()) < 0.02


def test_the_bias_field_is_smooth_and_multiplicative_about_the_minimum():
    torch.manual_seed(5)
    x = zscored(n=4, size=32)
    out, _ = only("bias", bias_strength=0.3, bias_order=3).augment_batch(x, no_labels(x))
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    assert torch.allclose(out.flatten(1).amin(1), low.flatten(), atol=1e-5)  # the minimum stays put
    inside = (x - low) > 0.5  # away from the minimum, where the ratio is well defined
    log_ratio = ((out - low) / (x - low)).log()
    assert log_ratio[inside].abs().max() > 0.1  # it really multiplies
    # the ratio is smooth: its log is a cubic polynomial of the coordinates, fitted to within rounding
    axis = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    basis = torch.stack([yy**i * xx**j for i in range(4) for j in range(4 - i)], -1)  # [32, 32, 10]
    for k in range(len(x)):
        mask = inside[k, 0]
        a, b = basis[mask].double(), log_ratio[k, 0][mask].double()[:, None]
        residual = a @ torch.linalg.lstsq(a, b).solution - b
        assert residual.abs().max() < 1e-4


def test_probability_zero_leaves_the_batch_untouched_and_draws_nothing():
    x = zscored()
    state = torch.get_rng_state()
    for params in ({"preset": "none"}, {**{f"{op}_probability": 0.0 for op in OPERATIONS}}):
        module = intensity(**params)
        assert KorniaIntensity.is_inactive(module.params)
        out, _ = module.augment_batch(x, no_labels(x))
        assert out is x
    assert torch.equal(torch.get_rng_state(), state)
    assert not KorniaIntensity.is_inactive(KorniaIntensityParams())


def test_with_probability_one_half_some_images_are_left_exactly_as_they_were():
    torch.manual_seed(6)
    x = zscored(n=40, size=8)
    out, _ = only("contrast", contrast_probability=0.5).augment_batch(x, no_labels(x))
    same = (out == x).flatten(1).all(1)
    assert 8 < same.sum() < 32


def test_a_volume_of_identical_slices_stays_identical_and_volumes_differ():
    torch.manual_seed(7)
    slice_ = zscored(n=3, size=16)
    volume = slice_[:, :, None].expand(-1, -1, 5, -1, -1).contiguous()  # [3, 1, 5, 16, 16]
    out, _ = intensity(noise_probability=0.0, **{f"{op}_probability": 1.0 for op in OPERATIONS[:-1]}).augment_batch(
        volume, no_labels(volume)
    )
    assert out.shape == volume.shape
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-6)
    assert not torch.allclose(out, volume, atol=1e-2)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    x = zscored()
    draws = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        draws.append(intensity().augment_batch(x, no_labels(x))[0])
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize(
    "dtype, channels_last", [(torch.float32, False), (torch.float32, True), (torch.float64, False)]
)
def test_dtype_shape_and_channels_last_are_kept_and_targets_are_not_touched(dtype, channels_last):
    torch.manual_seed(8)
    x = torch.randn(4, 3, 12, 12, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 3, (4, 12, 12))
    module = intensity(**{f"{op}_probability": 1.0 for op in OPERATIONS})
    out, out_targets = module.augment_batch(x, targets)
    assert (out.dtype, out.device, out.shape) == (x.dtype, x.device, x.shape)
    assert out_targets is targets
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.manual_seed(8)
        same = module.augment_batch(x.contiguous(), targets)[0]  # the same numbers as a contiguous batch
        torch.manual_seed(9)
        a = module.augment_batch(x.contiguous(), targets)[0]
        torch.manual_seed(9)
        b = module.augment_batch(x, targets)[0]
        assert torch.allclose(a, b, atol=1e-5) and same.shape == x.shape


def test_intensity_params_are_validated_and_the_preset_fills_only_what_is_not_given():
    assert KorniaIntensity.stages() == ["augment_batch"] and KorniaIntensity.batch_space == "normalized"
    defaults = KorniaIntensityParams()
    assert defaults.gamma_probability == defaults.contrast_probability == defaults.brightness_probability == 0.5
    assert KorniaIntensityParams(gamma_probability=0.1).gamma_probability == 0.1
    assert KorniaIntensityParams(preset="none", noise_probability=0.2).bias_probability == 0.0
    for bad in (
        {"gamma_probability": 1.5},
        {"gamma_range": (1.5, 0.7)},
        {"gamma_range": (0.0, 1.0)},
        {"blur_sigma_range": (0.0, 1.0)},
        {"preset": "heavy"},
        {"gamma": 1.0},
        {"noise_probability": True},
    ):
        with pytest.raises(ValidationError):
            KorniaIntensityParams(**bad)


# -- kornia_spatial -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 20, 20), (4, 5, 16, 16)])
@pytest.mark.parametrize("extra", [{}, {"elastic_probability": 1.0, "out_of_plane_degrees": 10.0}])
def test_image_and_label_map_stay_aligned(shape, extra):
    torch.manual_seed(20)
    labels = torch.nn.functional.interpolate(torch.rand(shape[0], 1, *[max(2, s // 4) for s in shape[1:]]), shape[1:])
    labels = (labels[:, 0] * 3).long().clamp(max=2)
    images = labels[:, None].float()  # an image equal to its label map
    module = spatial(
        affine_probability=1.0, flip_depth_probability=0.5, image_interpolation="nearest", through_plane=True, **extra
    )
    out, out_labels = module.augment_batch(images, labels)
    assert out_labels.dtype == torch.int64 and out_labels.shape == labels.shape
    assert set(out_labels.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(out[:, 0], out_labels.float())  # still equal: one transform for both
    assert (out_labels != labels).float().mean() > 0.05  # and it did move things


def test_bilinear_images_follow_their_labels_too():
    torch.manual_seed(21)
    labels = torch.zeros(4, 24, 24, dtype=torch.long)
    labels[:, 8:16, 6:18] = 1
    images = labels[:, None].float() * 10 - 5
    out, out_labels = spatial(affine_probability=1.0, flip_height_probability=0.5).augment_batch(images, labels)
    assert ((out[:, 0] > 0) == (out_labels == 1)).float().mean() > 0.97  # bilinear edges may differ by a pixel


@pytest.mark.parametrize("axis, param", [(-1, "flip_width_probability"), (-2, "flip_height_probability")])
@pytest.mark.parametrize("ndim", [2, 3])
def test_flips_with_probability_one_are_torch_flip(axis, param, ndim):
    off = {"flip_width_probability": 0.0, "flip_height_probability": 0.0, "affine_probability": 0.0}
    shape = (3, 7, 9) if ndim == 2 else (3, 4, 7, 9)
    labels = torch.randint(0, 3, shape)
    images = torch.randn(3, 1, *shape[1:])
    out, out_labels = spatial(**{**off, param: 1.0}).augment_batch(images, labels)
    assert torch.equal(out, images.flip(axis)) and torch.equal(out_labels, labels.flip(axis))
    if ndim == 3:
        out, out_labels = spatial(**off, flip_depth_probability=1.0).augment_batch(images, labels)
        assert torch.equal(out, images.flip(-3)) and torch.equal(out_labels, labels.flip(-3))


def test_classification_targets_are_untouched_and_probability_zero_is_the_identity():
    torch.manual_seed(22)
    images, classes = torch.randn(5, 1, 12, 12), torch.tensor([0, 1, 1, 0, 1])
    out, out_classes = spatial(CLS, affine_probability=1.0).augment_batch(images, classes)
    assert out_classes is classes and not torch.allclose(out, images)
    off = {
        "flip_width_probability": 0.0,
        "flip_height_probability": 0.0,
        "affine_probability": 0.0,
        "elastic_probability": 0.0,
    }
    assert KorniaSpatial.is_inactive(KorniaSpatialParams(**off))
    labels = torch.randint(0, 3, (5, 12, 12))
    out, out_labels = spatial(**off).augment_batch(images, labels)
    assert out is images and out_labels is labels


def test_spatial_padding_keeps_channels_last_and_reproduces():
    images = torch.randn(4, 2, 16, 16).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 3, (4, 16, 16))
    draws = []
    for seed in (30, 30, 31):
        torch.manual_seed(seed)
        draws.append(spatial(affine_probability=1.0, scale_range=(0.6, 0.7)).augment_batch(images, labels)[0])
    assert draws[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # zoomed out: the corners come from outside and are filled with each image's minimum
    low = images.flatten(1).amin(1)
    assert torch.allclose(draws[0][:, :, 0, 0].amin(1), low)


def test_spatial_params_are_validated():
    assert KorniaSpatial.stages() == ["augment_batch"]
    for bad in ({"scale_range": (1.2, 0.8)}, {"affine_probability": 2.0}, {"image_padding": "zeros"}, {"flip": 1}):
        with pytest.raises(ValidationError):
            KorniaSpatialParams(**bad)


# -- registration and a real training run ---------------------------------------------------------------


class BatchSpy(Mitigation):
    """Records the normalized batches it is given (placed before and after the kornia mitigations)."""

    name = "batch_spy"
    seen: ClassVar[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def augment_batch(self, images, targets):
        BatchSpy.seen.append((images.clone(), targets.clone()))
        return images, targets


@hookimpl
def harmonia_mitigations():
    return [BatchSpy]


def test_both_register_and_validate_their_params():
    registry = Registry.from_entry_points(extra=[kornia_intensity, kornia_spatial])
    assert not registry.failures
    assert registry.get("mitigation", "kornia_intensity").cls is KorniaIntensity
    assert registry.get("mitigation", "kornia_spatial").cls is KorniaSpatial


def test_a_recipe_trains_with_both_and_the_model_sees_augmented_batches(toy_recipe, monkeypatch, tmp_path):
    registry = Registry.from_entry_points(extra=[toy_plugins, kornia_intensity, kornia_spatial, sys.modules[__name__]])
    monkeypatch.setattr(registry_module, "_default", registry)
    BatchSpy.seen.clear()
    toy_recipe["mitigations"] = [
        {"plugin": "batch_spy"},
        {"plugin": "kornia_intensity"},
        {"plugin": "kornia_spatial", "params": {"elastic_probability": 0.5}},
        {"plugin": "batch_spy"},
    ]
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    assert len(run.results) > 0
    history = pd.read_csv(run.path / "history.csv")
    assert sorted(history["epoch"].unique().tolist()) in ([0], [1])
    raw, augmented = BatchSpy.seen[0::2], BatchSpy.seen[1::2]
    assert raw and len(raw) == len(augmented)
    assert any(not torch.allclose(a[0], r[0]) for r, a in zip(raw, augmented))  # images changed
    assert any(not torch.equal(a[1], r[1]) for r, a in zip(raw, augmented))  # label maps moved with them
    assert all(set(a[1].unique().tolist()) <= {0, 1} for a in augmented)
