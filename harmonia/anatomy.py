"""Shift anatomy: the share of the plain model's cross-domain gap each mitigation recovers, per kind of shift.

A run that sweeps the mitigations against another key (the twin's signature ``components``, one at a time)
pairs every setting with the plain model of the same shift (:mod:`harmonia.statistics`). For each pair the
recovered share is narrowing / plain gap, where the gap is the cross-domain loss in the metric's good
direction and the narrowing is the baseline gap minus the setting's, both means over seeds. Its 95% interval
is the narrowing's paired-t interval divided by the plain gap's mean: it treats the plain gap as known, so it
is a little narrow; a shift whose plain gap is not clearly above 0 (its own 95% CI reaches 0) has nothing to
recover, and its shares are left out ("no clear gap") rather than divided by noise.
"""

from __future__ import annotations

import math

import pandas as pd

from harmonia import statistics
from harmonia.tables import swept_columns

NO_CLEAR_GAP = "no clear gap"


def shift_keys(results: pd.DataFrame) -> list[str]:
    """The swept keys that are not mitigation keys and take more than one value: what a row of the table is."""
    return [
        c
        for c in swept_columns(results)
        if not statistics.is_mitigation_key(c) and results[c].astype(str).nunique() > 1
    ]


def recovery_table(results: pd.DataFrame, metric: str, higher_is_better: bool) -> pd.DataFrame:
    """One row per (shift, method) pair: shift (the row's swept values), method (the setting's mitigations),
    gap_mean, gap_low, gap_high (the plain model's gap), share, share_low, share_high and note; empty when the run
    sweeps no shift key or pairs no setting with a baseline."""
    keys = shift_keys(results)
    rows = results[results["metric"] == metric]
    if not keys or rows.empty:
        return pd.DataFrame()
    points = rows.drop_duplicates("sweep_id").set_index("sweep_id")
    cells = statistics.cell_values(rows, metric)
    orientation = 1.0 if higher_is_better else -1.0
    table = []
    for comparison in statistics.compare(rows, metric, higher_is_better):
        if comparison.baseline is None or comparison.narrowing is None:
            continue
        gap = _gap(statistics.shift(cells, comparison.baseline), orientation)
        clear = gap.n >= 2 and gap.low > 0
        narrowing = comparison.narrowing
        point = points.loc[comparison.setting]
        table.append(
            {
                "shift": ", ".join(str(point[k]) for k in keys),
                "method": str(point["mitigations"]),
                "gap_mean": gap.mean,
                "gap_low": gap.low,
                "gap_high": gap.high,
                "share": narrowing.mean / gap.mean if clear else math.nan,
                "share_low": narrowing.low / gap.mean if clear else math.nan,
                "share_high": narrowing.high / gap.mean if clear else math.nan,
                "note": "" if clear else NO_CLEAR_GAP,
            }
        )
    return pd.DataFrame(table)


def _gap(delta: statistics.Estimate, orientation: float) -> statistics.Estimate:
    """The plain model's gap (the loss in the good direction) from its Δ = other − same."""
    bounds = sorted((-orientation * delta.low, -orientation * delta.high))
    return statistics.Estimate(-orientation * delta.mean, bounds[0], bounds[1], delta.p, delta.n)


def markdown(table: pd.DataFrame) -> str:
    """The recovered shares as a shift × method grid of ``share [low, high]`` texts, the plain gap first."""
    gaps = table.drop_duplicates("shift").set_index("shift")
    grid = pd.DataFrame(index=gaps.index)
    grid["plain gap (95% CI)"] = [
        f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in zip(gaps["gap_mean"], gaps["gap_low"], gaps["gap_high"])
    ]
    for method, part in table.groupby("method", sort=False):
        texts = [
            r["note"] if r["note"] else f"{r['share']:+.2f} [{r['share_low']:+.2f}, {r['share_high']:+.2f}]"
            for _, r in part.iterrows()
        ]
        grid[method] = pd.Series(texts, index=part["shift"].to_numpy())
    return grid.fillna("").reset_index().to_markdown(index=False, disable_numparse=True)
