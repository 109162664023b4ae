"""Agreement of paired measurements and of paired images: Lin's CCC, Bland–Altman, the paired t-test, PSNR and SSIM.

Seed 003 compares each reconstruction's segmented liver volume with the reference volume by Lin's
concordance correlation coefficient and Bland–Altman analysis, and original with standardised images
by paired t-tests; a standardizer's images are scored against the reference reconstruction by PSNR
and SSIM. The functions here are small and pure (numpy, scipy, scikit-image) so each can be checked
against a hand computation.

Pairs where either value is NaN are left out, and ``n`` counts the pairs kept. With fewer than
:data:`MIN_PAIRS` pairs a statistic is NaN and its ``note`` says why: the CCC interval has n − 2
degrees of freedom, and one rule for all three keeps a table's columns defined on the same patients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from skimage.metrics import mean_squared_error, structural_similarity

CONFIDENCE = 0.95
#: Bland and Altman's multiplier of the sd of the differences for the 95% limits of agreement
LOA_Z = 1.96
#: fewest pairs a statistic here is computed from
MIN_PAIRS = 3


@dataclass(frozen=True)
class Concordance:
    """Lin's concordance correlation coefficient and its 95% interval; NaN and why (``note``) where undefined."""

    ccc: float
    low: float
    high: float
    n: int
    note: str = ""


@dataclass(frozen=True)
class BlandAltman:
    """Mean and sd (ddof 1) of the differences ``a − b`` and the 95% limits of agreement mean ± 1.96 sd."""

    mean_difference: float
    sd: float
    loa_low: float
    loa_high: float
    n: int
    note: str = ""


@dataclass(frozen=True)
class PairedT:
    """Student's paired t-test of ``a`` against ``b``: t, two-sided p, the mean of ``a − b`` and its 95% t interval."""

    t: float
    p: float
    mean_difference: float
    low: float
    high: float
    n: int
    note: str = ""


def paired(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray, str]:
    """``a`` and ``b`` as float arrays without the pairs holding a NaN, and why they are too few ("" when enough)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} and {b.size}")
    kept = ~(np.isnan(a) | np.isnan(b))
    a, b = a[kept], b[kept]
    why = f"{a.size} pair(s), at least {MIN_PAIRS} needed" if a.size < MIN_PAIRS else ""
    return a, b, why


def concordance(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> Concordance:
    """Lin's (1989) CCC of ``a`` and ``b`` with a 95% interval on Fisher's z scale.

    CCC = 2 s_ab / (s_a² + s_b² + (ā − b̄)²) with moments over n (Lin's estimator). The interval is
    tanh(z ± 1.96 σ_z), z = atanh(CCC), σ_z = σ_CCC / (1 − CCC²), with Lin's asymptotic variance
    σ²_CCC = [(1 − r²) CCC² (1 − CCC²) / r² + 2 CCC³ (1 − CCC) u² / r − CCC⁴ u⁴ / (2 r²)] / (n − 2)
    (Lin 1989 as corrected in Biometrics 2000; r Pearson's correlation, u = (ā − b̄) / (s_a s_b)^½),
    the interval DescTools' ``CCC(ci = "z-transform")`` gives. Perfect agreement has a zero-width interval.
    """
    a, b, why = paired(a, b)
    n = a.size
    if why:
        return Concordance(math.nan, math.nan, math.nan, n, f"CCC undefined: {why}")
    var_a, var_b = a.var(), b.var()
    covariance = np.mean((a - a.mean()) * (b - b.mean()))
    denominator = var_a + var_b + (a.mean() - b.mean()) ** 2
    if denominator == 0:
        return Concordance(math.nan, math.nan, math.nan, n, "CCC undefined: every value is the same")
    ccc = float(2 * covariance / denominator)
    if math.isclose(abs(ccc), 1.0, abs_tol=1e-12):
        return Concordance(ccc, ccc, ccc, n, "|CCC| = 1: the interval has zero width")
    if var_a == 0 or var_b == 0 or covariance == 0:
        return Concordance(ccc, math.nan, math.nan, n, "CCC interval undefined: no correlation (a constant or r = 0)")
    r = covariance / math.sqrt(var_a * var_b)
    u = (a.mean() - b.mean()) / (var_a * var_b) ** 0.25
    variance = (
        (1 - r**2) * ccc**2 * (1 - ccc**2) / r**2 + 2 * ccc**3 * (1 - ccc) * u**2 / r - ccc**4 * u**4 / (2 * r**2)
    ) / (n - 2)
    if not variance >= 0:
        return Concordance(ccc, math.nan, math.nan, n, "CCC interval undefined: negative asymptotic variance")
    half_width = stats.norm.ppf(0.5 + CONFIDENCE / 2) * math.sqrt(variance) / (1 - ccc**2)
    z = math.atanh(ccc)
    return Concordance(ccc, math.tanh(z - half_width), math.tanh(z + half_width), n)


def bland_altman(a: np.ndarray | list[float], b: np.ndarray | list[float], percent_of_b: bool = False) -> BlandAltman:
    """Bland–Altman agreement of method ``a`` with reference ``b``: the bias of ``a − b`` and its limits of agreement.

    With ``percent_of_b`` the differences are 100 (a − b) / b, relative to the reference as seed 003's
    Figures 4–5 plot them; pairs with ``b`` = 0 are then left out.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if percent_of_b:
        b = np.where(b == 0, math.nan, b)
    a, b, why = paired(a, b)
    if why:
        return BlandAltman(math.nan, math.nan, math.nan, math.nan, a.size, f"Bland–Altman undefined: {why}")
    differences = 100 * (a - b) / b if percent_of_b else a - b
    mean, sd = float(differences.mean()), float(differences.std(ddof=1))
    return BlandAltman(mean, sd, mean - LOA_Z * sd, mean + LOA_Z * sd, a.size)


def paired_t(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> PairedT:
    """:func:`scipy.stats.ttest_rel` of ``a`` against ``b`` (two-sided) with the 95% interval of the mean of ``a − b``.

    Differences that are all equal leave t undefined (scipy divides by a zero sd): t and p are then
    NaN, and the interval has zero width at the mean, with a note.
    """
    a, b, why = paired(a, b)
    if why:
        return PairedT(math.nan, math.nan, math.nan, math.nan, math.nan, a.size, f"paired t-test undefined: {why}")
    mean = float(np.mean(a - b))
    if np.ptp(a - b) == 0:
        return PairedT(math.nan, math.nan, mean, mean, mean, a.size, "paired t-test undefined: all differences equal")
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(CONFIDENCE)
    return PairedT(float(test.statistic), float(test.pvalue), mean, float(interval.low), float(interval.high), a.size)


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference`` in dB, 10 log10(range² / MSE); inf if identical."""
    error = mean_squared_error(np.asarray(reference, dtype=float), np.asarray(image, dtype=float))
    return math.inf if error == 0 else float(10 * math.log10(data_range**2 / error))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Structural similarity of ``image`` and ``reference`` (same shape, 2-D or 3-D) with Wang et al.'s (2004)
    settings: a Gaussian window of sd 1.5 pixels (11 wide) and population covariances, via scikit-image."""
    return float(
        structural_similarity(
            np.asarray(reference, dtype=float),
            np.asarray(image, dtype=float),
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )
