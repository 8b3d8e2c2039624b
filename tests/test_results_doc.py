"""Rows of measured runs land at the end of the Results table, whatever the page holds."""

from __future__ import annotations

from pathlib import Path

from simapp.lab.results_doc import append_row, command_args, row

HEADER = "| a | b |\n|---|---|"


def test_a_new_page_gets_the_heading_the_table_and_the_row(tmp_path: Path) -> None:
    page = tmp_path / "doc.md"
    append_row(page, row([1, 2.0]), HEADER, "# Title")
    assert page.read_text() == "# Title\n\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


def test_rows_go_after_the_last_row_before_the_next_section(tmp_path: Path) -> None:
    page = tmp_path / "doc.md"
    page.write_text("# T\n\n## Results\n\nintro\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## After\n")
    append_row(page, row(["x|y", "3\n4"]), HEADER, "# T")
    lines = page.read_text().splitlines()
    assert lines[lines.index("| 1 | 2 |") + 1] == "| x\\|y | 3 4 |"
    assert lines[-1] == "## After"


def test_a_heading_without_a_table_gets_one(tmp_path: Path) -> None:
    page = tmp_path / "doc.md"
    page.write_text("# T\n\n## Results\n\n## Next\n")
    append_row(page, row([5, 6]), HEADER, "# T")
    text = page.read_text()
    assert text.index("| 5 | 6 |") < text.index("## Next")
    assert "| a | b |" in text


def test_the_command_column_leaves_the_note_out_with_its_value() -> None:
    argv = ["--count", "10", "--note", "run 1 of 5", "--workers", "3", "--note=x"]
    assert command_args(argv) == ["--count", "10", "--workers", "3"]
