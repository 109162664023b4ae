"""Shared pieces of the plugin interface: item building, regex parameters, exclusions and unreadable records."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from toy_plugins import ToyCohort

from harmonia.api import CohortParams, ItemsBuilder, RegexPattern, require_known
from harmonia.errors import UnreadableFile
from harmonia.privacy import pseudonymize


def test_items_builder_joins_patients_in_order_with_a_channel_axis():
    items = ItemsBuilder((4, 5))
    assert items.image_set().images.shape == (0, 1, 4, 5)
    items.add(np.ones((2, 4, 5)), [0, 1], "p1", "GE")
    items.add([np.zeros((4, 5))], [1], "p2", "Other")
    built = items.image_set()
    assert built.images.shape == (3, 1, 4, 5) and built.targets.tolist() == [0, 1, 1]
    assert built.patients.tolist() == ["p1", "p1", "p2"] and built.domains.tolist() == ["GE", "GE", "Other"]
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        items.add(np.ones((2, 4, 5)), [0], "p3", "GE")


def test_items_builder_keeps_label_maps_for_segmentation():
    items = ItemsBuilder((3, 3), target_shape=(3, 3))
    items.add(np.ones((2, 3, 3)), np.ones((2, 3, 3)), "p", "A")
    assert items.image_set().targets.shape == (2, 3, 3)


def test_require_known_names_unknown_patients():
    require_known(["a"], {"a": 1})
    with pytest.raises(KeyError, match="'zz'"):
        require_known(["a", "zz"], {"a": 1})


def test_regex_parameters_are_checked_when_validated():
    class Params(CohortParams):
        pattern: RegexPattern = "^GTV"

    assert Params(pattern="tumou?r").pattern == "tumou?r"
    with pytest.raises(ValidationError, match="not a regular expression"):
        Params(pattern="GTV(")


def test_exclusions_are_counted_under_pseudonyms(tmp_path):
    cohort = ToyCohort(ToyCohort.Params(), tmp_path)
    cohort.exclude("RAW-1", "no contours")
    cohort.exclude("RAW-2", "no contours")
    cohort.exclude("RAW-3", "label unknown")
    assert cohort.exclusion_counts() == {"no contours": 2, "label unknown": 1}
    assert "RAW-1" not in repr(cohort.excluded) and pseudonymize("RAW-1", "toy") in cohort.excluded


def test_unreadable_files_stop_by_default_and_are_recorded_when_skipped(tmp_path):
    error = UnreadableFile(tmp_path / "RAW-9" / "scan" / "RAW-9_1.dcm", "truncated")
    with pytest.raises(UnreadableFile):
        ToyCohort(ToyCohort.Params(), tmp_path).unreadable_file(error, "RAW-9")
    cohort = ToyCohort(ToyCohort.Params(on_unreadable="skip"), tmp_path)
    cohort.unreadable_file(error, "RAW-9")
    cohort.unreadable_file(error, "RAW-9")
    [record] = cohort.unreadable
    pseudonym = pseudonymize("RAW-9", "toy")
    assert (record.patient, record.reason) == (pseudonym, "truncated")
    assert record.file == cohort.file_reference(error.path, pseudonym) and record.file.startswith(f"{pseudonym}/file-")


def test_an_unreadable_file_named_after_the_patient_is_recorded_without_its_name(tmp_path):
    cohort = ToyCohort(ToyCohort.Params(on_unreadable="skip"), tmp_path)
    folder = tmp_path / "Study_1.2.840.99" / "Series_7"
    for number in (3, 4):
        cohort.unreadable_file(UnreadableFile(folder / f"DOEJOHN_00{number}.dcm", "truncated"), "P-17")
    first, second = cohort.unreadable
    assert first.file != second.file, "each file keeps its own reference"
    for secret in ("DOEJOHN", "P-17", "1.2.840.99", "Series_7", ".dcm"):
        assert secret not in repr(cohort.unreadable)
    again = ToyCohort(ToyCohort.Params(on_unreadable="skip"), tmp_path)
    assert again.file_reference(folder / "DOEJOHN_003.dcm", first.patient) == first.file, "stable across runs"
