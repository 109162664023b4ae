"""ct_degrade: dose sets the noise, the filter and blur set the sharpness, water stays water, a seed repeats itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harmonia.ct_degrade import DegradeSettings, degrade, degrade_batch, draw

SIDE = 48
_yy, _xx = np.mgrid[:SIDE, :SIDE] - (SIDE - 1) / 2
RADIUS = np.hypot(_yy, _xx)
#: a water disc (0 HU) in air, and its centre, well away from the edge
WATER = np.where(RADIUS < 0.4 * SIDE, 0.0, -1000.0)
CENTRE = RADIUS < 0.25 * SIDE


def fixed(**values) -> DegradeSettings:
    """Settings with every range fixed: ramp filter, no blur or resampling, unless ``values`` say otherwise."""
    ranges = {"photons": 1e6, "sharpen": 0.0, "blur_sigma": 0.0, "downsample": 1.0}
    ranges.update({k: v for k, v in values.items() if k in ranges})
    filters = values.get("filters", ("ramp",))
    return DegradeSettings(filters=filters, **{k: (v, v) for k, v in ranges.items()})


def run(image: np.ndarray, seed: int = 0, **values) -> np.ndarray:
    return degrade(image, fixed(**values), np.random.default_rng(seed))


def high_frequency_power(image: np.ndarray) -> float:
    """Power above half the Nyquist frequency."""
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image))) ** 2
    return float(spectrum[RADIUS > SIDE / 4].sum())


def gradient_energy(image: np.ndarray) -> float:
    return float(sum((g**2).sum() for g in np.gradient(image)))


def test_noise_in_water_grows_as_the_dose_falls():
    sds = [run(WATER, photons=photons)[CENTRE].std() for photons in (1e6, 1e5, 1e4, 1e3)]
    assert all(low < high for low, high in zip(sds, sds[1:]))
    assert sds[-1] > 4 * sds[0]


def test_water_stays_near_0_hu_and_air_near_minus_1000_at_high_dose():
    image = run(WATER, photons=1e7)
    assert abs(image[CENTRE].mean()) < 5
    assert image[RADIUS > 0.45 * SIDE].mean() == pytest.approx(-1000, abs=30)


def test_values_below_air_come_back_as_air():
    outside = np.where(RADIUS < 0.4 * SIDE, WATER, -3024.0)
    assert run(outside, photons=1e7)[RADIUS > 0.45 * SIDE].mean() == pytest.approx(-1000, abs=30)


@pytest.mark.parametrize("smoother", ["shepp-logan", "cosine", "hamming", "hann"])
def test_a_smoother_filter_lowers_high_frequency_power_than_ramp(smoother):
    """Same seed, so the same Poisson noise, reconstructed with two filters."""
    ramp = high_frequency_power(run(WATER, photons=1e4, filters=("ramp",)))
    assert high_frequency_power(run(WATER, photons=1e4, filters=(smoother,))) < 0.9 * ramp


def test_unsharp_masking_raises_high_frequency_power():
    plain = high_frequency_power(run(WATER, photons=1e5))
    assert high_frequency_power(run(WATER, photons=1e5, sharpen=1.0)) > 1.5 * plain


@pytest.mark.parametrize("loss", [{"blur_sigma": 1.5}, {"downsample": 2.0}])
def test_resolution_loss_lowers_gradient_energy(loss):
    assert gradient_energy(run(WATER, photons=1e6, **loss)) < 0.8 * gradient_energy(run(WATER, photons=1e6))


def test_shape_is_kept_for_a_non_square_slice_and_a_batch():
    slab = np.full((40, 56), -1000.0)
    slab[10:30, 8:48] = 50.0
    out = run(slab, downsample=1.7, blur_sigma=0.5)
    assert out.shape == (40, 56) and out.dtype == np.float32
    assert abs(out[15:25, 15:40].mean() - 50) < 15  # the slab keeps its HU away from its edges
    batch = torch.from_numpy(np.stack([WATER, WATER, WATER])[:, None].astype(np.float32))
    degraded = degrade_batch(batch, DegradeSettings(), np.random.default_rng(0))
    assert degraded.shape == batch.shape and degraded.dtype == batch.dtype
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        degrade_batch(batch[:, 0], DegradeSettings(), np.random.default_rng(0))


def test_a_seed_gives_the_same_output_and_each_batch_slice_its_own_draw():
    settings = DegradeSettings()
    first = degrade(WATER, settings, np.random.default_rng(7))
    assert np.array_equal(first, degrade(WATER, settings, np.random.default_rng(7)))
    assert not np.array_equal(first, degrade(WATER, settings, np.random.default_rng(8)))
    batch = torch.from_numpy(np.stack([WATER, WATER])[:, None].astype(np.float32))
    rng = np.random.default_rng(7)
    one_by_one = [degrade(WATER, settings, rng) for _ in range(2)]
    together = degrade_batch(batch, settings, np.random.default_rng(7))
    assert np.array_equal(together[:, 0].numpy(), np.stack(one_by_one))
    assert not np.array_equal(one_by_one[0], one_by_one[1])


def test_draws_stay_in_their_ranges():
    settings = DegradeSettings(photons=(1e3, 1e5), blur_sigma=(0.2, 0.4), downsample=(1.0, 2.0), filters=("hann",))
    rng = np.random.default_rng(0)
    for acquisition in (draw(settings, rng) for _ in range(50)):
        assert 1e3 <= acquisition.photons <= 1e5 and 0.2 <= acquisition.blur_sigma <= 0.4
        assert 1.0 <= acquisition.downsample <= 2.0 and acquisition.filter_name == "hann"


@pytest.mark.parametrize(
    "bad", [{"photons": (1e5, 1e3)}, {"downsample": (0.5, 1.0)}, {"blur_sigma": (-1.0, 0.0)}, {"filters": ()}]
)
def test_invalid_ranges_are_rejected(bad):
    with pytest.raises(ValidationError):
        DegradeSettings(**bad)
