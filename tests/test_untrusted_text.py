"""Text from a hospital's data (file and folder names, CSV values, DICOM tags) in what pneumo prints, logs and writes
as markdown: one line each, no escape sequences reaching a terminal, no table a value can reshape."""

from __future__ import annotations

import logging
import re

import pytest

from pneumo.errors import OneLineArgs
from pneumo.infer.card import md_table, md_text

HOSTILE = ["AP|0.999|0.999", "line\nbreak", "<script>alert(1)</script>", "tick`<img src=x onerror=alert(1)>`",
           "\x1b[2J\x1b[31mred", "back\\slash|"]


def _columns(line: str) -> int:
    """Cells of a markdown table row: ``|`` not escaped by a backslash (an escaped backslash does not escape)."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) - 1


def test_a_markdown_table_keeps_its_columns_and_no_markup_whatever_the_values() -> None:
    """A subgroup value `AP|0.999|0.999` moved an adapted model card's numbers under the wrong headings (n = 0.999,
    ROC-AUC = 3), a newline split its row, and `<script>` stayed raw HTML."""
    lines = md_table(["column", "value", "n"], [["view", value, 3] for value in HOSTILE])
    assert len(lines) == 2 + len(HOSTILE)  # one line per row: no value adds one
    assert {_columns(line) for line in lines} == {3}
    body = "\n".join(lines)
    assert "\x1b" not in body and "<script" not in body.replace("\\<script", "")
    assert md_text("plain view") == "plain view" and md_text(0.912) == "0.912"  # ordinary cells unchanged


def test_log_arguments_from_data_stay_one_printable_line(capsys: pytest.CaptureFixture) -> None:
    logger = logging.getLogger("pneumo.test.untrusted")
    handler = logging.StreamHandler()
    handler.addFilter(OneLineArgs())
    logger.addHandler(handler)
    try:
        logger.warning("skipped %d file(s): %s", 1, "x.jpeg\nERROR forged.jpeg (\x1b[2J)")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\n" in err and "\\x1b" in err


def test_reports_show_direction_controls_as_escapes() -> None:
    """A file named ``bidi\\u202egpj.exe.jpeg`` showed as ``bidigepj.exe.jpg`` in the errors table (the review)."""
    from pneumo.templates import escape, page, table

    name = "PNEUMONIA/bidi\u202egpj.exe.jpeg"
    assert escape(name) == "PNEUMONIA/bidi\\u202egpj.exe.jpeg"
    html = page("t", [("files", table(["path"], [[name]]))], subtitle=name, stamp=False)
    assert "\u202e" not in html and html.count("bidi\\u202egpj.exe.jpeg") >= 2
