"""The report's figures, after Guo et al.'s Figures 2–5, each stamped with where its data came from.

Every function takes plain tables that :mod:`harmonia.report` computed from a run folder and returns a
matplotlib Figure; :func:`save` writes it. A figure says its provenance twice where it can be seen (the
title, and a stamp in the lower-right corner that survives cropping the title away) and once in the PNG's
metadata (``Title`` and ``Description``), so a figure copied into a slide still says SYNTHETIC.
:func:`visible_texts` lists what a figure shows, for tests and for anyone checking a figure before it is saved.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SYNTHETIC_COLOR = "#b2182b"
PAPER_COLOR = "red"
SAME_COLOR, OTHER_COLOR = "#4477aa", "#ee8866"


def stamp(fig: Figure, title: str, provenance: str) -> None:
    """Title ``fig`` with ``title`` and its provenance, and print the provenance in its lower-right corner."""
    synthetic = "SYNTHETIC" in provenance
    fig.suptitle(f"{title} ({provenance})", fontsize=10)
    fig.text(
        0.995,
        0.005,
        provenance.upper() if synthetic else provenance,
        ha="right",
        va="bottom",
        fontsize=8,
        fontweight="bold" if synthetic else "normal",
        color=SYNTHETIC_COLOR if synthetic else "dimgray",
    )


def visible_texts(fig: Figure) -> list[str]:
    """Every non-empty text a figure shows: its title and stamp, and each panel's title, labels, ticks and legend."""
    texts = [t.get_text() for t in fig.texts]  # the title (suptitle) is one of them
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts + ax.get_xticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    return [t for t in texts if t]


def save(fig: Figure, path: Path, description: str) -> Path:
    """Write ``fig`` as a PNG whose metadata repeats its title (with the provenance) and ``description``; close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Title": fig.get_suptitle(), "Description": description})
    plt.close(fig)
    return path


def table2_bars(rows: pd.DataFrame, metric: str, provenance: str) -> Figure:
    """Figure 2: paired bars of same- and other-domain ``metric`` (± sd over seeds) per dataset and training
    domain, grouped by modality; one panel per setting.

    ``rows`` has the columns setting, modality, dataset, train_domain, same_mean, same_sd, other_mean, other_sd,
    in the order to draw.
    """
    settings = list(dict.fromkeys(rows["setting"])) or ["(no values)"]
    widest = max(len(rows[rows["setting"] == s]) for s in settings)
    fig, axes = plt.subplots(
        len(settings), 1, figsize=(max(5.0, 0.9 * widest + 2.0), 3.4 * len(settings) + 0.8), squeeze=False
    )
    for ax, setting in zip(axes[:, 0], settings):
        part = rows[rows["setting"] == setting].reset_index(drop=True)
        x = np.arange(len(part))
        same, other = part["same_sd"].fillna(0), part["other_sd"].fillna(0)
        ax.bar(x - 0.2, part["same_mean"], 0.4, yerr=same, capsize=2, color=SAME_COLOR, label="same domain")
        ax.bar(x + 0.2, part["other_mean"], 0.4, yerr=other, capsize=2, color=OTHER_COLOR, label="other domains")
        ax.set_xticks(x, [f"{d}\n{t}" for d, t in zip(part["dataset"], part["train_domain"])], fontsize=7)
        _modality_groups(ax, list(part["modality"]))
        ax.set_ylabel(metric)
        ax.set_xlabel("dataset and training domain")
        if len(settings) > 1:
            ax.set_title(setting, fontsize=9, pad=16)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    stamp(fig, f"Same- vs other-domain {metric} (mean ± sd over seeds)", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return fig


def _modality_groups(ax: plt.Axes, modalities: list[str]) -> None:
    """Name each run of equal modalities above the panel and separate the runs with a thin line."""
    starts = [i for i, m in enumerate(modalities) if i == 0 or m != modalities[i - 1]]
    ends = starts[1:] + [len(modalities)]
    for start, end in zip(starts, ends):
        if start > 0:
            ax.axvline(start - 0.5, color="lightgray", linewidth=0.8)
        ax.text((start + end - 1) / 2, 1.01, modalities[start], transform=ax.get_xaxis_transform(), ha="center")


def delta_by_modality(
    rows: pd.DataFrame,
    metric: str,
    provenance: str,
    paper: dict[str, float] | None = None,
    paper_label: str = "",
    paper_settings: Collection[str] = (),
) -> Figure:
    """Figure 3: Δ by modality as a box plot over (dataset, training domain) rows, one panel per setting.

    ``rows`` has the columns setting, modality, delta. Each row is a dot; this run's mean per modality a black
    dashed line; with ``paper`` (modality → mean Δ) the paper's means are red lines labelled ``paper_label`` in
    the panels of ``paper_settings`` (the settings the paper's numbers describe).
    """
    settings = list(dict.fromkeys(rows["setting"])) or ["(no values)"]
    modalities = list(dict.fromkeys(rows["modality"]))
    fig, axes = plt.subplots(
        1, len(settings), figsize=(max(4.0, 1.4 * len(modalities) + 2.0) * len(settings), 4.2), squeeze=False
    )
    for ax, setting in zip(axes[0], settings):
        part = rows[(rows["setting"] == setting) & rows["delta"].notna()]
        present = [m for m in modalities if (part["modality"] == m).any()]
        data = [part.loc[part["modality"] == m, "delta"].to_numpy(float) for m in present]
        positions = np.arange(len(present))
        if present:
            ax.boxplot(data, positions=positions, widths=0.5, medianprops={"color": "gray"}, showfliers=False)
        for i, values in enumerate(data):
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(i + jitter, values, s=14, color="black", alpha=0.6, zorder=3)
            ax.hlines(values.mean(), i - 0.3, i + 0.3, colors="black", linestyles="--", label="mean (this run)")
            if paper and setting in paper_settings and present[i] in paper:
                ax.hlines(paper[present[i]], i - 0.3, i + 0.3, colors=PAPER_COLOR, linewidth=2, label=paper_label)
        ax.axhline(0, color="lightgray", linewidth=0.8, zorder=0)
        ax.set_xticks(positions, [f"{m}\n({len(d)} rows)" for m, d in zip(present, data)])
        ax.set_xlim(-0.6, max(len(present), 1) - 0.4)
        ax.set_ylabel(f"Δ {metric} (other − same)")
        if len(settings) > 1:
            ax.set_title(setting, fontsize=9)
        if not present:
            ax.text(0.5, 0.5, "no cross-domain values", transform=ax.transAxes, ha="center")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")
    stamp(fig, f"Δ {metric} by modality over (dataset, training domain) rows", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def level_figure(curves: pd.DataFrame, key: str, metric: str, provenance: str) -> Figure:
    """Figures 4/5: ``metric`` against the level of ``key``, one panel per (series, training domain), one line
    per test domain with a ± sd band over seeds; level 0 is the baseline without the mitigation.

    ``curves`` has the columns series, train_domain, test_domain, level, mean, sd.
    """
    panels = list(dict.fromkeys(zip(curves["series"], curves["train_domain"])))
    series = list(dict.fromkeys(curves["series"]))
    columns = max(sum(1 for s, _ in panels if s == name) for name in series)
    fig, axes = plt.subplots(
        len(series), columns, figsize=(4.2 * columns, 3.3 * len(series) + 0.8), squeeze=False, sharey=True
    )
    colors = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(curves["test_domain"]))}
    for row, name in enumerate(series):
        trains = [t for s, t in panels if s == name]
        for col in range(columns):
            ax = axes[row, col]
            if col >= len(trains):
                ax.set_visible(False)
                continue
            part = curves[(curves["series"] == name) & (curves["train_domain"] == trains[col])]
            for test, line in part.groupby("test_domain", sort=False):
                line = line.sort_values("level")
                same = test == trains[col]
                x, mean, sd = line["level"].to_numpy(float), line["mean"].to_numpy(float), line["sd"].to_numpy(float)
                ax.plot(x, mean, marker="o", markersize=3, color=colors[test], linewidth=2 if same else 1.2)
                ax.lines[-1].set_label(f"test {test}{' (same domain)' if same else ''}")
                ax.fill_between(x, mean - np.nan_to_num(sd), mean + np.nan_to_num(sd), color=colors[test], alpha=0.15)
            ax.set_title(f"{name}, trained on {trains[col]}", fontsize=8)
            ax.set_xlabel(f"{key} (0 = baseline)")
            ax.legend(fontsize=7)
        axes[row, 0].set_ylabel(metric)
    stamp(fig, f"{metric} against {key} (mean ± sd over seeds)", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    return fig


def recovery_heatmap(table: pd.DataFrame, metric: str, provenance: str) -> Figure:
    """The shift-anatomy heatmap: the share of the plain gap in ``metric`` each method recovers (columns), per
    kind of shift (rows), each cell with its 95% interval; a shift with no clear plain gap is left grey.

    ``table`` is :func:`harmonia.anatomy.recovery_table`'s.
    """
    shifts = list(dict.fromkeys(table["shift"]))
    methods = list(dict.fromkeys(table["method"]))
    share = table.pivot(index="shift", columns="method", values="share").reindex(index=shifts, columns=methods)
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 3.2, 0.7 * len(shifts) + 2.0))
    ax.imshow(np.ma.masked_invalid(share.to_numpy(float)), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_facecolor("#dddddd")
    for _, row in table.iterrows():
        y, x = shifts.index(row["shift"]), methods.index(row["method"])
        text = row["note"] or f"{row['share']:+.2f}\n[{row['share_low']:+.2f}, {row['share_high']:+.2f}]"
        ax.text(x, y, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(shifts)), shifts, fontsize=8)
    ax.set_xlabel("method")
    ax.set_ylabel("shift between the domains")
    stamp(fig, f"Share of the plain {metric} gap recovered (95% CI; 1 = all, 0 = none)", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    return fig


def bland_altman(points: pd.DataFrame, labels: dict[int, str], provenance: str) -> Figure:
    """Bland–Altman plots of volume: one panel per test domain (rows) and sweep point (columns), each patient's
    mean volume against its difference in % of the reference, with the bias and the 95% limits of agreement.

    ``points`` is :func:`harmonia.patient_comparison.bland_altman_points`'s.
    """
    domains = list(dict.fromkeys(points["test_domain"]))
    sweep_ids = list(dict.fromkeys(points["sweep_id"]))
    fig, axes = plt.subplots(
        len(domains),
        len(sweep_ids),
        figsize=(3.6 * len(sweep_ids), 2.6 * len(domains) + 0.8),
        squeeze=False,
        sharey=True,
    )
    for row, domain in enumerate(domains):
        for col, sweep_id in enumerate(sweep_ids):
            ax = axes[row, col]
            part = points[(points["test_domain"] == domain) & (points["sweep_id"] == sweep_id)]
            ax.scatter(part["mean"], part["difference_pct"], s=10, color=OTHER_COLOR)
            if len(part) > 1:
                bias, sd = part["difference_pct"].mean(), part["difference_pct"].std(ddof=1)
                ax.axhline(bias, color="black", linewidth=1)
                for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
                    ax.axhline(limit, color="gray", linestyle="--", linewidth=1)
                ax.text(
                    0.02,
                    0.95,
                    f"bias {bias:+.1f}%, LoA ±{1.96 * sd:.1f}%",
                    transform=ax.transAxes,
                    fontsize=7,
                    va="top",
                )
            ax.set_title(f"{labels[int(sweep_id)]}, test {domain}", fontsize=8)
            if row == len(domains) - 1:
                ax.set_xlabel("mean of the two volumes")
        axes[row, 0].set_ylabel("difference, % of reference")
    stamp(fig, "Bland-Altman: predicted vs reference volume per patient", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig
