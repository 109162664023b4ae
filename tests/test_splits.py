"""Patient-level splits: no patient in two splits, 2/3-1/6-1/6 sizes, stratification, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harmonia.errors import DataError
from harmonia.splits import split_patients


def index(n_per_domain=30, strata=("NOR", "DCM", "HCM")):
    rows = []
    for domain in ("Siemens", "Philips"):
        for i in range(n_per_domain):
            rows.append({"patient": f"{domain[0]}{i}", "domain": domain, "stratum": strata[i % len(strata)]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n", [3, 7, 12, 30, 61])
def test_every_patient_in_exactly_one_split(n):
    idx = index(n)
    for seed in range(5):
        for domain, split in split_patients(idx, seed, ["Siemens", "Philips"]).items():
            parts = [set(split.train), set(split.val), set(split.test)]
            assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
            assert set().union(*parts) == set(idx[idx.domain == domain].patient)
            assert len(split.val) >= 1 and len(split.test) >= 1 and len(split.train) >= 1


def test_sizes_are_two_thirds_one_sixth_one_sixth():
    split = split_patients(index(30), 0, ["Siemens"])["Siemens"]
    assert (len(split.train), len(split.val), len(split.test)) == (20, 5, 5)


def test_splits_are_stratified():
    idx = index(60)
    split = split_patients(idx, 3, ["Siemens"])["Siemens"]
    stratum = dict(zip(idx.patient, idx.stratum))
    for part, size in ((split.val, 10), (split.test, 10)):
        counts = pd.Series([stratum[p] for p in part]).value_counts()
        assert len(part) == size
        assert len(counts) == 3 and counts.max() - counts.min() <= 1  # each label as evenly as 10 allows


def test_deterministic_per_seed_and_different_across_seeds():
    idx = index(30)
    a = split_patients(idx, 1, ["Siemens", "Philips"])
    assert a == split_patients(idx, 1, ["Siemens", "Philips"])
    assert a["Siemens"] != split_patients(idx, 2, ["Siemens", "Philips"])["Siemens"]


def test_too_few_patients_is_a_data_error():
    with pytest.raises(DataError, match="domain Siemens has 2 patient"):
        split_patients(index(2), 0, ["Siemens"])


def test_missing_strata_are_allowed():
    idx = index(12).assign(stratum=None)
    split = split_patients(idx, 0, ["Philips"])["Philips"]
    assert (len(split.train), len(split.val), len(split.test)) == (8, 2, 2)
    assert np.all([p.startswith("P") for p in split.train])


def paired_index(exams=12, domains=("FBP", "IR", "M80")):
    """The same exams in every domain, as a paired-reconstruction cohort indexes them."""
    return pd.DataFrame([{"patient": f"e{i}", "domain": d, "stratum": None} for d in domains for i in range(exams)])


@pytest.mark.parametrize("seed", range(4))
def test_paired_patients_sit_on_the_same_side_in_every_domain(seed):
    splits = split_patients(paired_index(), seed, ["FBP", "IR", "M80"])
    assert splits["FBP"] == splits["IR"] == splits["M80"]
    assert (len(splits["FBP"].train), len(splits["FBP"].val), len(splits["FBP"].test)) == (8, 2, 2)


def test_paired_domains_missing_some_patients_keep_their_own_share():
    idx = paired_index(exams=18)
    idx = idx[~((idx.domain == "IR") & idx.patient.isin(["e0", "e1", "e2"]))]
    splits = split_patients(idx, 0, ["FBP", "IR", "M80"])
    for part in ("train", "val", "test"):
        fbp, ir = set(getattr(splits["FBP"], part)), set(getattr(splits["IR"], part))
        assert ir == fbp - {"e0", "e1", "e2"}
    with pytest.raises(DataError, match="domain IR has 2 of the cohort's 18 patients"):
        split_patients(idx[(idx.domain != "IR") | idx.patient.isin(["e3", "e4"])], 0, ["FBP", "IR", "M80"])
