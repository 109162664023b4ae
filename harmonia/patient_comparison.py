"""Per-patient comparisons of a setting with its baseline, from a run's ``patients.csv`` (seed 003's tables).

Seed 003 compared each reconstruction's segmentation before and after standardisation patient by patient: a
paired t-test of Dice, liver-volume differences and Bland–Altman plots. Here every per-patient metric an
evaluator kept (``Metric.per_patient``) is paired between each setting and its baseline (the pairing of
:mod:`harmonia.statistics`) on the same (seed, training domain, test domain, patient): the same patient, tested
on the same domain by models trained on the same split. The pairs of one patient over several seeds are not
independent draws, so with several seeds the t-test's p is optimistic; the table says how many pairs and seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harmonia import agreement, statistics
from harmonia.results import read_patient_values
from harmonia.tables import point_labels

#: per-patient values drawn in the Bland–Altman figure, not compared as metrics of their own
VOLUMES = ("volume_predicted", "volume_reference")
PAIR_KEY = ["seed", "train_domain", "test_domain", "patient"]


def read_patients(run_dir: Path) -> pd.DataFrame:
    """``patients.csv`` of ``run_dir`` (empty with its columns when the run has none; one-line InputError if damaged)."""
    return read_patient_values(Path(run_dir) / "patients.csv")


def compared_metrics(patients: pd.DataFrame) -> list[str]:
    """The per-patient metrics worth a row: not the raw volumes, and not a copy of an earlier metric (the Dice of
    a task's only class is its mean Dice)."""
    kept: list[str] = []
    for metric, part in patients.groupby("metric", sort=False):
        if metric in VOLUMES:
            continue
        values = part.set_index(["sweep_id", *PAIR_KEY])["value"]
        if not any(_same_values(values, patients, other) for other in kept):
            kept.append(str(metric))
    return kept


def _same_values(values: pd.Series, patients: pd.DataFrame, other: str) -> bool:
    theirs = patients[patients["metric"] == other].set_index(["sweep_id", *PAIR_KEY])["value"]
    return len(theirs) == len(values) and theirs.reindex(values.index).equals(values)


def paired_table(patients: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, metric and test domain: pairs, seeds, baseline and setting mean ± sd, the mean
    difference (setting − baseline) with its 95% CI and the paired t-test's p."""
    pairs = statistics.baselines(results)
    labels = point_labels(results)
    rows = []
    for metric in compared_metrics(patients):
        values = patients[patients["metric"] == metric]
        for setting, baseline in sorted(pairs.items()):
            if baseline is None:
                continue
            mine = values[values["sweep_id"] == setting].set_index(PAIR_KEY)["value"]
            theirs = values[values["sweep_id"] == baseline].set_index(PAIR_KEY)["value"]
            shared = mine.index.intersection(theirs.index)
            for domain in dict.fromkeys(shared.get_level_values("test_domain")):
                index = shared[shared.get_level_values("test_domain") == domain]
                a, b = mine.loc[index].to_numpy(float), theirs.loc[index].to_numpy(float)
                test = agreement.paired_t(a, b)
                rows.append(
                    {
                        "setting": labels[setting],
                        "metric": metric,
                        "test domain": domain,
                        "pairs (seeds)": f"{test.n} ({index.get_level_values('seed').nunique()})",
                        "baseline": _pm(b),
                        "setting value": _pm(a),
                        "difference (95% CI)": _difference(a - b, test),
                        "paired t p": "n/a" if np.isnan(test.p) else f"{test.p:.3g}",
                    }
                )
    return pd.DataFrame(rows)


def _pm(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def _difference(differences: np.ndarray, test: agreement.PairedT) -> str:
    if np.isnan(test.low):
        return f"{differences.mean():+.3f} (no CI: {len(differences)} pair(s))"
    return f"{test.mean_difference:+.3f} ({test.low:+.3f} to {test.high:+.3f})"


def bland_altman_points(patients: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep point, test domain, seed, patient): the mean of predicted and reference volume and their
    difference in % of the reference (Bland–Altman's axes, as seed 003 drew them); empty without volumes."""
    volumes = patients[patients["metric"].isin(VOLUMES)]
    if volumes.empty:
        return pd.DataFrame()
    wide = volumes.pivot_table(index=["sweep_id", *PAIR_KEY], columns="metric", values="value").dropna()
    wide = wide[wide["volume_reference"] > 0]
    predicted, reference = wide["volume_predicted"], wide["volume_reference"]
    return pd.DataFrame(
        {"mean": (predicted + reference) / 2, "difference_pct": 100 * (predicted - reference) / reference}
    ).reset_index()
