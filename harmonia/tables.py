"""The study's tables as numbers, read from a run's results: Table 2, the mean Δ per modality, level sweeps.

These are the numbers behind :mod:`harmonia.report` (which formats them) and :mod:`harmonia.figures` (which
draws them), after Guo et al.: Table 2 (same- vs other-domain per dataset and training domain), the mean Δ
per modality (Figure 3) and the metric against the level of a swept mitigation parameter (Figures 4/5, with
each level's comparison from :func:`harmonia.statistics.compare`). Also where the data came from (synthetic,
real or both) and which values the run left undefined. Undefined (NaN) values are left out of every mean
and sd: each is over the values that exist.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from harmonia import statistics
from harmonia.references import Reference
from harmonia.results import HEAD_COLUMNS, TAIL_COLUMNS, summarize


@dataclass(frozen=True)
class Provenance:
    """Where a run's data came from, per cohort: ``synthetic`` (harmonia's twins) or ``real``."""

    cohorts: dict[str, str]

    @property
    def synthetic(self) -> bool:
        return "synthetic" in self.cohorts.values()

    @property
    def real(self) -> bool:
        return "real" in self.cohorts.values()

    @property
    def label(self) -> str:
        """What the title, every table caption and every figure say."""
        if self.synthetic and self.real:
            return "mixed data: SYNTHETIC and real"
        if self.synthetic:
            return "SYNTHETIC data"
        if self.real:
            return "real data"
        return "data of unrecorded origin"


def provenance(results: pd.DataFrame, manifest: dict) -> Provenance:
    """Each cohort's data kind, from the manifest's ``data_provenance`` and else results.csv's ``data`` column."""
    kinds = {}
    if not results.empty:
        kinds.update(results.drop_duplicates("cohort").set_index("cohort")["data"].astype(str).to_dict())
    for cohort, entry in manifest.get("data_provenance", {}).items():
        if isinstance(entry, dict) and entry.get("data"):
            kinds[str(cohort)] = str(entry["data"])
    return Provenance(kinds)


def is_ci_bound(metric: str, metrics: set[str]) -> bool:
    """Whether ``metric`` is the lower or upper bound of another metric's CI (``auc_ci_low`` of ``auc``)."""
    return any(metric.endswith(s) and metric.removesuffix(s) in metrics for s in ("_ci_low", "_ci_high"))


def swept_columns(results: pd.DataFrame) -> list[str]:
    """The columns of swept keys (named by key path)."""
    return [c for c in results.columns if c not in HEAD_COLUMNS + TAIL_COLUMNS]


def _points(results: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep point (its cohort, mitigations and swept values), indexed by sweep_id."""
    return results.drop_duplicates("sweep_id").set_index("sweep_id").sort_index()


def point_labels(results: pd.DataFrame, cohort: bool | None = None) -> dict[int, str]:
    """A readable label per sweep point: its mitigations plus its swept values, led by its cohort
    (``"ct_lidc: none"``) when the run holds more than one cohort or ``cohort`` is True."""
    swept = [c for c in swept_columns(results) if c != "mitigations"]
    if cohort is None:
        cohort = results["cohort"].nunique() > 1
    labels = {}
    for sweep_id, first in _points(results).iterrows():
        extra = ", ".join(f"{c}={first[c]}" for c in swept if not pd.isna(first[c]))
        label = f"{first['mitigations']}" + (f" ({extra})" if extra else "")
        labels[int(sweep_id)] = f"{first['cohort']}: {label}" if cohort else label
    return labels


def domain_order(results: pd.DataFrame) -> dict[tuple[str, str], int]:
    """A rank for each (cohort, domain): within a cohort, the order its domains first appear as test domains
    (the cohort's own order), so that one cohort's "Other" does not sort another's "Siemens" after it."""
    pairs = dict.fromkeys(zip(results["cohort"].astype(str), results["test_domain"].astype(str)))
    return {pair: i for i, pair in enumerate(pairs)}


def _order(values: pd.Series) -> pd.Series:
    """Each value's rank by first appearance, for sorting in the run's own order."""
    rank = {v: i for i, v in enumerate(dict.fromkeys(values))}
    return values.map(rank)


# -- Table 2 ---------------------------------------------------------------------------------------------


def study_table(results: pd.DataFrame, metric: str, reference: Reference | None = None) -> pd.DataFrame:
    """Table 2 of ``metric`` as numbers: one row per setting, dataset (cohort) and training domain.

    Columns: setting (the sweep point without its cohort), sweep_id, modality, dataset, data, train_domain,
    mitigations, same_mean, same_sd, other_mean, other_sd, delta, delta_sd (over seeds; see
    :func:`harmonia.results.summarize`), n_same and n_other (seeds with a value), and with ``reference`` the
    paper's Δ (``paper_delta``) on rows without mitigations whose dataset and training domain the paper has.
    Sorted by setting, then modality, then cohort, in the run's own order. Undefined (NaN) values are left out
    of every mean and sd.
    """
    summary = summarize(results)
    summary = summary[summary["metric"] == metric].reset_index(drop=True)
    settings = point_labels(results, cohort=False)
    cells = statistics.cell_values(results, metric)
    n_other = cells.groupby(level=["sweep_id", "train_domain"])["other"].count()
    table = pd.DataFrame(
        {
            "setting": [settings[int(s)] for s in summary["sweep_id"]],
            "sweep_id": summary["sweep_id"].astype(int),
            "modality": summary["modality"].astype(str),
            "dataset": summary["cohort"].astype(str),
            "data": summary["data"].astype(str),
            "train_domain": summary["train_domain"].astype(str),
            "mitigations": summary["mitigations"].astype(str),
            **{c: summary[c] for c in ("same_mean", "same_sd", "other_mean", "other_sd", "delta", "delta_sd")},
            "n_same": summary["n_seeds"].astype(int),
            "n_other": [
                int(n_other.get((int(s), str(t)), 0)) for s, t in zip(summary["sweep_id"], summary["train_domain"])
            ],
        }
    )
    if reference is not None:
        rows = [
            reference.row(c, t) if m == statistics.NO_MITIGATION else None
            for c, t, m in zip(table["dataset"], table["train_domain"], table["mitigations"])
        ]
        table["paper_delta"] = [r.delta if r else math.nan for r in rows]
    rank = domain_order(results)
    order = pd.DataFrame(
        {
            "setting": _order(table["setting"]),
            "modality": _order(table["modality"]),
            "dataset": _order(table["dataset"]),
            "train": [rank[(c, t)] for c, t in zip(table["dataset"], table["train_domain"])],
        }
    )
    return table.loc[order.sort_values(list(order.columns), kind="stable").index].reset_index(drop=True)


def modality_means(results: pd.DataFrame, metric: str, reference: Reference | None = None) -> pd.DataFrame:
    """The mean Δ per setting and modality over its (dataset, training domain) rows of :func:`study_table`.

    Columns: setting, modality, rows (rows with a Δ), mean_delta, sd_rows (sample sd of the rows' Δ),
    sd_seeds (sample sd over seed indices of the per-seed mean Δ over the rows), n_seeds, and with
    ``reference`` the paper's quoted mean (``paper_mean_delta``) for settings without mitigations.
    """
    table = study_table(results, metric)
    cells = statistics.cell_values(results, metric).reset_index()
    settings = point_labels(results, cohort=False)
    modality = _points(results)["modality"].astype(str)
    cells["setting"] = [settings[int(s)] for s in cells["sweep_id"]]
    cells["modality"] = [modality[s] for s in cells["sweep_id"]]
    # a row's Δ for one seed, then the mean over the rows of a modality for that seed
    per_seed = {
        group: seeds.groupby("seed")["delta"].mean().dropna()
        for group, seeds in cells.groupby(["setting", "modality"], sort=False)
    }
    rows = []
    for (setting, mod), part in table.groupby(["setting", "modality"], sort=False):
        seeds = per_seed.get((setting, mod), pd.Series(dtype=float))
        deltas = part["delta"].dropna()
        plain = (part["mitigations"] == statistics.NO_MITIGATION).all()
        rows.append(
            {
                "setting": setting,
                "modality": mod,
                "rows": len(deltas),
                "mean_delta": deltas.mean() if len(deltas) else math.nan,
                "sd_rows": deltas.std(ddof=1) if len(deltas) > 1 else math.nan,
                "sd_seeds": seeds.std(ddof=1) if len(seeds) > 1 else math.nan,
                "n_seeds": len(seeds),
                **(
                    {"paper_mean_delta": reference.modality_means.get(mod, math.nan) if plain else math.nan}
                    if reference is not None
                    else {}
                ),
            }
        )
    return pd.DataFrame(rows)


# -- level sweeps (Figures 4 and 5) ----------------------------------------------------------------------


def level_keys(results: pd.DataFrame) -> list[str]:
    """The swept numeric keys under ``mitigations`` (a noise level, a mixing fraction), in column order."""
    keys = []
    for column in swept_columns(results):
        if column == "mitigations" or not statistics.is_mitigation_key(column):
            continue
        values = results[column]
        if pd.api.types.is_bool_dtype(values):
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().any() and not (values.notna() & numbers.isna()).any():
            keys.append(column)
    return keys


def short_key(key: str, keys: list[str] | None = None) -> str:
    """A key path's last part (``alpha``), or more of it where two keys of ``keys`` share the last part;
    safe in a file name."""
    last = key.split(".")[-1]
    if keys and sum(k.split(".")[-1] == last for k in keys) > 1:
        last = key.removeprefix("mitigations.").replace(".", "_")
    return re.sub(r"[^A-Za-z0-9_-]", "_", last)


@dataclass(frozen=True)
class LevelSeries:
    """The sweep points that differ only in the level of ``key``: the baseline (level 0) and each level."""

    key: str
    cohort: str
    name: str
    baseline: int | None
    points: tuple[tuple[float, int], ...]

    @property
    def levels(self) -> tuple[tuple[float, int], ...]:
        """(level, sweep point) of the baseline at 0 and then of each level, ascending."""
        return ((0.0, self.baseline),) + self.points if self.baseline is not None else self.points


def level_series(results: pd.DataFrame, key: str) -> list[LevelSeries]:
    """The series of ``key``: the sweep points with mitigations and a level, grouped by their baseline (the same
    cohort and non-mitigation swept values, :func:`harmonia.statistics.baselines`), their mitigations and any
    other mitigation key."""
    points = _points(results)
    pairs = statistics.baselines(results)
    level = pd.to_numeric(points[key], errors="coerce")
    others = [c for c in swept_columns(results) if c not in (key, "mitigations") and statistics.is_mitigation_key(c)]
    fixed = [c for c in swept_columns(results) if not statistics.is_mitigation_key(c)]
    groups: dict[tuple, list[tuple[float, int]]] = {}
    chosen = points.index[(points["mitigations"] != statistics.NO_MITIGATION) & level.notna()]
    for s in chosen:
        group = (pairs.get(int(s)), points.at[s, "cohort"], points.at[s, "mitigations"])
        group += tuple(str(points.at[s, c]) for c in others + fixed)
        groups.setdefault(group, []).append((float(level[s]), int(s)))
    series = []
    for (baseline, cohort, mitigations, *_), members in groups.items():
        first = points.loc[members[0][1]]
        extra = [f"{c}={first[c]}" for c in others + fixed if not pd.isna(first[c])]
        name = f"{cohort}: {mitigations}" + (f" ({', '.join(extra)})" if extra else "")
        series.append(LevelSeries(key, str(cohort), name, baseline, tuple(sorted(members))))
    return series


def level_curves(results: pd.DataFrame, metric: str, key: str) -> pd.DataFrame:
    """Per series, training domain, test domain and level: mean, sd and count over seeds of ``metric``.

    Columns: series, cohort, train_domain, test_domain, level, mean, sd, n. NaN values are left out.
    """
    rows = results[results["metric"] == metric]
    stats = rows.groupby(["sweep_id", "train_domain", "test_domain"], sort=False)["value"].agg(["mean", "std", "count"])
    rank = domain_order(results)
    frames = []
    for series in level_series(results, key):
        for level, point in series.levels:
            if point not in stats.index.get_level_values(0):
                continue
            part = stats.loc[point].reset_index()
            frames.append(
                pd.DataFrame(
                    {
                        "series": series.name,
                        "cohort": series.cohort,
                        "train_domain": part["train_domain"].astype(str),
                        "test_domain": part["test_domain"].astype(str),
                        "level": level,
                        "mean": part["mean"],
                        "sd": part["std"],
                        "n": part["count"],
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["series", "cohort", "train_domain", "test_domain", "level", "mean", "sd", "n"])
    curves = pd.concat(frames, ignore_index=True)
    order = pd.DataFrame(
        {
            "series": _order(curves["series"]),
            "train": [rank[(c, d)] for c, d in zip(curves["cohort"], curves["train_domain"])],
            "test": [rank[(c, d)] for c, d in zip(curves["cohort"], curves["test_domain"])],
            "level": curves["level"],
        }
    )
    return curves.loc[order.sort_values(list(order.columns), kind="stable").index].reset_index(drop=True)


def level_table(results: pd.DataFrame, metric: str, higher_is_better: bool, key: str) -> pd.DataFrame:
    """Per level of ``key``: the setting's :class:`~harmonia.statistics.Comparison` with its baseline on
    ``metric``, as computed by :func:`harmonia.statistics.compare` (Holm over every setting compared).

    Columns: series, level, setting (sweep point), other, same, narrowing (Estimates), p_adjusted, verdict,
    same_worse.
    """
    rows = results[results["metric"] == metric]
    comparisons = {c.setting: c for c in statistics.compare(rows, metric, higher_is_better)}
    records = []
    for series in level_series(rows, key):
        for level, point in series.points:
            c = comparisons.get(point)
            if c is None or c.baseline is None:
                continue
            records.append(
                {
                    "series": series.name,
                    "level": level,
                    "setting": point,
                    "other": c.other,
                    "same": c.same,
                    "narrowing": c.narrowing,
                    "p_adjusted": c.p_adjusted,
                    "verdict": c.verdict,
                    "same_worse": c.same_worse,
                }
            )
    return pd.DataFrame(
        records,
        columns=["series", "level", "setting", "other", "same", "narrowing", "p_adjusted", "verdict", "same_worse"],
    )


def unlevelled_points(results: pd.DataFrame) -> set[int]:
    """The sweep points that are not a level of a level sweep (baselines, and settings like DANN): the ones
    Figures 2 and 3 show; Figures 4/5 show the levels."""
    shown = {int(s) for s in _points(results).index}
    for key in level_keys(results):
        for series in level_series(results, key):
            shown -= {p for _, p in series.points}
    return shown


# -- undefined values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UndefinedValues:
    """The (cell, test domain, metric) values a run left undefined, from the manifest's ``cells[].undefined``.

    ``by_reason`` counts them per (metric, reason); ``empty_in_results`` counts results.csv's empty values
    (more than ``total`` for a run folder from before harmonia recorded the reasons).
    """

    total: int
    by_reason: dict[tuple[str, str], int]
    empty_in_results: int


def undefined_values(results: pd.DataFrame, manifest: dict) -> UndefinedValues:
    """Count the manifest's undefined values per (metric, reason), and results.csv's empty values."""
    counts: dict[tuple[str, str], int] = {}
    for cell in manifest.get("cells", []):
        for entry in cell.get("undefined", []) if isinstance(cell, dict) else []:
            key = (str(entry.get("metric", "?")), str(entry.get("reason") or "undefined"))
            counts[key] = counts.get(key, 0) + 1
    empty = int(results["value"].isna().sum()) if not results.empty else 0
    return UndefinedValues(sum(counts.values()), counts, empty)
