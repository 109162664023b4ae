"""volume_agreement on hand-made predictions, image_quality on a hand-built cell view, both through the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harmonia.agreement import bland_altman, concordance
from harmonia.api import CellView, ImageSet, Predictions, Task
from harmonia.errors import PluginError
from harmonia.registry import Registry
from harmonia_plugins.evaluators import image_quality, volume_agreement

LIVER = Task("segmentation", ("background", "liver"))
LIVER_TUMOUR = Task("segmentation", ("background", "liver", "tumour"))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points(extra=[volume_agreement, image_quality])


def predictions(task: Task, predicted, targets, patients) -> Predictions:
    """Predictions of 1 x W label maps given as nested lists."""
    as_maps = lambda rows: torch.tensor(rows, dtype=torch.long)[:, None, :]  # noqa: E731
    return Predictions(task, as_maps(targets), as_maps(predicted), np.array(patients, dtype=object))


def by_name(metrics) -> dict:
    return {m.name: m for m in metrics}


# -- volume_agreement ---------------------------------------------------------------------------


def test_volumes_and_differences_are_exact_per_patient(registry):
    """p1: 4 predicted and 6 reference voxels over two slices, p2: 4 and 2; at 0.5 mL a voxel."""
    preds = predictions(
        LIVER,
        predicted=[[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
        targets=[[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]],
        patients=["p1", "p1", "p2"],
    )
    metrics = registry.create("evaluator", "volume_agreement", {"voxel_volume_ml": 0.5}, LIVER).evaluate(preds)
    assert [m.name for m in metrics] == [
        "volume_abs_difference",
        "volume_abs_difference_pct",
        "volume_ccc",
        "volume_ccc_ci_low",
        "volume_ccc_ci_high",
        "volume_ba_bias",
        "volume_ba_loa_low",
        "volume_ba_loa_high",
        "volume_predicted",
        "volume_reference",
    ]
    got = by_name(metrics)
    assert dict(got["volume_predicted"].per_patient) == {"p1": 2.0, "p2": 2.0}
    assert dict(got["volume_reference"].per_patient) == {"p1": 3.0, "p2": 1.0}
    assert dict(got["volume_abs_difference"].per_patient) == {"p1": 1.0, "p2": 1.0}
    assert dict(got["volume_abs_difference_pct"].per_patient) == pytest.approx({"p1": 100 / 3, "p2": 100.0})
    assert got["volume_abs_difference"].value == 1.0 and got["volume_abs_difference"].n == 2
    assert got["volume_abs_difference_pct"].value == pytest.approx((100 / 3 + 100) / 2)
    assert (got["volume_predicted"].value, got["volume_reference"].value) == (2.0, 2.0)
    assert "mL" in got["volume_abs_difference"].note
    for name in ("volume_ccc", "volume_ccc_ci_low", "volume_ba_bias", "volume_ba_loa_high"):  # two patients: too few
        assert math.isnan(got[name].value) and "at least 3 needed" in got[name].note
    assert not registry.get("evaluator", "volume_agreement").cls.higher_is_better


def test_agreement_metrics_follow_the_agreement_functions_and_the_bland_altman_scale():
    """Reference volumes 4, 2, 5 voxels; predicted 3, 2, 6 (volumes in voxels: no voxel_volume_ml)."""
    preds = predictions(
        LIVER,
        predicted=[[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]],
        targets=[[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]],
        patients=["a", "b", "c"],
    )
    predicted, reference = [3.0, 2.0, 6.0], [4.0, 2.0, 5.0]
    relative = by_name(
        volume_agreement.VolumeAgreement(volume_agreement.VolumeAgreementParams(), LIVER).evaluate(preds)
    )
    ccc = concordance(predicted, reference)
    assert (relative["volume_ccc"].value, relative["volume_ccc_ci_low"].value) == pytest.approx((ccc.ccc, ccc.low))
    assert relative["volume_ba_bias"].value == pytest.approx((-25 + 0 + 20) / 3)  # % of the reference
    assert "voxels" in relative["volume_predicted"].note and "%" in relative["volume_ba_bias"].note
    params = volume_agreement.VolumeAgreementParams(bland_altman="absolute")
    absolute = by_name(volume_agreement.VolumeAgreement(params, LIVER).evaluate(preds))
    ba = bland_altman(predicted, reference)
    assert (absolute["volume_ba_bias"].value, absolute["volume_ba_loa_low"].value) == pytest.approx(
        (ba.mean_difference, ba.loa_low)
    )


def test_label_picks_one_class_and_the_default_counts_every_foreground_class():
    preds = predictions(LIVER_TUMOUR, predicted=[[1, 2, 2, 0]], targets=[[1, 1, 2, 0]], patients=["p"])
    every = by_name(
        volume_agreement.VolumeAgreement(volume_agreement.VolumeAgreementParams(), LIVER_TUMOUR).evaluate(preds)
    )
    tumour = volume_agreement.VolumeAgreement(volume_agreement.VolumeAgreementParams(label=2), LIVER_TUMOUR)
    only = by_name(tumour.evaluate(preds))
    assert (every["volume_predicted"].value, every["volume_reference"].value) == (3.0, 3.0)
    assert (only["volume_predicted"].value, only["volume_reference"].value) == (2.0, 1.0)
    with pytest.raises(ValueError, match="label 2 is not a class"):
        volume_agreement.VolumeAgreement(volume_agreement.VolumeAgreementParams(label=2), LIVER)


def test_a_patient_with_an_empty_reference_is_left_out_of_the_percent_difference():
    preds = predictions(LIVER, predicted=[[1, 1], [1, 0]], targets=[[1, 0], [0, 0]], patients=["p1", "p2"])
    got = by_name(volume_agreement.VolumeAgreement(volume_agreement.VolumeAgreementParams(), LIVER).evaluate(preds))
    pct = got["volume_abs_difference_pct"]
    assert pct.n == 1 and dict(pct.per_patient) == {"p1": 100.0} and "1 patient(s) with an empty reference" in pct.note
    assert got["volume_abs_difference"].n == 2


def test_bad_voxel_volume_is_a_recipe_error(registry):
    with pytest.raises(PluginError, match="voxel_volume_ml"):
        registry.create("evaluator", "volume_agreement", {"voxel_volume_ml": 0}, LIVER)


# -- image_quality ------------------------------------------------------------------------------

SIDE = 16


def image_set(images: torch.Tensor, patients: list[str], domain: str) -> ImageSet:
    return ImageSet(
        images,
        torch.zeros(len(images), SIDE, SIDE, dtype=torch.long),
        np.array(patients, dtype=object),
        np.array([domain] * len(images), dtype=object),
    )


def paired_cohort(item_counts: dict[str, dict[str, int]] | None = None) -> dict[str, ImageSet]:
    """Test splits of M80 (the reference), FBP (M80 + noise) and IR (M80 + 40 HU): patients p1, p2, 2 slices each,
    unless ``item_counts`` gives a domain's patients and their item counts."""
    rng = np.random.default_rng(0)
    reference = torch.from_numpy(rng.uniform(-100, 200, (4, 1, SIDE, SIDE)).astype(np.float32))
    patients = ["p1", "p1", "p2", "p2"]
    images = {
        "M80": reference,
        "FBP": reference + torch.from_numpy(rng.normal(0, 30, reference.shape).astype(np.float32)),
        "IR": reference + 40,
    }
    sets = {domain: image_set(x, patients, domain) for domain, x in images.items()}
    for domain, counts in (item_counts or {}).items():
        keep = [i for p, n in counts.items() for i in np.flatnonzero(np.array(patients) == p)[:n]]
        sets[domain] = image_set(images[domain][keep], [patients[i] for i in keep], domain)
    return sets


def cell_view(sets: dict[str, ImageSet], transform=lambda x: x, train_domain: str = "M80") -> CellView:
    def split(domain: str, part: str) -> ImageSet:
        assert part == "test"
        return sets[domain]

    return CellView(LIVER, tuple(sets), train_domain, 0, torch.device("cpu"), split, transform, lambda x: x)


def standardizer(sets: dict[str, ImageSet]):
    """A perfect standardizer: each test image of any domain becomes the reference image of its position."""
    reference = sets["M80"].images
    lookup = {x.numpy().tobytes(): reference[i] for s in sets.values() for i, x in enumerate(s.images)}
    return lambda images: torch.stack([lookup[x.numpy().tobytes()] for x in images])


def test_images_made_equal_to_the_reference_score_higher_and_the_reference_domain_is_skipped(registry):
    sets = paired_cohort()
    evaluator = registry.create("evaluator", "image_quality", {}, LIVER)
    original = evaluator.evaluate_cell(cell_view(sets))
    standardized = evaluator.evaluate_cell(cell_view(sets, standardizer(sets)))
    assert [(m.test_domain, m.name) for m in original] == [
        ("FBP", "psnr"),
        ("FBP", "ssim"),
        ("IR", "psnr"),
        ("IR", "ssim"),
    ]
    for before, after in zip(original, standardized):
        assert set(before.per_patient) == {"p1", "p2"} and before.n == 2
        assert before.value == pytest.approx(np.mean(list(before.per_patient.values())))
        assert after.value > before.value
    assert [m.value for m in standardized] == [math.inf, pytest.approx(1.0)] * 2
    ir_psnr = by_name(m for m in original if m.test_domain == "IR")["psnr"]
    assert ir_psnr.value == pytest.approx(20 * math.log10(400 / 40))  # 40 HU off everywhere, none clipped


def test_only_the_tested_domain_goes_through_the_transform():
    sets = paired_cohort()
    seen: list[torch.Tensor] = []
    evaluator = image_quality.ImageQuality(image_quality.ImageQualityParams(), LIVER)
    evaluator.evaluate_cell(cell_view(sets, lambda x: seen.append(x) or x))
    reference_bytes = {x.numpy().tobytes() for x in sets["M80"].images}
    assert sum(len(x) for x in seen) == 8 and not any(x.numpy().tobytes() in reference_bytes for b in seen for x in b)


def test_the_window_clips_both_images():
    """IR differs from M80 by 40 HU everywhere; a window below every value clips both to one image."""
    sets = paired_cohort()
    params = image_quality.ImageQualityParams(window=(-1000.0, -500.0))
    got = image_quality.ImageQuality(params, LIVER).evaluate_cell(cell_view(sets))
    assert all(m.value == (math.inf if m.name == "psnr" else pytest.approx(1.0)) for m in got)


def test_reference_parameter_and_patients_with_unequal_item_counts_are_skipped_with_a_note():
    sets = paired_cohort({"IR": {"p1": 1, "p2": 2}})
    params = image_quality.ImageQualityParams(reference="FBP")
    got = image_quality.ImageQuality(params, LIVER).evaluate_cell(cell_view(sets))
    assert [m.test_domain for m in got] == ["M80", "M80", "IR", "IR"]
    ir = by_name(m for m in got if m.test_domain == "IR")
    assert ir["psnr"].n == 1 and set(ir["psnr"].per_patient) == {"p2"}
    assert "1 patient(s) with different item counts in IR and FBP skipped" in ir["ssim"].note
    with pytest.raises(ValueError, match="reference domain 'CT' is not one of"):
        image_quality.ImageQuality(image_quality.ImageQualityParams(reference="CT"), LIVER).evaluate_cell(
            cell_view(sets)
        )


def test_a_cohort_that_is_not_paired_gives_nan_with_a_note():
    sets = paired_cohort()
    sets["FBP"] = image_set(sets["FBP"].images, ["q1", "q1", "q2", "q2"], "FBP")
    got = image_quality.ImageQuality(image_quality.ImageQualityParams(), LIVER).evaluate_cell(cell_view(sets))
    fbp = [m for m in got if m.test_domain == "FBP"]
    assert len(fbp) == 2 and all(math.isnan(m.value) and m.n == 0 and "not a paired cohort" in m.note for m in fbp)


def test_image_quality_registers_as_a_cell_scope_evaluator_and_checks_its_window(registry):
    entry = registry.get("evaluator", "image_quality")
    assert entry.cls.scope == "cell" and entry.cls.higher_is_better
    with pytest.raises(PluginError, match="window"):
        registry.create("evaluator", "image_quality", {"window": [240, -160]}, LIVER)
