"""Published results a recipe can reproduce, kept as data with their source, for the report to show beside a run's.

A recipe names one with its top-level ``reference`` key; today there is one, ``guo_table2``. These are the
authors' numbers, measured on the real public cohorts; nothing here is computed by harmonia.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GUO_CITATION = (
    "Guo, Lu, Szumel, Gui, Wang, Konz, Mazurowski: The Impact of Scanner Domain Shift on Deep Learning "
    "Performance in Medical Imaging: an Experimental Study"
)


@dataclass(frozen=True)
class PaperRow:
    """One row of a published same- vs other-domain table: mean ± sd over the paper's seeds, and its Δ as printed."""

    modality: str
    dataset: str
    train_domain: str
    same_mean: float
    same_sd: float
    other_mean: float
    other_sd: float
    delta: float


@dataclass(frozen=True)
class Reference:
    """A published same- vs other-domain table, the per-modality means its authors quote, and where each came from.

    ``cohorts`` maps a harmonia cohort name (results.csv's ``cohort``) to the paper's dataset name; a row of a
    run matches a paper row by dataset and training domain. ``missing`` names rows the paper has but this
    copy of its table lacks (left out, never filled in).
    """

    key: str
    citation: str
    metric: str
    data: str
    seeds: int
    table_source: str
    rows: tuple[PaperRow, ...]
    cohorts: dict[str, str]
    modality_means: dict[str, float]
    modality_means_source: str
    notes: tuple[str, ...] = field(default=())
    missing: tuple[str, ...] = field(default=())

    def row(self, cohort: str, train_domain: str) -> PaperRow | None:
        """The paper's row for a run's cohort and training domain, or None where the paper (as we have it) has none."""
        dataset = self.cohorts.get(cohort)
        return next((r for r in self.rows if r.dataset == dataset and r.train_domain == str(train_domain)), None)


GUO_TABLE2 = Reference(
    key="guo_table2",
    citation=GUO_CITATION,
    metric="AUC",
    data="real data (the seven public cohorts of the paper's Table 1)",
    seeds=10,
    table_source="Guo et al., Table 2 (test AUC, mean ± sd over 10 seeds; Δ = different − same manufacturer)",
    # Table 2 as printed in the full text (shared/seeds/001), in its order: modality, dataset, training manufacturer,
    # same-manufacturer AUC, different-manufacturer AUC, Δ
    rows=(
        PaperRow("CT", "Kidney", "Other", 0.819, 0.059, 0.763, 0.062, -0.056),
        PaperRow("CT", "LIDC", "GE", 0.932, 0.038, 0.900, 0.071, -0.032),
        PaperRow("CT", "LIDC", "Other", 0.943, 0.022, 0.895, 0.060, -0.048),
        PaperRow("CT", "HNSCC", "GE", 0.942, 0.010, 0.924, 0.056, -0.018),
        PaperRow("CT", "HNSCC", "Other", 0.943, 0.009, 0.928, 0.056, -0.015),
        PaperRow("CT", "Oropharyngeal", "GE", 0.749, 0.052, 0.751, 0.053, +0.002),
        PaperRow("CT", "Oropharyngeal", "Toshiba", 0.725, 0.128, 0.738, 0.121, +0.013),
        PaperRow("MRI", "Prostate", "Siemens", 0.791, 0.033, 0.505, 0.074, -0.286),
        PaperRow("MRI", "Prostate", "Other", 0.692, 0.061, 0.657, 0.089, -0.035),
        PaperRow("MRI", "Breast", "GE", 0.836, 0.085, 0.764, 0.138, -0.072),
        PaperRow("MRI", "Breast", "Siemens", 0.791, 0.138, 0.796, 0.086, +0.005),
        PaperRow("X-ray", "Chest", "3", 0.898, 0.042, 0.880, 0.030, -0.018),
        PaperRow("X-ray", "Chest", "5", 0.917, 0.071, 0.801, 0.071, -0.116),
    ),
    cohorts={
        "ct_kidney": "Kidney",
        "ct_lidc": "LIDC",
        "ct_hnscc": "HNSCC",
        "ct_oropharyngeal": "Oropharyngeal",
        "mri_prostate": "Prostate",
        "mri_breast": "Breast",
        "xray_chest": "Chest",
    },
    modality_means={"MRI": -0.097, "X-ray": -0.067, "CT": -0.026},
    modality_means_source=(
        "the authors' mean Δ per modality as quoted in words, not printed in Table 2: MRI −0.097 and X-ray −0.067 "
        "in the full text's Discussion ('The Dependence of Scanner Domain Shift on Modality'); CT −0.026 as the "
        "study's summary page quotes it, where the full text's Discussion rounds it to −0.02"
    ),
    notes=(
        "The MRI and X-ray means equal the means of the table's printed rows (−0.097 over 4 rows, −0.067 over 2).",
        "The CT mean −0.026 is the authors' over all 8 CT rows; the 7 CT rows in our copy of Table 2 average −0.022.",
    ),
    missing=("CT, Kidney, trained on Siemens: the paper has this row, our copy of Table 2 lacks it",),
)

REFERENCES = {GUO_TABLE2.key: GUO_TABLE2}


def get(key: str | None) -> Reference | None:
    """The reference a recipe's ``reference`` key names (None for none or an unknown key)."""
    return REFERENCES.get(key) if key else None
