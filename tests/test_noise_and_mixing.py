"""gaussian_noise and target_mixing (Guo et al., Appendix A.2 and A.1).

Noise: the sd and mean of what is added, which units α is in (native: before the engine's z-score;
normalized: after it), the per-image probability, and that only training batches get noise in a real
training run. Mixing: the fraction reached and the rounding, duplicates when the target pool is short,
whole patients first, labels kept, determinism, and, through the real protocol, that every mixed item
comes from another domain's train split (never from validation or test) and that the manifest keeps
the figures of each cell.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import ClassVar

import numpy as np
import pytest
import torch
import toy_plugins
from pydantic import ValidationError
from test_engine import toy_set
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia import hookimpl, runner
from harmonia import registry as registry_module
from harmonia.api import ImageSet, Mitigation, NoParams, Task
from harmonia.engine import Trainer, zscore
from harmonia.errors import InputError
from harmonia.protocol import load_cohort, split_seed
from harmonia.recipe import load_recipe
from harmonia.registry import Registry
from harmonia.settings import TrainSpec
from harmonia.splits import split_patients
from harmonia.stages import MitigationStack
from harmonia_plugins.mitigations import gaussian_noise, target_mixing
from harmonia_plugins.mitigations.gaussian_noise import GaussianNoise, GaussianNoiseParams
from harmonia_plugins.mitigations.target_mixing import TargetMixing, TargetMixingParams, target_count

TASK = Task("segmentation", ("background", "square"))


pytestmark = pytest.mark.usefixtures("one_thread")


def noise(**params) -> GaussianNoise:
    return GaussianNoise(GaussianNoiseParams(**params), TASK)


def mixing(**params) -> TargetMixing:
    return TargetMixing(TargetMixingParams(**params), TASK)


# -- gaussian_noise ---------------------------------------------------------------------------------


def test_noise_has_the_configured_sd_and_mean_zero_and_leaves_targets_alone():
    torch.manual_seed(0)
    images = torch.full((50, 1, 64, 64), 7.0)  # 204,800 values
    targets = torch.randint(0, 2, (50, 64, 64))
    out, out_targets = noise(alpha=3.0).augment_batch(images, targets)
    added = out - 7.0
    assert added.std().item() == pytest.approx(3.0, rel=0.02)
    assert abs(added.mean().item()) < 0.03
    assert out_targets is targets
    assert torch.equal(images, torch.full_like(images, 7.0))  # the batch itself is not changed in place


@pytest.mark.parametrize(
    "dtype, memory_format",
    [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last), (torch.float64, None)],
)
@pytest.mark.parametrize("probability", [1.0, 0.5])
def test_noise_keeps_dtype_device_and_memory_format(dtype, memory_format, probability):
    images = torch.zeros(6, 3, 8, 8, dtype=dtype)
    if memory_format is not None:
        images = images.contiguous(memory_format=memory_format)
    out, _ = noise(alpha=1.0, probability=probability).augment_batch(images, torch.zeros(6, dtype=torch.long))
    assert (out.dtype, out.device, out.shape) == (images.dtype, images.device, images.shape)
    if memory_format is torch.channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("space", ["native", "normalized"])
def test_alpha_is_in_the_units_of_space_before_or_after_the_engines_zscore(space):
    """Images of native sd 1000 and α = 100: native noise is a tenth of an image's sd (z-scored after it),
    normalized noise is a hundred times the z-scored image's sd (added after the z-score)."""
    torch.manual_seed(1)
    sigma, alpha = 1000.0, 100.0
    images = 500.0 + sigma * torch.randn(40, 1, 64, 64)
    mitigation = noise(alpha=alpha, space=space)
    assert mitigation.batch_space == space
    out, _ = MitigationStack([mitigation]).augment_batch(images.clone(), torch.zeros(40), normalize=zscore)
    residual = out - zscore(images)
    per_image_sd = out.flatten(1).std(1)
    if space == "native":
        assert residual.std().item() == pytest.approx(alpha / (sigma**2 + alpha**2) ** 0.5, rel=0.03)
        assert torch.allclose(per_image_sd, torch.ones(40), atol=1e-4)  # the z-score came last
    else:
        assert residual.std().item() == pytest.approx(alpha, rel=0.02)
        assert per_image_sd.mean().item() == pytest.approx((1 + alpha**2) ** 0.5, rel=0.02)


@pytest.mark.parametrize("probability", [0.0, 0.3, 0.8, 1.0])
def test_each_image_gets_noise_with_the_probability(probability):
    torch.manual_seed(2)
    images = torch.zeros(4000, 1, 4, 4)
    out, _ = noise(alpha=2.0, probability=probability).augment_batch(images, torch.zeros(4000))
    changed = out.flatten(1) != 0
    noised = changed.any(1)
    assert noised.float().mean().item() == pytest.approx(probability, abs=0.03)
    assert torch.equal(changed[noised], torch.ones_like(changed[noised]))  # a noised image is noised everywhere
    if probability > 0:
        assert out[noised].std().item() == pytest.approx(2.0, rel=0.05)


def test_no_noise_draws_nothing_and_the_same_seed_gives_the_same_noise():
    images = torch.randn(4, 1, 8, 8)
    state = torch.get_rng_state()
    for params in ({"alpha": 0.0}, {"alpha": 5.0, "probability": 0.0}):
        out, _ = noise(**params).augment_batch(images, torch.zeros(4))
        assert out is images
    assert torch.equal(torch.get_rng_state(), state)  # a zero-noise cell is its baseline, bit for bit

    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append(noise(alpha=1.0, probability=0.5).augment_batch(images, torch.zeros(4))[0])
    assert torch.equal(*draws)


def test_noise_params_are_bounded():
    assert GaussianNoise.stages() == ["augment_batch"]  # nothing at transform_images: validation and test untouched
    for bad in ({"alpha": -1.0}, {"alpha": 1.0, "probability": 1.5}, {"alpha": 1.0, "space": "hu"}, {}):
        with pytest.raises(ValidationError):
            GaussianNoiseParams(**bad)


class RecordingNet(ToyNet):
    """ToyNet that records every input it sees, with whether it was in training mode."""

    def __init__(self):
        super().__init__(ToyNetParams(width=4), TASK)
        self.seen: list[tuple[bool, torch.Tensor]] = []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return super().forward(x)


def _distance_to_nearest(rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each row, the largest absolute difference to the candidate it is closest to."""
    return (rows.flatten(1)[:, None] - candidates.flatten(1)[None]).abs().amax(2).amin(1)


@pytest.mark.parametrize("alpha", [0.0, 20.0])
def test_only_training_batches_get_noise_in_a_real_training(alpha):
    train, val, test = toy_set(24, seed=0), toy_set(12, seed=1), toy_set(12, seed=2, invert=True)
    torch.manual_seed(0)
    model = RecordingNet()
    settings = TrainSpec(epochs=2, batch_size=8, lr=0.01, device="cpu", selection="best_val")
    trainer = Trainer(model, [noise(alpha=alpha)], PixelAccuracy(NoParams(), TASK), settings, torch.device("cpu"))
    trainer.fit(train, val, None)
    trainer.predictions(test)

    training = torch.cat([x for mode, x in model.seen if mode])
    evaluation = torch.cat([x for mode, x in model.seen if not mode])
    assert len(training) == 2 * len(train) and len(evaluation) == 2 * len(val) + len(test)
    # every image the model saw in eval mode is a validation or test image exactly as the engine z-scores it
    clean = zscore(torch.cat([val.images, test.images]))
    assert _distance_to_nearest(evaluation, clean).max().item() < 1e-5
    # every training image is off its clean self by the noise (about 0.5 in z-scored units here), or exact without
    gap = _distance_to_nearest(training, zscore(train.images))
    if alpha:
        assert gap.min().item() > 0.5
    else:
        assert gap.max().item() < 1e-5


# -- target_mixing: counts, picks, duplicates -----------------------------------------------------------


def image_set(sizes: list[int], domain: str, start: int = 0) -> ImageSet:
    """Patient k of ``domain`` has ``sizes[k]`` items; item i's image is filled with its id ``start + i`` and
    its label is ``10 * id``, so any item can be traced back and its label checked."""
    ids = start + np.arange(sum(sizes))
    patients = np.array([f"{domain}{k:03d}" for k, size in enumerate(sizes) for _ in range(size)], dtype=object)
    return ImageSet(
        torch.from_numpy(ids).float()[:, None, None, None].expand(-1, 1, 2, 2).clone(),
        torch.from_numpy(10 * ids).long(),
        patients,
        np.array([domain] * len(ids), dtype=object),
    )


def ids_of(items: ImageSet) -> np.ndarray:
    return items.images[:, 0, 0, 0].long().numpy()


def test_target_count_rounds_half_up():
    assert target_count(10, 0.2) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert target_count(12, 0.3) == 5  # 5.14
    assert target_count(9, 0.1) == 1  # 1.0000000000000002
    assert target_count(7, 0.5) == 7
    assert target_count(3, 0.1) == 0  # 0.33
    assert target_count(100, 0.0) == 0


@pytest.mark.parametrize("n", [7, 30, 101])
@pytest.mark.parametrize("f", [0.1, 0.2, 0.3, 0.4, 0.5])
@pytest.mark.parametrize("pick", ["patient", "item"])
def test_the_requested_fraction_is_reached_within_one_item(n, f, pick):
    rng = np.random.default_rng(n)
    source = image_set([1] * n, "A")
    target = image_set(list(rng.integers(1, 6, 120)), "B", start=10_000)
    mix = mixing(fraction=f, pick=pick)
    out = mix.adjust_training_set(source, target, np.random.default_rng(0))
    t = len(out) - n

    assert abs(t - f * n / (1 - f)) <= 0.5 + 1e-9
    assert abs(t - f * (n + t)) <= 1  # ±1 item of the requested fraction of the final set
    assert torch.equal(out.images[:n], source.images) and list(out.domains[:n]) == ["A"] * n
    mixed = out.take(np.arange(n, n + t))
    ids = ids_of(mixed)
    assert len(set(ids)) == t  # the pool is large enough: no duplicates
    record = mix.cell_record()
    assert record == {
        "source_items": n,
        "target_items": t,
        "distinct_target_items": t,
        "duplicated_target_items": 0,
        "target_patients": len(set(mixed.patients)),
        "fraction_reached": pytest.approx(t / (n + t)),
    }


def test_mixed_items_keep_their_labels_patients_and_domains():
    source, target = image_set([3] * 6, "A"), image_set([2, 4, 3, 1, 5], "B", start=100)
    out = MitigationStack([mixing(fraction=0.4)]).adjust_training_set(source, target, np.random.default_rng(5))
    mixed = out.take(np.arange(len(source), len(out)))
    position = {item_id: i for i, item_id in enumerate(ids_of(target))}
    original = target.take([position[i] for i in ids_of(mixed)])
    assert torch.equal(mixed.targets, original.targets) and torch.equal(
        mixed.targets, 10 * torch.from_numpy(ids_of(mixed))
    )
    assert list(mixed.patients) == list(original.patients) and set(mixed.domains) == {"B"}


def test_whole_patients_first_then_the_last_one_trimmed():
    source = image_set([1] * 30, "A")  # t = round(0.25 · 30 / 0.75) = 10
    sizes = [4, 1, 3, 6, 2, 5, 4, 3]
    target = image_set(sizes, "B", start=1000)
    full = Counter(target.patients)
    picked = set()
    for seed in range(30):
        mix = mixing(fraction=0.25)
        out = mix.adjust_training_set(source, target, np.random.default_rng(seed))
        counts = Counter(out.patients[30:])
        assert sum(counts.values()) == 10
        partial = [p for p, c in counts.items() if c < full[p]]
        assert len(partial) <= 1  # every patient taken whole but the last one
        assert mix.cell_record()["target_patients"] == len(counts)
        picked.add(frozenset(counts))
    assert len(picked) > 10  # the patients are drawn at random


def test_duplicates_cycle_through_the_pool_when_it_is_short():
    source = image_set([2] * 10, "A")  # n = 20, f = 0.5: t = 20
    target = image_set([2, 3, 1], "B", start=1000)  # m = 6
    mix = mixing(fraction=0.5)
    out = mix.adjust_training_set(source, target, np.random.default_rng(0))
    ids = ids_of(out)[20:]
    assert len(ids) == 20
    counts = Counter(ids)
    assert set(counts) == set(ids_of(target))  # every target item is used
    assert set(counts.values()) == {3, 4}  # 20 = 6 + 6 + 6 + 2: each used 3 or 4 times
    assert set(ids[:6]) == set(ids_of(target))  # every item once before any repeats
    assert torch.equal(out.targets[20:], 10 * torch.from_numpy(ids))
    assert mix.cell_record() == {
        "source_items": 20,
        "target_items": 20,
        "distinct_target_items": 6,
        "duplicated_target_items": 14,
        "target_patients": 3,
        "fraction_reached": 0.5,
    }


def test_the_same_seed_mixes_the_same_items():
    source, target = image_set([3] * 10, "A"), image_set([2, 3, 4, 1, 5, 2, 3], "B", start=100)
    for fraction, pick in ((0.3, "patient"), (0.3, "item"), (0.6, "patient")):
        sets = [
            mixing(fraction=fraction, pick=pick).adjust_training_set(source, target, np.random.default_rng(seed))
            for seed in (7, 7, 8)
        ]
        assert np.array_equal(ids_of(sets[0]), ids_of(sets[1]))
        assert not np.array_equal(ids_of(sets[0]), ids_of(sets[2]))


def test_fraction_zero_changes_nothing_and_mixing_without_target_images_is_an_input_error():
    source = image_set([3] * 4, "A")
    for target in (None, image_set([], "B"), image_set([3], "B")):
        mix = mixing(fraction=0.0)
        assert mix.adjust_training_set(source, target, np.random.default_rng(0)) is source
        assert mix.cell_record()["target_items"] == 0
    for target in (None, image_set([], "B")):
        with pytest.raises(InputError, match=r"^target_mixing: fraction 0\.2 needs target-domain training images"):
            mixing(fraction=0.2).adjust_training_set(source, target, np.random.default_rng(0))
    for bad in ({"fraction": 1.0}, {"fraction": -0.1}, {"fraction": 0.2, "pick": "slice"}, {}):
        with pytest.raises(ValidationError):
            TargetMixingParams(**bad)


# -- target_mixing through the real protocol ------------------------------------------------------------


class MixedSetSpy(Mitigation):
    """Placed after target_mixing: records the training set it leaves and the target set it was given."""

    name = "mixed_set_spy"
    uses_target_labels = True
    received: ClassVar[list[tuple[ImageSet, ImageSet]]] = []

    def adjust_training_set(self, train, target_train, rng):
        MixedSetSpy.received.append((train, target_train))
        return train


@hookimpl
def harmonia_mitigations():
    return [MixedSetSpy]


def test_the_protocol_mixes_only_other_domains_train_items_and_the_manifest_keeps_the_counts(
    toy_recipe, monkeypatch, tmp_path
):
    registry = Registry.from_entry_points(extra=[toy_plugins, gaussian_noise, target_mixing, sys.modules[__name__]])
    monkeypatch.setattr(registry_module, "_default", registry)
    MixedSetSpy.received.clear()
    toy_recipe["mitigations"] = [{"plugin": "target_mixing", "params": {"fraction": 0.3}}, {"plugin": "mixed_set_spy"}]
    toy_recipe["sweep"] = {"mitigations.0.params.fraction": [0.3, 0.6]}
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    cells = [(sweep, domain) for sweep in (0, 1) for domain in ("A", "B")]  # the order cells run in
    assert len(MixedSetSpy.received) == len(cells)
    held_out = {p for split in splits.values() for p in split.val + split.test}
    originals = {(p, d, tuple(x.flatten().tolist())): y for x, y, p, d in zip(*_fields(data.items))}
    manifest = {(c["sweep_id"], c["train_domain"]): c for c in run.manifest["cells"]}
    for (sweep, domain), (train, target_train) in zip(cells, MixedSetSpy.received):
        other = "B" if domain == "A" else "A"
        # what reached the mitigations: exactly the other domain's train split, labelled
        assert set(target_train.patients) == set(splits[other].train) and target_train.labelled
        own = train.domains == domain
        assert set(train.patients[own]) == set(splits[domain].train)
        mixed = train.take(~own)
        assert set(mixed.domains) == {other}
        assert set(mixed.patients) <= set(splits[other].train) and not set(mixed.patients) & held_out
        for x, y, p, d in zip(*_fields(mixed)):  # each mixed item is an original item with its own label
            assert torch.equal(originals[(p, d, tuple(x.flatten().tolist()))], y)
        n, t = int(own.sum()), len(mixed)
        assert t == target_count(n, (0.3, 0.6)[sweep])
        distinct = len({tuple(x.flatten().tolist()) for x in mixed.images})
        expected = {
            "target_mixing.source_items": n,
            "target_mixing.target_items": t,
            "target_mixing.distinct_target_items": distinct,
            "target_mixing.duplicated_target_items": t - distinct,
            "target_mixing.target_patients": len(set(mixed.patients)),
            "target_mixing.fraction_reached": pytest.approx(t / (n + t)),
        }
        assert {k: v for k, v in manifest[(sweep, domain)].items() if k.startswith("target_mixing.")} == expected
    assert manifest[(1, "A")]["target_mixing.duplicated_target_items"] > 0  # f = 0.6 needs more than the pool


def _fields(items: ImageSet):
    return items.images, items.targets, items.patients, items.domains
