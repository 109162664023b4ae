"""The report's section on cell-scope metrics (a vendor probe, image quality against a reference domain).

Such metrics score a trained cell as a whole: a probe's domain AUROC is about every domain at once (test domain
``all``), its recall and an image-quality score are about one domain. They have no same- versus other-domain
reading, so they get one table of their own, per setting and training domain, with the primary metric's
other-domain value and Δ beside the all-domain rows: "how much vendor information is left" next to "how much
accuracy was kept".
"""

from __future__ import annotations

import math

import pandas as pd

from harmonia.api import ALL_DOMAINS
from harmonia.tables import Provenance, domain_order, is_ci_bound, point_labels, study_table

NOTE = (
    "Each value is the mean ± sd over seeds of the metric in each (seed, training domain) cell; with one seed it "
    "is that cell's value and, where the evaluator gives one, its 95% CI in brackets, as the evaluator computes it "
    "(a bootstrap over the test patients for a probe, Fisher's z for a concordance). A vendor probe's ideal is "
    "chance (AUROC 0.5, balanced accuracy 1/K): less vendor information left."
)


def section(cell_rows: pd.DataFrame, task_rows: pd.DataFrame, primary: str, where: Provenance) -> list[str]:
    """Markdown lines of the cell-scope metrics' section of ``report.md``."""
    table = cell_table(cell_rows, task_rows, primary)
    return [
        "## Whole-cell metrics (vendor information, image quality)",
        "",
        f"**Cell-scope metrics per setting, training domain and test domain ({where.label}); the primary metric's "
        f"other-domain value and Δ beside the all-domain rows.**",
        "",
        table.to_markdown(index=False, disable_numparse=True),
        "",
        NOTE,
        "",
    ]


def cell_table(cell_rows: pd.DataFrame, task_rows: pd.DataFrame, primary: str) -> pd.DataFrame:
    """One row per setting, training domain and test domain; a column per cell-scope metric (CI bounds folded
    into their metric), then the primary metric's other-domain mean and Δ on the all-domain rows."""
    labels = point_labels(pd.concat([task_rows, cell_rows]) if not task_rows.empty else cell_rows)
    metrics = list(dict.fromkeys(cell_rows["metric"]))
    shown = [m for m in metrics if not is_ci_bound(m, set(metrics))]
    keys = ["sweep_id", "cohort", "train_domain", "test_domain"]
    summary = study_table(task_rows, primary).set_index(["sweep_id", "train_domain"]) if not task_rows.empty else None
    rank = domain_order(cell_rows)
    rows = []
    for (sweep_id, cohort, train, test), part in cell_rows.groupby(keys, sort=False):
        row = {"setting": labels[int(sweep_id)], "train domain": train, "test domain": test}
        for metric in shown:
            row[metric] = _value_text(part, metric)
        if summary is not None and test == ALL_DOMAINS and (int(sweep_id), train) in summary.index:
            found = summary.loc[(int(sweep_id), train)]
            row[f"other-domain {primary}"] = f"{found['other_mean']:.3f}"
            row[f"Δ {primary}"] = f"{found['delta']:+.3f}"
        row["_order"] = (int(sweep_id), rank.get((cohort, train), 0), test != ALL_DOMAINS, rank.get((cohort, test), 0))
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values("_order", kind="stable").drop(columns="_order")
    return frame.fillna("")


def _value_text(part: pd.DataFrame, metric: str) -> str:
    """``mean ± sd (n seeds)`` over seeds, or a single cell's value with its CI; empty when the metric is absent."""
    values = part.loc[part["metric"] == metric, "value"].astype(float)
    if values.empty:
        return ""
    if len(values) > 1:
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} ({values.count()} seeds)"
    low = part.loc[part["metric"] == f"{metric}_ci_low", "value"].astype(float)
    high = part.loc[part["metric"] == f"{metric}_ci_high", "value"].astype(float)
    if len(low) == 1 and len(high) == 1 and not (math.isnan(low.iloc[0]) or math.isnan(high.iloc[0])):
        return f"{values.iloc[0]:.3f} [{low.iloc[0]:.3f}, {high.iloc[0]:.3f}]"
    return f"{values.iloc[0]:.3f}"
