"""Checks every cohort's tests share: load a whole cohort, damage a private copy of a twin, one-line errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from harmonia.api import Cohort, ImageSet
from harmonia.errors import DataError


def index_and_items(cohort: Cohort) -> tuple[pd.DataFrame, ImageSet]:
    """The cohort's index and the items of every patient in it."""
    index = cohort.index()
    return index, cohort.load(list(index["patient"]))


def private_copy(twin: Path, tmp_path: Path, name: str) -> Path:
    """A copy of a (module-wide) twin that one test may damage."""
    return Path(shutil.copytree(twin, tmp_path / name))


def assert_one_line_data_error(culprit: str, call: Callable[[], object]) -> str:
    """``call`` raises a DataError whose single-line message names ``culprit``; returns the message."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert culprit in message
    assert "\n" not in message
    return message
