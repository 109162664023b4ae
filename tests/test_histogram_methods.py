"""histogram_standardization (Nyúl–Udupa) and histogram_matching, and their helpers in harmonia.intensity.

Standardisation: two vendors that differ by a monotone transfer end up with the same foreground
quantiles; the landmarks come from the train split alone; the foreground mask keeps CT air out of
them; the ends (extrapolate or clamp); 2-D and 3-D items, shape and dtype kept. Matching: each item's
foreground quantiles become the reference's, the order of its values is kept, the reference is the
train split's pooled foreground. Both: fit_on source_and_target uses the other domains' train splits,
registration and parameter checks, and, through the real protocol, that the model sees test images
standardised with landmarks learned from the training domain's train split.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
import toy_plugins
from pydantic import ValidationError
from toy_plugins import ToyNet

from harmonia import hookimpl, runner
from harmonia import registry as registry_module
from harmonia.api import ImageSet, Task
from harmonia.engine import zscore
from harmonia.errors import InputError, PluginError
from harmonia.intensity import Foreground, item_landmarks, pooled_percentiles
from harmonia.protocol import load_cohort, split_seed
from harmonia.recipe import load_recipe
from harmonia.registry import Registry
from harmonia.splits import split_patients
from harmonia_plugins.mitigations import histogram_matching, histogram_standardization
from harmonia_plugins.mitigations.histogram_matching import HistogramMatching, HistogramMatchingParams
from harmonia_plugins.mitigations.histogram_standardization import (
    HistogramStandardization,
    HistogramStandardizationParams,
)

TASK = Task("segmentation", ("background", "square"))
CPU = torch.device("cpu")
BETWEEN = (5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0)  # between the default landmarks

pytestmark = pytest.mark.usefixtures("one_thread")


def standardization(**params) -> HistogramStandardization:
    return HistogramStandardization(HistogramStandardizationParams(**params), TASK)


def matching(**params) -> HistogramMatching:
    return HistogramMatching(HistogramMatchingParams(**params), TASK)


def as_set(images: np.ndarray | torch.Tensor, domain: str = "A") -> ImageSet:
    images = torch.as_tensor(images, dtype=torch.float32)
    n = len(images)
    return ImageSet(
        images, None, np.array([f"{domain}{i:03d}" for i in range(n)], dtype=object), np.array([domain] * n)
    )


def phantoms(n: int, seed: int, shape=(32, 32), background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` items ``[n, 1, *shape]``: a centred box of tissue (N(100, 15), clipped below at 70) on a constant
    ``background``; returns the images and the tissue mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s // 4, s - s // 4) for s in shape)] = True
    images = np.full((n, 1, *shape), background, np.float32)
    tissue = np.clip(rng.normal(100.0, 15.0, (n, int(mask.sum()))), 70.0, None)
    images[:, 0, mask] = tissue
    return images, mask


def tissue_percentiles(images: torch.Tensor | np.ndarray, mask: np.ndarray, percentiles) -> np.ndarray:
    """Each item's percentiles (np.percentile) over the voxels of ``mask``: ``[n, len(percentiles)]``."""
    images = np.asarray(images, dtype=np.float64)
    return np.percentile(images[:, 0, mask], percentiles, axis=1).T


def vendor_b(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Vendor B's rendering of vendor A's images: y = 3·x^1.3 + 50 on the tissue, the background unchanged."""
    out = images.copy()
    out[:, 0, mask] = 3.0 * out[:, 0, mask] ** 1.3 + 50.0
    return out


# -- histogram_standardization ------------------------------------------------------------------------------


@pytest.mark.parametrize("foreground", ["threshold", "otsu"])
def test_two_vendors_differing_by_a_monotone_transfer_end_up_with_the_same_quantiles(foreground):
    train, mask = phantoms(20, seed=0)
    test_a, _ = phantoms(10, seed=1)
    test_b = vendor_b(test_a, mask)
    mitigation = standardization(foreground=foreground, threshold=10.0)
    mitigation.fit(as_set(train), None, CPU)

    before = tissue_percentiles(test_a, mask, BETWEEN), tissue_percentiles(test_b, mask, BETWEEN)
    assert np.abs(before[0] - before[1]).min() > 100  # far apart in native units
    out_a, out_b = (mitigation.transform_images(torch.from_numpy(x)) for x in (test_a, test_b))
    after = tissue_percentiles(out_a, mask, BETWEEN), tissue_percentiles(out_b, mask, BETWEEN)
    # between the landmarks the map is linear where the transfer is not: close, on a 0-100 scale
    assert np.abs(after[0] - after[1]).max() < 0.5
    # at the landmarks themselves, each item lands on the standard ones (up to the gap between the two voxels
    # that a percentile interpolates, at which the map bends)
    for out in (out_a, out_b):
        landmarks = tissue_percentiles(out, mask, mitigation.params.percentiles)
        assert np.allclose(landmarks, mitigation.standard[None], atol=0.5)


def test_the_standard_landmarks_are_the_mean_of_the_train_items_mapped_onto_the_scale():
    train, mask = phantoms(12, seed=2)
    train[6:, 0, mask] = train[6:, 0, mask] ** 1.5  # two kinds of training item, skewed differently
    mitigation = standardization(foreground="threshold", threshold=10.0, s_min=1.0, s_max=11.0)
    mitigation.fit(as_set(train), None, CPU)
    own = tissue_percentiles(train, mask, mitigation.params.percentiles)
    expected = 1.0 + 10.0 * ((own - own[:, :1]) / (own[:, -1:] - own[:, :1])).mean(0)
    assert np.allclose(mitigation.standard, expected)
    assert mitigation.standard[0] == 1.0 and mitigation.standard[-1] == 11.0
    record = mitigation.cell_record()
    assert record["standard_p50"] == pytest.approx(expected[5]) and record["fit_items"] == 12
    assert record["fit_items_without_foreground"] == 0 and record["foreground_fraction"] == pytest.approx(0.25)


def test_landmarks_are_learned_from_train_only_and_validation_is_mapped_onto_them():
    train, mask = phantoms(10, seed=3)
    val = train.copy()
    val[:, 0, mask] = np.exp(val[:, 0, mask] / 20.0)  # a very different shape of histogram
    mitigation = standardization(foreground="threshold", threshold=10.0)
    mitigation.fit(as_set(train), None, CPU)
    learned = mitigation.standard.copy()

    both = standardization(foreground="threshold", threshold=10.0)
    both.fit(as_set(np.concatenate([train, val])), None, CPU)
    assert np.abs(both.standard - learned).max() > 2  # validation images would have moved the landmarks

    out = mitigation.transform_images(torch.from_numpy(val))
    assert np.array_equal(mitigation.standard, learned)  # transforming learns nothing
    assert np.allclose(tissue_percentiles(out, mask, mitigation.params.percentiles), learned[None], atol=0.5)
    assert torch.equal(mitigation.transform_images(torch.from_numpy(val)), out)  # deterministic


def ct_slices(air_fractions: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CT-like 40×40 slices: the same tissue histogram (HU, N(40, 30) with a bone tail) in every slice, the
    first ``air_fractions[i]`` of the rows of slice i air at -1000 HU instead. Returns images and tissue masks."""
    rng = np.random.default_rng(seed)
    images = np.empty((len(air_fractions), 1, 40, 40), np.float32)
    masks = np.zeros(images.shape, bool)
    tissue = np.concatenate([rng.normal(40.0, 30.0, 1500), rng.uniform(300.0, 900.0, 100)])
    for i, fraction in enumerate(air_fractions):
        rows = int(round(fraction * 40))
        images[i, 0] = rng.permutation(tissue).reshape(40, 40)
        images[i, 0, :rows] = -1000.0
        masks[i, 0, rows:] = True
    return images, masks


def test_the_foreground_mask_keeps_ct_air_out_of_the_landmarks():
    train, _ = ct_slices([0.6] * 8, seed=4)
    standards = {}
    for foreground in ("all", "threshold", "otsu"):
        mitigation = standardization(foreground=foreground, threshold=-500.0)
        mitigation.fit(as_set(train), None, CPU)
        standards[foreground] = mitigation.standard
    # with every voxel, the landmarks up to the 50th percentile are all air: s_min
    assert np.array_equal(standards["all"][:6], np.zeros(6))
    for foreground in ("threshold", "otsu"):
        assert np.diff(standards[foreground]).min() > 0.5  # spread over the tissue
        assert np.allclose(standards[foreground], standards["threshold"], atol=0.5)

    # two slices of the same tissue, one with more air (a slice at the body's edge): only with a mask is
    # the tissue standardised alike
    slices, masks = ct_slices([0.3, 0.7], seed=5)
    for foreground, alike in (("threshold", True), ("otsu", True), ("all", False)):
        mitigation = standardization(foreground=foreground, threshold=-500.0)
        mitigation.fit(as_set(train), None, CPU)
        out = mitigation.transform_images(torch.from_numpy(slices)).numpy()
        medians = [np.median(out[i, 0][masks[i, 0]]) for i in range(2)]
        gap = abs(medians[0] - medians[1])
        assert (gap < 1.0) if alike else (gap > 10.0), (foreground, medians)


def test_an_empty_foreground_falls_back_to_every_voxel_and_is_counted():
    train, _ = phantoms(4, seed=6)
    train[0] = 0.0  # a blank slice: no voxel above the threshold
    mitigation = standardization(foreground="threshold", threshold=10.0)
    mitigation.fit(as_set(train), None, CPU)
    assert mitigation.cell_record()["fit_items_without_foreground"] == 1
    assert np.isfinite(mitigation.standard).all()
    out = mitigation.transform_images(torch.from_numpy(train))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no training item has a foreground of more than one value"):
        standardization(foreground="threshold", threshold=10.0).fit(as_set(np.zeros((3, 1, 4, 4))), None, CPU)


@pytest.mark.parametrize("ends", ["extrapolate", "clamp"])
def test_values_beyond_the_end_landmarks_are_extrapolated_or_clamped(ends):
    train, mask = phantoms(6, seed=7, background=-50.0)
    mitigation = standardization(foreground="threshold", threshold=0.0, ends=ends)
    mitigation.fit(as_set(train), None, CPU)
    item = torch.from_numpy(train[:1])
    out = mitigation.transform_images(item).numpy()[0, 0]
    landmarks = item_landmarks(item, mitigation.params.percentiles, Foreground("threshold", 0.0)).values[0]
    standard = mitigation.standard
    background = out[~mask]
    if ends == "clamp":
        assert np.all(background == standard[0])
        assert out[mask].max() == pytest.approx(standard[-1])
    else:
        slope = (standard[1] - standard[0]) / (landmarks[1] - landmarks[0])
        assert np.allclose(background, standard[0] + (-50.0 - landmarks[0]) * slope, rtol=1e-5)
        assert background[0] < standard[0] - 10 and out[mask].max() > standard[-1]
    # the map is non-decreasing: the order of the item's values is kept
    order = np.argsort(train[0, 0].ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-4)


@pytest.mark.parametrize("shape", [(24, 24), (8, 12, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_2d_and_3d_items_keep_shape_and_dtype(shape, dtype):
    train, mask = phantoms(5, seed=8, shape=shape)
    images = torch.from_numpy(train).to(dtype)
    for mitigation in (standardization(foreground="otsu"), matching(foreground="otsu", levels=32)):
        mitigation.fit(as_set(train), None, CPU)
        out = mitigation.transform_images(images)
        assert (out.shape, out.dtype, out.device) == (images.shape, images.dtype, images.device)
        assert torch.isfinite(out).all() and not torch.equal(out, images)
        assert mitigation.transform_images(images[:0]).shape == (0, 1, *shape)
        if isinstance(mitigation, HistogramStandardization):  # each item's tissue lands on the standard landmarks
            landmarks = tissue_percentiles(out, mask, mitigation.params.percentiles)
            assert np.allclose(landmarks, mitigation.standard[None], atol=1.0)  # 144 voxels: a coarse check


# -- histogram_matching --------------------------------------------------------------------------------------


def test_matched_items_take_the_reference_quantiles_and_keep_their_order():
    train, mask = phantoms(16, seed=9, shape=(64, 64))
    test = vendor_b(phantoms(6, seed=10, shape=(64, 64))[0], mask)
    test[3:, 0, mask] = np.sqrt(test[3:, 0, mask]) * 40.0  # another vendor again
    mitigation = matching(foreground="threshold", threshold=10.0, levels=101)
    mitigation.fit(as_set(train), None, CPU)

    # the reference is the train split's pooled tissue, by np.percentile
    levels = np.linspace(0, 100, 101)
    assert np.allclose(mitigation.reference, np.percentile(train[:, 0, mask].astype(np.float64), levels))
    out = mitigation.transform_images(torch.from_numpy(test)).numpy()
    probe = (2.0, 10.0, 33.0, 50.0, 66.0, 90.0, 98.0)
    reference = np.percentile(train[:, 0, mask].astype(np.float64), probe)
    matched = tissue_percentiles(out, mask, probe)
    assert np.abs(tissue_percentiles(test, mask, probe) - reference).max() > 100  # far apart before
    assert np.abs(matched - reference[None]).max() < 0.5  # the tissue's spread is 15
    for before, after in zip(test, out):  # monotone within each item
        order = np.argsort(before.ravel(), kind="stable")
        assert np.all(np.diff(after.ravel()[order]) >= -1e-4)
    assert np.all(out[:, 0, ~mask] == mitigation.reference[0])  # clamp: the background to the reference's minimum
    record = mitigation.cell_record()
    assert record["reference_p50"] == pytest.approx(np.percentile(train[:, 0, mask], 50), abs=0.5)
    assert record["fit_items"] == 16


def test_the_matching_reference_comes_from_train_only():
    train, mask = phantoms(8, seed=11)
    val = train * 2.0
    mitigation = matching(foreground="threshold", threshold=10.0)
    mitigation.fit(as_set(train), None, CPU)
    learned = mitigation.reference.copy()
    with_val = pooled_percentiles(np.concatenate([train, val]), mitigation.percentiles, Foreground("threshold", 10.0))
    assert np.abs(with_val - learned).max() > 20  # the validation images would have moved it
    out = mitigation.transform_images(torch.from_numpy(val))
    assert np.array_equal(mitigation.reference, learned)
    assert np.allclose(tissue_percentiles(out, mask, (50.0,)), np.percentile(train[:, 0, mask], 50), atol=1.0)


# -- both: fit_on, registration, parameters --------------------------------------------------------------------


@pytest.mark.parametrize("make", [standardization, matching])
def test_fit_on_source_and_target_also_learns_from_the_target_train_images(make):
    train, mask = phantoms(8, seed=12)
    target = as_set(vendor_b(phantoms(8, seed=13)[0], mask) ** 0.5, "B")
    learned = {}
    for fit_on in ("source", "source_and_target"):
        mitigation = make(foreground="threshold", threshold=10.0, fit_on=fit_on)
        mitigation.fit(as_set(train), target, CPU)
        learned[fit_on] = mitigation.standard if make is standardization else mitigation.reference
    pooled = make(foreground="threshold", threshold=10.0)
    pooled.fit(ImageSet.concat([as_set(train), target]), None, CPU)
    expected = pooled.standard if make is standardization else pooled.reference
    assert np.allclose(learned["source_and_target"], expected)
    assert np.abs(learned["source_and_target"] - learned["source"]).max() > 1  # the target images counted

    for target_train in (None, as_set(np.zeros((0, 1, 32, 32)), "B")):
        with pytest.raises(InputError, match="fit_on source_and_target needs target-domain training images"):
            make(fit_on="source_and_target").fit(as_set(train), target_train, CPU)


def test_both_register_and_their_params_validate():
    registry = Registry.from_entry_points(extra=[histogram_standardization, histogram_matching])
    assert not [f for f in registry.failures if {"histogram_standardization", "histogram_matching"} & set(f.names)]
    made = registry.create("mitigation", "histogram_standardization", {"percentiles": [2, 50, 98]}, TASK)
    assert made.params.percentiles == (2.0, 50.0, 98.0) and made.stages() == ["fit", "transform_images"]
    made = registry.create("mitigation", "histogram_matching", {"foreground": "all"}, TASK)
    assert made.params.levels == 256 and made.stages() == ["fit", "transform_images"]
    assert not HistogramStandardization.uses_target_images and not HistogramMatching.uses_target_images
    for bad in (
        {"percentiles": [50]},
        {"percentiles": [10, 10, 90]},
        {"percentiles": [90, 10]},
        {"percentiles": [1, 101]},
        {"s_min": 5, "s_max": 5},
        {"foreground": "mask"},
        {"fit_on": "target"},
        {"ends": "wrap"},
        {"percentile": [1, 99]},
    ):
        with pytest.raises(PluginError, match="histogram_standardization"):
            registry.create("mitigation", "histogram_standardization", bad, TASK)
    for bad in ({"levels": 2}, {"levels": 10_000}, {"threshold": "air"}, {"ends": "wrap"}):
        with pytest.raises(ValidationError):
            HistogramMatchingParams(**bad)


# -- through the real protocol ---------------------------------------------------------------------------------


class StandardizationSpy(HistogramStandardization):
    """histogram_standardization that keeps every instance and what its fit was given."""

    name = "histogram_standardization_spy"
    instances: ClassVar[list[StandardizationSpy]] = []

    def __init__(self, params, task):
        super().__init__(params, task)
        StandardizationSpy.instances.append(self)

    def fit(self, train, target_train, device):
        self.fitted_on = (train, target_train)
        super().fit(train, target_train, device)


class RecordingToyNet(ToyNet):
    """ToyNet that keeps every input it is given in eval mode (one list per instance, in creation order)."""

    name = "recording_toynet"
    seen: ClassVar[list[list[torch.Tensor]]] = []

    def __init__(self, params, task):
        super().__init__(params, task)
        self.inputs: list[torch.Tensor] = []
        RecordingToyNet.seen.append(self.inputs)

    def forward(self, x):
        if not self.training:
            self.inputs.append(x.detach().clone())
        return super().forward(x)


@hookimpl
def harmonia_mitigations():
    return [StandardizationSpy]


@hookimpl
def harmonia_models():
    return [RecordingToyNet]


def test_the_model_sees_test_images_standardised_with_the_train_splits_landmarks(toy_recipe, monkeypatch, tmp_path):
    registry = Registry.from_entry_points(
        extra=[toy_plugins, histogram_standardization, histogram_matching, sys.modules[__name__]]
    )
    monkeypatch.setattr(registry_module, "_default", registry)
    StandardizationSpy.instances.clear()
    RecordingToyNet.seen.clear()
    toy_recipe["model"] = {"plugin": "recording_toynet", "params": {"width": 4}}
    toy_recipe["mitigations"] = [{"plugin": "histogram_standardization_spy"}]
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    manifest = {c["train_domain"]: c for c in run.manifest["cells"]}
    assert len(StandardizationSpy.instances) == len(RecordingToyNet.seen) == 2
    for domain, spy, inputs in zip(("A", "B"), StandardizationSpy.instances, RecordingToyNet.seen):
        other = "B" if domain == "A" else "A"
        train, target_train = spy.fitted_on
        assert set(train.patients) == set(splits[domain].train) and set(train.domains) == {domain}
        # target_train reaches fit though uses_target_images is False: unlabelled, the other domain's train split
        assert not target_train.labelled and set(target_train.patients) == set(splits[other].train)
        own = standardization(foreground="otsu")
        own.fit(data.items.of_patients(splits[domain].train, domain), None, CPU)
        assert np.allclose(spy.standard, own.standard)
        assert manifest[domain]["histogram_standardization_spy.standard_p50"] == pytest.approx(own.standard[5])

        seen = torch.cat(inputs).flatten(1)
        for test_domain in ("A", "B"):
            test = data.items.of_patients(splits[test_domain].test, test_domain).images
            expected = zscore(own.transform_images(test)).flatten(1)
            assert nearest(expected, seen).max().item() < 1e-4  # each test image, standardised, reached the model
            assert nearest(zscore(test).flatten(1), seen).min().item() > 1e-2  # and never unstandardised


def nearest(rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each row, the largest absolute difference to the candidate it is closest to."""
    return (rows[:, None] - candidates[None]).abs().amax(2).amin(1)
