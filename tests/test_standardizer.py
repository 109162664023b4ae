"""The CT standardizer: shapes kept, training lowers the error and is reproducible, checkpoints round-trip and refuse
tampering. Tiny networks and patches, so the whole file runs in seconds on a CPU."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from harmonia.errors import InputError, TrainingDiverged
from harmonia.standardizer import (
    DEFAULT_LAYER,
    VGG19_CONVS,
    Discriminator,
    Generator,
    GeneratorSpec,
    PerceptualLoss,
    Standardizer,
    StandardizerSettings,
    TrainingRecord,
    checkpoint_files,
    checkpoint_sha256,
    load_standardizer,
    save_standardizer,
    train_stage1,
    train_stage2,
    train_standardizer,
)
from harmonia.standardizer import checkpoint as checkpoint_module
from harmonia.standardizer.checkpoint import file_sha256
from harmonia.standardizer.perceptual import vgg19_features
from harmonia.standardizer.training import PairedPatches

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads would only wait on each other

#: a tiny net, 16-pixel patches and a shallow perceptual layer (conv2_2): stage 2 in well under a second
TINY = StandardizerSettings(
    generator=GeneratorSpec(features=8, blocks=1, growth=4),
    discriminator_features=4,
    patch_size=16,
    batch_size=4,
    stage1_steps=30,
    stage2_steps=4,
    lr=2e-3,
    perceptual_layer=7,
)


def slice_pair(n: int = 4, size: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth synthetic HU slices and their "reference reconstruction": an affine map of the same HU."""
    coarse = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    sources = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 300 + 40
    return sources, 0.7 * sources + 100


@functools.cache
def trained() -> tuple[Standardizer, TrainingRecord, list[tuple[int, int, float]]]:
    """Both stages on the synthetic pair, with every progress call kept (once per session, inside a one-thread test)."""
    calls = []
    standardizer, record = train_standardizer(*slice_pair(), TINY, progress=lambda *call: calls.append(call))
    return standardizer, record, calls


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("size", [(32, 32), (31, 33), (17, 16), (1, 3)])
def test_the_untrained_generator_returns_its_input_exactly_at_any_size(size):
    x = torch.rand(2, 1, *size)
    assert torch.equal(Generator()(x), x)  # zero-initialised last convolution + global residual


@pytest.mark.parametrize("size", [(32, 32), (31, 33)])
def test_a_trained_generator_keeps_the_input_shape(size):
    x = torch.rand(2, 1, *size)
    out = trained()[0].generator(x)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_the_pixel_unshuffle_quarters_the_image_and_loses_no_pixel():
    x = torch.rand(3, 1, 20, 14)
    quartered = Generator().unshuffle(x)
    assert quartered.shape == (3, 4, 10, 7)
    assert torch.equal(F.pixel_shuffle(quartered, 2), x)


def test_real_esrgans_size_is_constructible():
    generator = Generator(features=64, blocks=23, growth=32)
    assert len(generator.body) == 23
    assert 16.6e6 < sum(p.numel() for p in generator.parameters()) < 16.8e6  # Real-ESRGAN's RRDBNet: 16.7 M
    x = torch.rand(1, 1, 9, 8)
    with torch.no_grad():
        assert generator(x).shape == x.shape


@pytest.mark.parametrize("size", [(16, 16), (31, 33), (8, 9)])
def test_the_discriminator_gives_one_logit_per_pixel(size):
    critic = Discriminator(features=4)
    assert critic(torch.rand(2, 1, *size)).shape == (2, 1, *size)
    assert all(parametrize.is_parametrized(conv, "weight") for conv in [*critic.down, *critic.up, *critic.refine])


def test_the_layer_indices_name_vgg19s_convolutions():
    features = vgg19_features()
    assert {i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)} == set(VGG19_CONVS)
    assert (VGG19_CONVS[DEFAULT_LAYER], VGG19_CONVS[16]) == ("conv5_4", "conv3_4")


def test_the_perceptual_loss_ends_at_the_chosen_convolution_frozen_and_in_eval_mode():
    loss = PerceptualLoss()
    last = loss.features[-1]
    assert len(loss.features) == DEFAULT_LAYER + 1 and isinstance(last, nn.Conv2d) and last.out_channels == 512
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.pretrained
    assert not loss.train().features.training
    image = torch.rand(1, 1, 16, 16)
    assert loss(image, image).item() == 0 and loss(image, 1 - image).item() > 0


@pytest.mark.parametrize("layer", [1, 4, 35, 36, -1])
def test_a_layer_that_is_not_a_vgg19_convolution_is_refused(layer):
    with pytest.raises(ValueError, match=rf"features\[{layer}\] is not a convolution"):
        PerceptualLoss(layer)
    with pytest.raises(ValidationError, match="perceptual_layer"):
        StandardizerSettings(perceptual_layer=layer)


def test_a_local_vgg_weights_file_is_loaded_and_a_bad_one_refused_by_name(tmp_path):
    features = vgg19_features()
    good = tmp_path / "vgg19.pth"
    torch.save(
        {f"features.{k}": v for k, v in features.state_dict().items()} | {"classifier.0.bias": torch.ones(2)}, good
    )
    loss = PerceptualLoss(2, good)
    assert loss.pretrained and torch.equal(loss.features[2].weight, features[2].weight)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "vgg16ish.pth"
    torch.save({"0.weight": torch.zeros(1)}, wrong)
    for path in (tmp_path / "missing.pth", garbage, wrong):
        with pytest.raises(InputError, match=re.escape(str(path))) as caught:
            PerceptualLoss(2, path)
        assert "\n" not in str(caught.value)


def test_patches_come_from_the_same_place_in_source_and_target():
    sources = torch.arange(2 * 40 * 40, dtype=torch.float32).reshape(2, 1, 40, 40)  # every pixel a different HU
    settings = TINY.model_copy(update={"hu_window": (0.0, 3200.0)})
    source, target = PairedPatches(sources, sources + 32, settings, stage=1).draw(torch.device("cpu"))
    assert source.shape == target.shape == (4, 1, 16, 16)
    assert torch.allclose(target - source, torch.full_like(source, 0.01))
    assert len({patch[0, 0, 0].item() for patch in source}) > 1  # positions vary
    again, _ = PairedPatches(sources, sources + 32, settings, stage=1).draw(torch.device("cpu"))
    assert torch.equal(again, source)


def test_training_lowers_the_error_against_the_reference_and_records_both_stages():
    standardizer, record, calls = trained()
    sources, targets = slice_pair()
    before = (sources - targets).abs().mean()
    after = (standardizer.apply_hu(sources) - targets).abs().mean()
    assert after < 0.6 * before

    stage1, stage2 = record.stages
    assert (stage1.stage, stage1.steps, stage2.stage, stage2.steps) == (1, 30, 2, 4)
    assert stage1.last["l1"] < 0.8 * stage1.first["l1"]
    assert set(stage2.last) == {"total", "l1", "perceptual", "gan", "discriminator"}
    assert stage2.vgg_pretrained is False and record.vgg_pretrained is False and standardizer.record == record
    assert [(stage, step) for stage, step, _ in calls] == [(1, s) for s in range(1, 31)] + [(2, s) for s in range(1, 5)]


def test_the_same_seed_gives_the_same_weights_and_leaves_the_callers_rng_alone():
    settings = TINY.model_copy(update={"stage1_steps": 3})
    torch.manual_seed(5)
    a, _ = train_stage1(*slice_pair(), settings)
    drawn_after_training = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), drawn_after_training)
    b, _ = train_stage1(*slice_pair(), settings)
    c, _ = train_stage1(*slice_pair(), settings.model_copy(update={"seed": 1}))
    assert weights_equal(a.generator, b.generator) and not weights_equal(a.generator, c.generator)


def test_stage_2_resumed_from_a_saved_stage_1_matches_an_uninterrupted_run(tmp_path):
    stage1, _ = train_stage1(*slice_pair(), TINY)
    save_standardizer(stage1, tmp_path / "stage1.pt")
    resumed, record = train_stage2(load_standardizer(tmp_path / "stage1.pt"), *slice_pair())
    assert weights_equal(resumed.generator, trained()[0].generator) and record == trained()[1]


def test_a_checkpoint_round_trip_gives_identical_outputs_loading_weights_only(tmp_path, monkeypatch):
    standardizer, record, _ = trained()
    path = save_standardizer(standardizer, tmp_path / "models" / "fbp_to_m80")
    weights, sidecar_path = checkpoint_files(path)
    assert path == weights == tmp_path / "models" / "fbp_to_m80.pt"
    loads = []
    real_load = torch.load
    monkeypatch.setattr(checkpoint_module.torch, "load", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))

    loaded = load_standardizer(sidecar_path)
    assert [kw.get("weights_only") for kw in loads] == [True]
    slices = slice_pair(2, 33)[0]
    assert torch.equal(loaded.apply_hu(slices), standardizer.apply_hu(slices))
    assert loaded.settings == standardizer.settings and loaded.record == record and not loaded.generator.training
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["sha256"] == checkpoint_sha256(path) == file_sha256(weights)
    assert sidecar["training"]["stages"][1]["vgg_pretrained"] is False
    assert sidecar["settings"]["generator"] == {"features": 8, "blocks": 1, "growth": 4}


def test_a_tampered_weights_file_is_refused_by_name(tmp_path):
    weights = save_standardizer(trained()[0], tmp_path / "s.pt")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    for check in (load_standardizer, checkpoint_sha256):
        with pytest.raises(InputError, match=re.escape(str(weights)) + ".*changed after they were saved"):
            check(weights)


def test_a_sidecar_with_another_architecture_is_refused(tmp_path):
    weights = save_standardizer(trained()[0], tmp_path / "s.pt")
    sidecar_path = checkpoint_files(weights)[1]
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["settings"]["generator"]["features"] = 12
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(InputError, match=re.escape(str(weights)) + ".*do not fit the generator s.json describes"):
        load_standardizer(weights)


@pytest.mark.parametrize(
    "sidecar_text, message",
    [
        ("{not json", "not a readable standardizer sidecar"),
        ('{"format": 1, "kind": "something else"}', "not a standardizer sidecar"),
        (None, "no such file"),
    ],
)
def test_a_broken_or_missing_sidecar_is_refused_by_name(tmp_path, sidecar_text, message):
    weights = save_standardizer(trained()[0], tmp_path / "s.pt")
    sidecar_path = checkpoint_files(weights)[1]
    if sidecar_text is None:
        sidecar_path.unlink()
    else:
        sidecar_path.write_text(sidecar_text)
    with pytest.raises(InputError, match=re.escape(str(sidecar_path)) + ".*" + message):
        load_standardizer(weights)


def test_apply_hu_gives_hu_within_the_window_for_any_size_and_chunking():
    standardizer: Standardizer = trained()[0]
    slices = torch.linspace(-3000, 3000, 5 * 31 * 33).reshape(5, 1, 31, 33)
    out = standardizer.apply_hu(slices, batch_size=2)
    low, high = standardizer.window
    assert out.shape == slices.shape and out.dtype == torch.float32
    assert out.min() >= low and out.max() <= high and out.max() - out.min() > 1000
    assert torch.allclose(out, standardizer.apply_hu(slices, batch_size=5), atol=1e-3)


def test_settings_and_data_that_cannot_work_are_refused():
    with pytest.raises(ValidationError, match="low end must be below"):
        StandardizerSettings(hu_window=(240, -160))
    with pytest.raises(ValueError, match="smaller than patch_size 16"):
        train_stage1(*slice_pair(size=12), TINY)
    sources, targets = slice_pair()
    with pytest.raises(ValueError, match="must have the sources' shape"):
        train_stage1(sources, targets[:, :, :30], TINY)


def test_a_loss_that_is_not_finite_stops_training_with_the_step():
    sources, targets = slice_pair()
    with pytest.raises(TrainingDiverged, match="stage 1, step 1"):
        train_stage1(torch.full_like(sources, float("nan")), targets, TINY)
