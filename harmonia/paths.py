"""Where harmonia keeps caches and looks for real datasets, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HARMONIA_CACHE"
DATA_ENV = "HARMONIA_DATA"


def cache_dir() -> Path:
    """``$HARMONIA_CACHE``, else ``$XDG_CACHE_HOME/harmonia``, else ``~/.cache/harmonia``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harmonia"


def data_home() -> Path | None:
    """``$HARMONIA_DATA`` (one sub-folder per cohort), or None when it is not set."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None
