"""Spreadsheets as datasets ship them: empty or unreadable files are one-line data errors naming the file."""

from __future__ import annotations

import pytest

from harmonia.errors import DataError
from harmonia.sheets import read_table


@pytest.mark.parametrize("options", [{"sep": None, "engine": "python"}, {}])
@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_an_empty_csv_is_a_data_error_naming_the_file(tmp_path, options, content):
    path = tmp_path / "info.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: .*(empty|unreadable information sheet)") as caught:
        read_table(path, "information sheet", **options)
    assert "\n" not in str(caught.value)


def test_a_corrupt_excel_file_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "clinical.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataError, match=rf"^{path}: unreadable clinical sheet"):
        read_table(path, "clinical sheet")


def test_a_csv_with_a_header_and_no_rows_reads_as_an_empty_table(tmp_path):
    path = tmp_path / "marks.csv"
    path.write_text("patient_id,case_csPCa\n")
    table = read_table(path, "marksheet")
    assert list(table.columns) == ["patient_id", "case_csPCa"] and table.empty
