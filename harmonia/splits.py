"""Patient-level train/validation/test splits per scanner domain (seed 001, Fig. 1): 2/3, 1/6, 1/6.

Patients, never images, are assigned to splits, so no patient is in two splits. Where the cohort
gives a stratum (the label), each split keeps the domain's label mix as closely as counts allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmonia.errors import DataError
from harmonia.seeding import derive_seed

FRACTIONS = (2 / 3, 1 / 6, 1 / 6)


@dataclass(frozen=True)
class Split:
    """The patients of one domain in each split."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_patients(index: pd.DataFrame, seed: int, domains: list[str]) -> dict[str, Split]:
    """Split each domain's patients (rows of ``index``: patient, domain, stratum) with ``seed``."""
    splits = {}
    for domain in domains:
        rows = index[index["domain"] == domain]
        patients = rows["patient"].to_numpy(dtype=object)
        if len(patients) != len(set(patients)):
            raise DataError(f"cohort index lists a patient of domain {domain} more than once")
        if len(patients) < 3:
            raise DataError(
                f"domain {domain} has {len(patients)} patient(s); the protocol needs at least 3 (train, val, test)"
            )
        strata = rows["stratum"].to_numpy(dtype=object) if "stratum" in rows else np.full(len(rows), None)
        rng = np.random.default_rng(derive_seed(seed, domain))
        splits[domain] = _split_one(patients, strata, rng)
    return splits


def _split_one(patients: np.ndarray, strata: np.ndarray, rng: np.random.Generator) -> Split:
    n = len(patients)
    n_val = max(1, round(n * FRACTIONS[1]))
    n_test = max(1, round(n * FRACTIONS[2]))
    keys = np.array(["" if s is None or (isinstance(s, float) and np.isnan(s)) else str(s) for s in strata])
    groups = [np.flatnonzero(keys == k) for k in sorted(set(keys))]
    sizes = np.array([len(g) for g in groups])
    val_counts = _apportion(n_val, sizes)
    test_counts = _apportion(n_test, sizes - val_counts)
    train, val, test = [], [], []
    for group, nv, nt in zip(groups, val_counts, test_counts):
        order = group[rng.permutation(len(group))]
        val += list(order[:nv])
        test += list(order[nv : nv + nt])
        train += list(order[nv + nt :])
    return Split(*(tuple(patients[sorted(part)]) for part in (train, val, test)))


def _apportion(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``total`` across groups proportionally to ``sizes`` (largest remainder), never above a size."""
    if sizes.sum() == 0:
        return np.zeros_like(sizes)
    exact = total * sizes / sizes.sum()
    counts = np.minimum(np.floor(exact).astype(int), sizes)
    for i in np.argsort(-(exact - counts), kind="stable"):
        if counts.sum() >= total:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
    return counts
