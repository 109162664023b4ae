"""The vendor probe (seed 002, "Name that manufacturer"): its network, inputs, training and metrics on hand-made
cells whose domains differ by a known amount, and the evaluator end to end through the protocol."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harmonia.api import ALL_DOMAINS, CellView, ImageSet, Metric, Task
from harmonia.probe import (
    LinearProbe,
    ProbeNet,
    ProbeSet,
    ProbeTraining,
    domain_auroc,
    domain_probabilities,
    domain_scores,
    fit_probe,
    log_loss,
    three_slices,
    unit_scale,
)
from harmonia.protocol import run_experiment
from harmonia.recipe import load_recipe
from harmonia.registry import Registry
from harmonia.report import write_report
from harmonia_plugins.evaluators import vendor_probe
from harmonia_plugins.evaluators.vendor_probe import VendorProbe, VendorProbeParams

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "name_that_manufacturer.yaml"
#: patients per domain in each split of a hand-made cell, and items per patient
PATIENTS = {"train": 6, "val": 3, "test": 6}
ITEMS = 4
FAST = {"epochs": 4, "bootstrap": 100}


def phantoms(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``n`` structured images ``[n, 1, *shape]`` in [0, ~1.5]: a smooth wave under a few discs (per slice)."""
    grid = np.stack(np.meshgrid(*(np.linspace(0, 1, s) for s in shape[-2:]), indexing="ij"))
    images = np.zeros((n, int(np.prod(shape[:-2], dtype=int)), *shape[-2:]))
    for item in images.reshape(-1, *shape[-2:]):
        item += 0.2 * np.sin(2 * np.pi * (rng.uniform(1, 3) * grid[1] + rng.uniform()))
        for _ in range(3):
            centre, radius = rng.uniform(0.2, 0.8, 2), rng.uniform(0.1, 0.3)
            item += rng.uniform(0.3, 0.7) * (((grid - centre[:, None, None]) ** 2).sum(0) < radius**2)
    return torch.from_numpy(images.reshape(n, 1, *shape).astype(np.float32))


def affine(images: torch.Tensor, domain: int) -> torch.Tensor:
    """Domain ``d``'s signature: intensities × (1 + 0.5 d) + 0.3 d (domain 0 untouched)."""
    return images * (1 + 0.5 * domain) + 0.3 * domain


def same(images: torch.Tensor, domain: int) -> torch.Tensor:
    return images


def min_max(images: torch.Tensor) -> torch.Tensor:
    """A transform that removes any per-image affine intensity change."""
    return unit_scale(images, None)


class FakeCell:
    """A :class:`CellView` of hand-made domains that records which splits were asked for."""

    def __init__(self, signature=same, domains=("A", "B"), shape=(16, 16), seed=0, transform=None, features=None):
        rng = np.random.default_rng(123)
        self.data = {
            (domain, part): self.items(signature(phantoms(rng, count * ITEMS, shape), d), domain, part)
            for d, domain in enumerate(domains)
            for part, count in PATIENTS.items()
        }
        self.calls: list[tuple[str, str]] = []
        self.view = CellView(
            Task("classification", ("negative", "positive")),
            tuple(domains),
            domains[0],
            seed,
            torch.device("cpu"),
            self.split,
            transform or (lambda images: images),
            features or (lambda images: images.flatten(1)),
        )

    @staticmethod
    def items(images: torch.Tensor, domain: str, part: str) -> ImageSet:
        patients = np.array([f"{domain}-{part}-{i // ITEMS}" for i in range(len(images))], dtype=object)
        return ImageSet(images, torch.zeros(len(images), dtype=torch.long), patients, np.full(len(images), domain))

    def split(self, domain: str, part: str) -> ImageSet:
        self.calls.append((domain, part))
        return self.data[domain, part]


def probe(cell: FakeCell, **params) -> dict[tuple[str, str], Metric]:
    """The evaluator's metrics on ``cell``, by (metric, test_domain)."""
    metrics = VendorProbe(VendorProbeParams(**{**FAST, **params}), cell.view.task).evaluate_cell(cell.view)
    return {(m.name, m.test_domain): m for m in metrics}


@cache
def strong() -> dict[tuple[str, str], Metric]:
    """Raw probe on two domains apart by an affine intensity change, seen through a fixed window."""
    return probe(FakeCell(affine), window=(0.0, 2.0))


def value(metrics, name: str, domain: str = ALL_DOMAINS) -> float:
    return metrics[name, domain].value


def interval(metrics, name: str, domain: str = ALL_DOMAINS) -> tuple[float, float]:
    return value(metrics, f"{name}_ci_low", domain), value(metrics, f"{name}_ci_high", domain)


# -- the network and its inputs ------------------------------------------------------------------------------


def test_cnn_is_seed_002s_three_conv_blocks_with_one_logit_for_two_domains_and_k_for_more():
    net = ProbeNet(1, 2)
    assert len(net.blocks) == 3
    for block, filters in zip(net.blocks, (32, 64, 128)):
        conv, norm, relu, pool = block
        assert isinstance(conv, nn.Conv2d) and conv.out_channels == filters and conv.kernel_size == (3, 3)
        assert isinstance(norm, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
        assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 1)
    assert ProbeNet(3, 3)(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="at least two domains"):
        ProbeNet(1, 1)


def test_three_random_slices_of_a_volume_become_its_channels():
    depth = 7
    volumes = torch.arange(depth, dtype=torch.float32)[None, None, :, None, None].expand(20, 1, depth, 4, 4)
    stacks = three_slices(volumes, np.random.default_rng(0))
    assert stacks.shape == (20, 3, 4, 4)
    picks = stacks[:, :, 0, 0].long()
    assert all(len(set(row.tolist())) == 3 for row in picks)  # three distinct slices of each volume
    assert len({tuple(row.tolist()) for row in picks}) > 10  # drawn afresh for each volume, in random order
    assert torch.equal(three_slices(volumes, np.random.default_rng(0)), stacks)
    assert three_slices(volumes[:, :, :2], np.random.default_rng(0)).shape == (20, 3, 4, 4)  # fewer than three


def test_a_window_clips_native_units_and_min_max_removes_an_affine_change():
    hu = torch.tensor([[[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]]])
    assert unit_scale(hu, (-160.0, 240.0)).flatten().tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    images = phantoms(np.random.default_rng(0), 3, (8, 8))
    assert torch.allclose(unit_scale(affine(images, 1), None), unit_scale(images, None), atol=1e-5)
    with pytest.raises(ValidationError, match="low end must be below"):
        VendorProbeParams(window=(240.0, -160.0))


def test_the_auto_window_is_the_broad_ct_window_on_ct_and_min_max_elsewhere():
    hu = torch.tensor([[[[-3000.0, -1000.0, 0.0, 1000.0, 3000.0]]]])
    auto = VendorProbe(VendorProbeParams(window="auto"), Task("classification", ("a", "b")))
    cell = FakeCell()
    min_max = [0, 1 / 3, 0.5, 2 / 3, 1]
    for modality, expected in (("CT", [0, 0, 0.5, 1, 1]), ("MRI", min_max), (None, min_max)):
        read = auto.read(replace(cell.view, modality=modality), hu, np.random.default_rng(0))
        assert read.flatten().tolist() == pytest.approx(expected)
    fixed = VendorProbe(VendorProbeParams(window=(-160.0, 240.0)), Task("classification", ("a", "b")))
    assert fixed.window_for("MRI") == (-160.0, 240.0)  # a window given is used on every cohort


# -- the evaluator on hand-made cells -------------------------------------------------------------------------


def test_raw_probe_names_domains_that_differ_strongly():
    metrics = strong()
    assert value(metrics, "probe_auroc") > 0.95
    low, high = interval(metrics, "probe_auroc")
    assert 0.8 < low <= value(metrics, "probe_auroc") <= high <= 1.0
    assert value(metrics, "probe_balanced_accuracy") > 0.9


def test_raw_probe_is_near_chance_when_domains_come_from_one_generator():
    metrics = probe(FakeCell(same))
    low, high = interval(metrics, "probe_auroc")
    assert abs(value(metrics, "probe_auroc") - 0.5) < 0.25
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_a_transform_that_removes_the_difference_takes_the_transformed_probe_to_chance():
    cell = FakeCell(affine, transform=min_max)
    metrics = probe(cell, input="transformed", window=(0.0, 2.0))
    low, high = interval(metrics, "probe_auroc")
    assert abs(value(metrics, "probe_auroc") - 0.5) < 0.25 and low <= 0.5 <= high
    assert value(strong(), "probe_auroc") > 0.95  # the same domains, untransformed


def test_features_mode_trains_a_linear_probe_on_the_models_features(monkeypatch):
    seen, fitted = [], []
    cell = FakeCell(affine, features=lambda images: seen.append(images) or images.mean((2, 3)))

    def spy(model, train, val, settings):
        fitted.append(model)
        return fit_probe(model, train, val, settings)

    monkeypatch.setattr(vendor_probe, "fit_probe", spy)
    metrics = probe(cell, input="features")
    assert isinstance(fitted[0], LinearProbe) and fitted[0].linear.in_features == 1
    # the features are asked of every split's native, unscaled images
    expected = [cell.data[key].images for key in cell.calls]
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    # the mean intensity separates the domains; AUROC is 1 from the first epoch, and of the tied epochs the one
    # with the lowest validation loss is kept, which has also learnt where the domains part
    assert value(metrics, "probe_auroc") > 0.95 and value(metrics, "probe_balanced_accuracy") > 0.9


def test_epoch_selection_sees_only_validation_patients_and_scoring_only_test_patients(monkeypatch):
    seen = {}

    def spy(model, train, val, settings):
        seen.update(train=set(train.patients), val=set(val.patients))
        return fit_probe(model, train, val, settings)

    monkeypatch.setattr(vendor_probe, "fit_probe", spy)
    cell = FakeCell(affine)
    metrics = probe(cell, epochs=2, bootstrap=0)
    assert seen["val"] == {p for d in "AB" for p in cell.data[d, "val"].patients}
    assert seen["train"] == {p for d in "AB" for p in cell.data[d, "train"].patients}
    scored = set(metrics["probe_recall", "A"].per_patient) | set(metrics["probe_recall", "B"].per_patient)
    assert scored == {p for d in "AB" for p in cell.data[d, "test"].patients}
    assert sorted(set(cell.calls)) == sorted((d, part) for d in "AB" for part in PATIENTS)


def phantom_sets(seed: int) -> tuple[ProbeSet, ProbeSet]:
    """Training and validation sets of the CNN's inputs, both domains drawn from one generator."""
    rng = np.random.default_rng(seed)

    def probe_set(part: str) -> ProbeSet:
        n = PATIENTS[part] * ITEMS
        inputs = unit_scale(torch.cat([phantoms(rng, n, (16, 16)) for _ in "AB"]), None)
        labels = torch.arange(2).repeat_interleave(n)
        return ProbeSet(inputs, labels, np.array([f"{part}{i // ITEMS}" for i in range(2 * n)]), ("A", "B"))

    return probe_set("train"), probe_set("val")


def test_the_kept_weights_are_those_of_the_epoch_with_the_best_validation_auroc_then_loss():
    train, val = phantom_sets(5)
    model = ProbeNet(1, 2)
    fit = fit_probe(model, train, val, ProbeTraining(epochs=5, seed=1))
    auroc, loss, chosen = np.array(fit.val_auroc), np.array(fit.val_loss), fit.selected_epoch - 1
    assert len(auroc) == len(loss) == 5 and auroc[chosen] == auroc.max()
    assert loss[chosen] == loss[auroc == auroc.max()].min()
    probabilities = domain_probabilities(model, val.inputs, 32, torch.device("cpu"))
    assert domain_auroc(val.labels.numpy(), probabilities) == pytest.approx(auroc[chosen])
    assert log_loss(val.labels.numpy(), probabilities) == pytest.approx(loss[chosen])


def test_of_epochs_tied_at_auroc_1_the_one_with_the_lowest_validation_loss_is_kept():
    def separable(n: int) -> ProbeSet:
        labels = torch.arange(2).repeat_interleave(n)
        features = labels[:, None].float() + 0.1 * torch.randn(2 * n, 3, generator=torch.Generator().manual_seed(n))
        return ProbeSet(features, labels, np.array([f"p{i}" for i in range(2 * n)]), ("A", "B"))

    train, val = separable(24), separable(12)
    fit = fit_probe(LinearProbe(train.inputs, 2), train, val, ProbeTraining(epochs=5, seed=0))
    assert fit.val_auroc == [1.0] * 5 and fit.val_loss == sorted(fit.val_loss, reverse=True)
    assert fit.selected_epoch == 5


def test_batch_norm_holds_the_training_inputs_statistics_at_the_kept_weights():
    train, val = phantom_sets(6)
    model = ProbeNet(1, 2)
    fit_probe(model, train, val, ProbeTraining(epochs=2, seed=1, batch_size=len(train)))
    conv, norm = model.blocks[0][0], model.blocks[0][1]
    with torch.no_grad():
        response = conv(train.inputs)
    assert torch.allclose(norm.running_mean, response.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, response.var((0, 2, 3)), rtol=1e-3)


def test_the_same_seed_gives_the_same_metrics_and_another_seed_others():
    def values(seed: int) -> list[float]:
        return [m.value for m in probe(FakeCell(same, seed=seed), epochs=2, bootstrap=20).values()]

    first = values(0)
    assert np.array_equal(first, values(0), equal_nan=True)
    assert not np.array_equal(first, values(1), equal_nan=True)


def test_volumes_reach_the_cnn_as_three_slice_stacks(monkeypatch):
    seen = []

    def spy(model, train, val, settings):
        seen.append((model, train.inputs.shape))
        return fit_probe(model, train, val, settings)

    monkeypatch.setattr(vendor_probe, "fit_probe", spy)
    probe(FakeCell(affine, shape=(5, 16, 16)), epochs=1, bootstrap=0)
    ((model, shape),) = seen
    assert model.blocks[0][0].in_channels == 3 and shape == (2 * PATIENTS["train"] * ITEMS, 3, 16, 16)


def test_metrics_come_in_order_with_their_test_domains_and_notes_naming_the_mode():
    metrics = strong()
    assert list(metrics) == [
        ("probe_auroc", "all"),
        ("probe_auroc_ci_low", "all"),
        ("probe_auroc_ci_high", "all"),
        ("probe_balanced_accuracy", "all"),
        ("probe_balanced_accuracy_ci_low", "all"),
        ("probe_balanced_accuracy_ci_high", "all"),
        *(
            (name, domain)
            for domain in "AB"
            for name in ("probe_recall", "probe_recall_ci_low", "probe_recall_ci_high")
        ),
    ]
    assert all("input raw" in m.note for m in metrics.values())
    assert "chance 0.5" in metrics["probe_auroc", "all"].note
    test_items = PATIENTS["test"] * ITEMS
    assert metrics["probe_auroc", "all"].n == 2 * test_items and metrics["probe_recall", "A"].n == test_items
    assert len(metrics["probe_recall", "B"].per_patient) == PATIENTS["test"]
    assert VendorProbe.higher_is_better is False and VendorProbe.scope == "cell"


def test_three_domains_get_one_vs_rest_auroc_and_a_recall_each_without_intervals_when_bootstrap_is_0():
    metrics = probe(FakeCell(affine, domains=("A", "B", "C")), window=(0.0, 3.0), bootstrap=0)
    assert list(metrics) == [
        ("probe_auroc", "all"),
        ("probe_balanced_accuracy", "all"),
        ("probe_recall", "A"),
        ("probe_recall", "B"),
        ("probe_recall", "C"),
    ]
    assert value(metrics, "probe_auroc") > 0.9
    assert "chance 0.333" in metrics["probe_balanced_accuracy", "all"].note


def test_the_bootstrap_resamples_patients_within_domains_so_every_resample_has_each_domain():
    # two test patients per domain, each alike: a plain bootstrap would lack a domain in one resample of eight
    patients = np.array(["p", "p", "q", "q", "r", "r", "s", "s"])
    test = ProbeSet(torch.zeros(8, 1), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), patients, ("A", "B"))
    second = np.array([0.1, 0.75, 0.1, 0.75, 0.8, 0.7, 0.8, 0.7])
    scores = domain_scores(test, np.stack([1 - second, second], 1), 200, np.random.default_rng(0))
    assert scores.auroc.low == scores.auroc.value == scores.auroc.high == pytest.approx(0.75)
    assert scores.recall["A"].low == scores.recall["A"].value == scores.recall["A"].high == 0.5
    assert dict(scores.recall["A"].per_patient) == {"p": 0.5, "q": 0.5}


def test_a_paired_patient_brings_its_items_in_every_domain_into_a_resample():
    # three patients imaged in both domains; the probe names only x right, in both domains
    patients = np.array(["x", "y", "z", "x", "y", "z"])
    test = ProbeSet(torch.zeros(6, 1), torch.tensor([0, 0, 0, 1, 1, 1]), patients, ("A", "B"))
    second = np.array([0.1, 0.9, 0.9, 0.9, 0.1, 0.1])
    scores = domain_scores(test, np.stack([1 - second, second], 1), 1000, np.random.default_rng(0))
    assert scores.balanced_accuracy.value == pytest.approx(1 / 3)
    # a resample of three x (1 in 27) scores 1 in both domains together; were the domains resampled apart, a
    # balanced accuracy of 1 would need that twice (1 in 729) and the 97.5th percentile would stay below 1
    assert scores.balanced_accuracy.high == 1.0


# -- through the protocol --------------------------------------------------------------------------------------


def test_the_protocol_writes_probe_rows_for_all_domains_and_each_domain(tmp_path):
    registry = Registry.from_entry_points(extra=[vendor_probe])
    recipe = {
        "name": "probe_run",
        "cohort": {
            "plugin": "mnms",
            "params": {"image_size": 32, "spacing_mm": 4.0, "phases": ["ED"], "domains": ["Siemens", "Philips"]},
            "synthetic": {"patients": 3, "components": ["contrast"]},
        },
        "model": {"plugin": "unet2d", "params": {"channels": [4, 8]}},
        "train": {"epochs": 1, "batch_size": 8, "seeds": 1, "device": "cpu"},
        "evaluate": ["dice", {"plugin": "vendor_probe", "params": {"epochs": 1, "max_items_per_domain": 16}}],
    }
    folder = run_experiment(load_recipe(recipe, registry=registry), tmp_path / "run", registry=registry)
    results = pd.read_csv(folder.results_path)
    probe_rows = results[results["metric"].str.startswith("probe_")]
    for train_domain in ("Siemens", "Philips"):
        mine = probe_rows[probe_rows["train_domain"] == train_domain]
        assert set(mine.loc[mine["test_domain"] == "all", "metric"]) >= {"probe_auroc", "probe_balanced_accuracy"}
        assert set(mine.loc[mine["metric"] == "probe_recall", "test_domain"]) == {"Siemens", "Philips"}
    summarised = set(pd.read_csv(folder.summary_path)["metric"])
    assert "dice" in summarised and not summarised & {"probe_auroc", "probe_balanced_accuracy"}  # no "all" rows
    assert (folder.path / "patients.csv").exists()


def test_the_shipped_recipe_validates_with_the_probe_registered():
    registry = Registry.from_entry_points(extra=[vendor_probe])
    experiment = load_recipe(str(RECIPE), registry=registry)
    assert len(experiment.points) == 7
    for point in experiment.points:
        probe_spec = point.recipe.evaluate[1]
        assert (probe_spec.plugin, probe_spec.params["input"]) == ("vendor_probe", "raw")
        assert point.recipe.train.epochs == 1


@pytest.mark.usefixtures("one_thread")
def test_the_feature_and_transformed_probes_sit_beside_each_setting_in_a_comparison(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["seeds"] = 2
    toy_recipe["sweep"] = {
        "mitigations": [[], [{"plugin": "scale_batches", "params": {"factor": 0.5}}], [{"plugin": "dann"}]],
        "evaluate": [
            ["pixel_accuracy", {"plugin": "vendor_probe", "params": {"input": mode, "epochs": 1, "bootstrap": 0}}]
            for mode in ("features", "transformed")
        ],
    }
    folder = run_experiment(load_recipe(toy_recipe, registry=registry), tmp_path / "run", registry=registry)
    write_report(folder.path)
    results = pd.read_csv(folder.results_path)
    auroc = results[(results["metric"] == "probe_auroc") & (results["test_domain"] == "all")]
    assert len(auroc) == 3 * 2 * 2 * 2  # settings x probe modes x seeds x training domains
    report = (folder.path / "report.md").read_text()
    whole_cell = report.split("## Whole-cell metrics")[1].split("\n## ")[0]
    assert all(f"| {setting}" in whole_cell for setting in ("none", "scale_batches", "dann"))
    board = report.split("## Mitigation leaderboard")[1].split("\n## ")[0]
    assert "probe_auroc" in board
