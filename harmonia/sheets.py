"""Reading the spreadsheets datasets ship (clinical data, labels, vendors) as CSV or Excel, with one-line errors."""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from harmonia.errors import DataError, one_line


def column_key(text: object) -> str:
    """A header cell reduced to lower-case letters and digits, so spelling variants compare equal
    ('Staging(Tumor Size)# [T]' -> 'stagingtumorsizet')."""
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def find_file(folders: Iterable[Path], names: Sequence[str]) -> Path | None:
    """The first of ``names`` found in the first of ``folders`` holding any of them, or None."""
    return next((folder / name for folder in folders for name in names if (folder / name).is_file()), None)


def read_table(
    path: Path, what: str, *, header: int | None = 0, dtype: object = None, keep_default_na: bool = True, **csv_options
) -> pd.DataFrame:
    """A CSV (``csv_options`` go to :func:`pandas.read_csv`) or Excel sheet, column names stripped.

    DataError naming the file when it cannot be read or its Excel reader is not installed.
    """
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path, header=header, dtype=dtype, keep_default_na=keep_default_na, **csv_options)
        else:
            table = pd.read_excel(path, header=header, dtype=dtype, keep_default_na=keep_default_na)
    except ImportError as exc:
        raise DataError(
            f"{path}: reading {path.suffix} needs openpyxl/xlrd ({exc}); install it or save the sheet as CSV"
        ) from exc
    # csv.Error: an empty CSV whose delimiter is sniffed; BadZipFile: an .xlsx that is not a workbook
    except (OSError, ValueError, KeyError, csv.Error, zipfile.BadZipFile, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: unreadable {what} ({one_line(exc)})") from exc
    if table.empty and len(table.columns) == 0:
        raise DataError(f"{path}: the {what} is empty")
    if header is not None:
        table.columns = [str(c).strip() for c in table.columns]
    return table


def require_columns(table: pd.DataFrame, path: Path, what: str, columns: Sequence[str | tuple[str, ...]]) -> None:
    """DataError naming the file unless ``table`` has every column (a tuple: at least one of its columns)."""
    missing = [
        " or ".join(c) if isinstance(c, tuple) else c
        for c in columns
        if not set((c,) if isinstance(c, str) else c) & set(table.columns)
    ]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {missing}; found {list(table.columns)}")


def header_row(table: pd.DataFrame, keys: set[str], rows: int = 10) -> int | None:
    """The first of the first ``rows`` rows of a header-less table with a cell whose :func:`column_key` is in
    ``keys`` (sheets may open with title, group or legend rows)."""
    return next((i for i in range(min(rows, len(table))) if keys & {column_key(v) for v in table.iloc[i]}), None)
