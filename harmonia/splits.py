"""Patient-level train/validation/test splits per scanner domain (Guo et al., Fig. 1): 2/3, 1/6, 1/6.

Patients, never images, are assigned to splits, so no patient is in two splits. Where the cohort
gives a stratum (the label), each split keeps the domain's label mix as closely as counts allow.
In a paired cohort (the same patients imaged in several domains, e.g. one exam reconstructed
several ways) the patients are split once, so a patient is on the same side in every domain.
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
    """Split each domain's patients (rows of ``index``: patient, domain, stratum) with ``seed``.

    Domains with disjoint patients are split independently; when any patient is in more than one
    domain, the union of patients is split once and each domain keeps its own patients' share.
    """
    rows_of = {domain: index[index["domain"] == domain] for domain in domains}
    for domain, rows in rows_of.items():
        if rows["patient"].duplicated().any():
            raise DataError(f"cohort index lists a patient of domain {domain} more than once")
    used = pd.concat(rows_of.values()) if rows_of else index.iloc[:0]
    if used["patient"].duplicated().any():
        return _paired_splits(used, seed, rows_of)
    splits = {}
    for domain, rows in rows_of.items():
        _check_size(len(rows), domain)
        rng = np.random.default_rng(derive_seed(seed, domain))
        splits[domain] = _split_one(rows["patient"].to_numpy(dtype=object), _strata(rows), rng)
    return splits


def _paired_splits(used: pd.DataFrame, seed: int, rows_of: dict[str, pd.DataFrame]) -> dict[str, Split]:
    """One split of all patients, restricted to each domain's patients, so pairs never straddle splits."""
    first = used.drop_duplicates("patient")
    _check_size(len(first), "(all domains together)")
    rng = np.random.default_rng(derive_seed(seed, "paired"))
    whole = _split_one(first["patient"].to_numpy(dtype=object), _strata(first), rng)
    splits = {}
    for domain, rows in rows_of.items():
        own = set(rows["patient"])
        split = Split(*(tuple(p for p in part if p in own) for part in (whole.train, whole.val, whole.test)))
        if not (split.train and split.val and split.test):
            raise DataError(
                f"domain {domain} has {len(own)} of the cohort's {len(first)} patients; too few to be in train, "
                f"validation and test of the shared split"
            )
        splits[domain] = split
    return splits


def _check_size(count: int, domain: str) -> None:
    if count < 3:
        raise DataError(f"domain {domain} has {count} patient(s); the protocol needs at least 3 (train, val, test)")


def _strata(rows: pd.DataFrame) -> np.ndarray:
    return rows["stratum"].to_numpy(dtype=object) if "stratum" in rows else np.full(len(rows), None)


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
