"""agreement: CCC and its interval by hand, Bland–Altman limits, the paired t-test against scipy, PSNR/SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from harmonia.agreement import bland_altman, concordance, paired_t, psnr, ssim


def test_ccc_equals_a_hand_computation():
    """a = 1, 2, 3 and b = 2, 3, 5: s_a² = 2/3, s_b² = 14/9, s_ab = 1, (ā − b̄)² = 16/9, so CCC = 2 / 4."""
    assert concordance([1, 2, 3], [2, 3, 5]).ccc == pytest.approx(0.5)


def test_ccc_is_one_for_identical_data_and_lower_for_a_biased_copy_despite_a_perfect_correlation():
    a = np.array([10.0, 12.0, 15.0, 20.0, 26.0])
    same = concordance(a, a)
    assert (same.ccc, same.low, same.high) == pytest.approx((1.0, 1.0, 1.0)) and same.note
    biased = concordance(a, a + 3)
    assert stats.pearsonr(a, a + 3).statistic == pytest.approx(1.0)
    assert biased.ccc < 0.9


def test_ccc_interval_is_the_fisher_z_interval_of_lins_variance_and_contains_the_estimate():
    a = np.array([1.0, 2.0, 4.0, 5.0, 7.0, 8.0])
    b = np.array([1.5, 2.5, 3.5, 5.5, 6.0, 9.0])
    got = concordance(a, b)
    n = 6
    va, vb = a.var(), b.var()
    sab = ((a - a.mean()) * (b - b.mean())).mean()
    ccc = 2 * sab / (va + vb + (a.mean() - b.mean()) ** 2)
    r = sab / math.sqrt(va * vb)
    u2 = (a.mean() - b.mean()) ** 2 / math.sqrt(va * vb)
    var_ccc = (
        (1 - r**2) * ccc**2 * (1 - ccc**2) / r**2 + 2 * ccc**3 * (1 - ccc) * u2 / r - ccc**4 * u2**2 / (2 * r**2)
    ) / (n - 2)
    se_z = math.sqrt(var_ccc) / (1 - ccc**2)
    z = 0.5 * math.log((1 + ccc) / (1 - ccc))
    assert got.ccc == pytest.approx(ccc)
    assert (got.low, got.high) == pytest.approx((math.tanh(z - 1.959964 * se_z), math.tanh(z + 1.959964 * se_z)))
    assert got.low < got.ccc < got.high and got.n == n and got.note == ""


def test_bland_altman_limits_are_the_mean_difference_plus_minus_196_sd():
    """a − b = 1, 2, 3, 6: mean 3, sd (ddof 1) = sqrt(14 / 3)."""
    got = bland_altman([2, 4, 6, 10], [1, 2, 3, 4])
    sd = math.sqrt(14 / 3)
    assert (got.mean_difference, got.sd) == pytest.approx((3.0, sd))
    assert (got.loa_low, got.loa_high) == pytest.approx((3 - 1.96 * sd, 3 + 1.96 * sd))


def test_bland_altman_in_percent_of_the_reference_leaves_out_an_empty_reference():
    """100 (a − b) / b = 10, −20, 40 (the pair with b = 0 is left out)."""
    got = bland_altman([11, 8, 7, 5], [10, 10, 5, 0], percent_of_b=True)
    assert got.n == 3 and got.mean_difference == pytest.approx(10.0)
    assert got.sd == pytest.approx(np.std([10, -20, 40], ddof=1))


def test_paired_t_equals_scipy():
    a = np.array([5.1, 4.8, 6.0, 5.5, 5.9, 6.3])
    b = np.array([4.9, 4.9, 5.2, 5.0, 5.1, 5.8])
    got, expected = paired_t(a, b), stats.ttest_rel(a, b)
    interval = expected.confidence_interval(0.95)
    assert (got.t, got.p) == pytest.approx((expected.statistic, expected.pvalue))
    assert got.mean_difference == pytest.approx(np.mean(a - b))
    assert (got.low, got.high) == pytest.approx((interval.low, interval.high))
    assert got.low < got.mean_difference < got.high


def test_equal_differences_leave_t_undefined_with_a_note():
    got = paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert math.isnan(got.t) and math.isnan(got.p) and got.mean_difference == 1.0 and "equal" in got.note


@pytest.mark.parametrize("statistic", [concordance, bland_altman, paired_t])
def test_fewer_than_three_pairs_give_nan_with_the_reason(statistic):
    got = statistic([1.0, 2.0, math.nan], [1.5, 2.5, 3.0])  # the NaN pair is left out: two remain
    values = [v for v in vars(got).values() if isinstance(v, float)]
    assert got.n == 2 and values and all(math.isnan(v) for v in values)
    assert "2 pair(s), at least 3 needed" in got.note


def test_paired_values_must_have_one_length():
    with pytest.raises(ValueError, match="differ in length"):
        concordance([1, 2, 3], [1, 2])


def test_psnr_and_ssim_agree_with_scikit_image():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 100, (24, 24))
    image = reference + rng.normal(0, 5, reference.shape)
    assert psnr(image, reference, 100) == pytest.approx(peak_signal_noise_ratio(reference, image, data_range=100))
    expected = structural_similarity(
        reference, image, data_range=100, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(image, reference, 100) == pytest.approx(expected)
    assert 0 < ssim(image, reference, 100) < 1


def test_psnr_by_hand_and_of_identical_images():
    reference = np.zeros((16, 16))
    assert psnr(reference + 1, reference, 10) == pytest.approx(20.0)  # 10 log10(10² / 1)
    assert psnr(reference, reference, 10) == math.inf
    assert ssim(reference + 3, reference + 3, 10) == pytest.approx(1.0)
