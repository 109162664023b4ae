"""Paired comparisons of sweep points with their baselines: pairing, per-seed changes, t intervals, Holm.

**Pairing.** A setting (a sweep point with mitigations) is compared with the baseline point
(``mitigations == "none"``) that has the same cohort and the same value of every swept key except
the mitigation keys (key paths starting with ``mitigations``). In a mitigations × strength sweep,
DANN at strength 0.5 is compared with the plain model at strength 0.5, never at another strength.
A setting without such a baseline is not compared at all.

**Unit of replication.** All sweep points of one seed share the patient splits, and so do the
cells of one seed (one per training domain). Each (seed, training domain) cell of a setting is
therefore paired with the same cell of its baseline, the paired differences are averaged over the
training domains of the seed, and the statistics see one difference per seed: n is the number of
seeds.

**Intervals and tests.** A paired t interval (95%, n − 1 degrees of freedom) and a two-sided
one-sample t-test of the per-seed differences against 0. With the few seeds a run usually has
(3–10), a t interval keeps its coverage where a percentile bootstrap over so few values is too
narrow, and it needs no random numbers, so a report is the same every time it is rebuilt.

**Verdict.** The gap is the cross-domain loss in the metric's good direction: same − other for a
metric where higher is better, other − same where lower is better. *Narrowing* = baseline gap −
setting gap, so a positive narrowing is a narrower gap whichever way the metric points. The
p-values of all settings compared on one metric are Holm-adjusted; a setting "narrowed the gap"
when its adjusted p is below 0.05 and the narrowing is positive, "widened" it when negative, and
otherwise made "no clear change". With fewer than two seeds there is no interval and no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from harmonia.results import HEAD_COLUMNS, TAIL_COLUMNS

CONFIDENCE = 0.95
ALPHA = 0.05
METHOD = "paired t over seeds"
NO_MITIGATION = "none"

NARROWED = "narrowed the gap"
WIDENED = "widened the gap"
NO_CLEAR_CHANGE = "no clear change"
FEW_SEEDS = "not enough seeds"
NO_BASELINE = "no baseline"


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% confidence interval and the two-sided p-value of "the mean is 0".

    With fewer than two seeds the interval and p are NaN.
    """

    mean: float
    low: float
    high: float
    p: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """One setting against its baseline on one metric.

    ``narrowing`` is oriented (positive = narrower gap); ``other`` and ``same`` are the plain
    changes (setting − baseline) of the other- and same-domain metric. Without a baseline they
    are None. ``same_worse`` flags a narrowed gap bought with a same-domain value that clearly
    got worse (its interval excludes 0 on the bad side).
    """

    setting: int
    baseline: int | None
    narrowing: Estimate | None
    other: Estimate | None
    same: Estimate | None
    p_adjusted: float = math.nan
    verdict: str = NO_BASELINE
    same_worse: bool = False


def estimate(values: np.ndarray | pd.Series) -> Estimate:
    """Mean, 95% t interval and t-test p-value (against 0) of per-seed values; NaN values are left out.

    Values that are all equal (two settings that gave identical numbers) have a zero-width
    interval at their mean, and p = 1 if that mean is 0, else 0: scipy's t-test is undefined there.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Estimate(mean, math.nan, math.nan, math.nan, n)
    if np.allclose(values, values[0], rtol=1e-12, atol=1e-12):
        return Estimate(mean, mean, mean, 1.0 if abs(mean) <= 1e-12 else 0.0, n)
    test = stats.ttest_1samp(values, 0.0)
    interval = test.confidence_interval(CONFIDENCE)
    return Estimate(mean, float(interval.low), float(interval.high), float(test.pvalue), n)


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j ≤ i of min(1, (m − j + 1) · p_(j)), in the input's order.

    It keeps the chance of any false "narrowed"/"widened" among the settings of one report at 5%.
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def is_mitigation_key(column: str) -> bool:
    """Whether a swept key path sets mitigations (``mitigations``, ``mitigations.1.params.weight``)."""
    return column == "mitigations" or column.startswith("mitigations.")


def pairing_keys(results: pd.DataFrame) -> list[str]:
    """The columns a setting and its baseline must agree on: the cohort and every swept key but the mitigation keys."""
    swept = [c for c in results.columns if c not in HEAD_COLUMNS + TAIL_COLUMNS]
    return ["cohort"] + [c for c in swept if not is_mitigation_key(c)]


def baselines(results: pd.DataFrame) -> dict[int, int | None]:
    """For each setting (sweep point with mitigations), its baseline sweep point, or None if it has none.

    Identical baseline configurations (a grid that lists one twice) pair with the first.
    """
    keys = pairing_keys(results)
    points = results.drop_duplicates("sweep_id").set_index("sweep_id").sort_index()
    values = points[keys].astype(str).apply(tuple, axis=1)
    plain = points["mitigations"] == NO_MITIGATION
    pairs: dict[int, int | None] = {}
    for sweep_id in points.index[~plain]:
        matches = values[plain][values[plain] == values[sweep_id]].index
        pairs[int(sweep_id)] = int(matches[0]) if len(matches) else None
    return pairs


def baseline_points(results: pd.DataFrame) -> list[int]:
    """The sweep points without mitigations."""
    return sorted(int(s) for s in results.loc[results["mitigations"] == NO_MITIGATION, "sweep_id"].unique())


def cell_values(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``same`` and ``other`` per (sweep point, seed, training domain) cell of ``metric``.

    ``other`` is the mean over all other test domains; a cell tested on one domain has no ``other``.
    """
    rows = results[results["metric"] == metric]
    same = rows["train_domain"] == rows["test_domain"]
    key = ["sweep_id", "seed", "train_domain"]
    frame = pd.DataFrame(
        {"same": rows[same].groupby(key)["value"].mean(), "other": rows[~same].groupby(key)["value"].mean()}
    )
    return frame.assign(delta=frame["other"] - frame["same"])


def seed_means(cells: pd.DataFrame) -> pd.DataFrame:
    """Cell values averaged over the training domains within each seed (the seed is the unit of replication)."""
    return cells.groupby(level="seed").mean()


def paired_changes(cells: pd.DataFrame, setting: int, baseline: int) -> pd.DataFrame:
    """Per seed: setting − baseline of ``same``, ``other`` and ``delta``, over the cells both have."""
    mine, theirs = cells.loc[setting], cells.loc[baseline]
    shared = mine.index.intersection(theirs.index)
    return seed_means(mine.loc[shared] - theirs.loc[shared])


def shift(cells: pd.DataFrame, point: int) -> Estimate:
    """Δ = other − same of one sweep point, per seed, as an estimate over seeds."""
    return estimate(seed_means(cells.loc[point])["delta"])


def compare(results: pd.DataFrame, metric: str, higher_is_better: bool) -> list[Comparison]:
    """Every setting against its baseline on ``metric``, with Holm-adjusted verdicts (in sweep-point order)."""
    cells = cell_values(results, metric)
    pairs = baselines(results[results["metric"] == metric])
    drafts = [_paired(cells, s, b, higher_is_better) for s, b in sorted(pairs.items())]
    tested = [i for i, c in enumerate(drafts) if c.narrowing is not None and c.narrowing.n >= 2]
    adjusted = dict(zip(tested, holm([drafts[i].narrowing.p for i in tested]))) if tested else {}
    return [_decide(c, adjusted.get(i, math.nan), higher_is_better) for i, c in enumerate(drafts)]


def _paired(cells: pd.DataFrame, setting: int, baseline: int | None, higher_is_better: bool) -> Comparison:
    """The estimates of one setting against its baseline (None without a baseline)."""
    if baseline is None:
        return Comparison(setting, None, None, None, None)
    changes = paired_changes(cells, setting, baseline)
    orientation = 1.0 if higher_is_better else -1.0
    return Comparison(
        setting,
        baseline,
        narrowing=estimate(orientation * changes["delta"]),
        other=estimate(changes["other"]),
        same=estimate(changes["same"]),
    )


def _decide(draft: Comparison, p_adjusted: float, higher_is_better: bool) -> Comparison:
    """The verdict from the Holm-adjusted p and the side of the narrowing, and the same-domain flag."""
    if draft.narrowing is None:
        return draft
    if draft.narrowing.n < 2:
        return replace(draft, verdict=FEW_SEEDS)
    if p_adjusted >= ALPHA:
        return replace(draft, p_adjusted=p_adjusted, verdict=NO_CLEAR_CHANGE)
    verdict = NARROWED if draft.narrowing.mean > 0 else WIDENED
    same = draft.same
    worse = same.high < 0 if higher_is_better else same.low > 0
    return replace(draft, p_adjusted=p_adjusted, verdict=verdict, same_worse=verdict == NARROWED and worse)
