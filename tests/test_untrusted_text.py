"""Text from a hospital's data (file and folder names, CSV values, DICOM tags) in what pneumo prints, logs and writes
as markdown: one line each, no escape sequences reaching a terminal, no table a value can reshape."""

from __future__ import annotations

import logging
import re

import pytest
from sidecars import signed

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


def test_no_value_or_name_becomes_a_live_link_or_remote_image_in_a_card(tiny_model, tmp_path) -> None:
    """A CSV named ``![t](https:evil.example?x).csv``, subgroup values ``[click](javascript:...)`` and an ``--out``
    folder named ``<svg onload=...>`` reached the card (served by /api/v1/model) as live markup (a review)."""
    import shutil

    from pneumo.cli import main
    from pneumo.infer.card import model_card_text

    for value in ("![pix](https:evil.example#x)", "[click](javascript:alert(1))", "[a][b]"):
        assert not re.search(r"(?<!\\)\]\(|(?<!\\)\]\[", md_text(value)), md_text(value)
    assert md_text("0.917 [0.890, 0.938]") == "0.917 [0.890, 0.938]"  # our own intervals read as written
    out = tmp_path / "<svg onload=alert(1)>[x](javascript:alert(2))"
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), tmp_path / f"model{suffix}")
    out.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tmp_path / f"model{suffix}", out / f"model{suffix}")
    card = model_card_text(out)
    found = re.search(r"(?<!\\)<svg", card)
    assert not found, card[found.start() - 300:found.end() + 50] if found else ""
    assert "](javascript" not in card and "\\<svg onload=alert(1)\\>" in card
    assert main(["model-card", "--model", str(out)]) == 0


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


def test_sigterm_unwinds_a_command_like_ctrl_c_with_one_line_and_exit_143(tmp_path) -> None:
    """SIGTERM killed `evaluate`, `predict`, `adapt` with exit 143 and no message, skipping every cleanup (temp files
    and half-written folders were left; the concurrency review)."""
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time; from pneumo import cli\n"
              "def slow(args):\n    print('started', flush=True); time.sleep(60)\n"
              "import pneumo.commands.model_card as m; m.run = slow\n"
              "sys.exit(cli.main(['model-card']))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and err.strip() == "pneumo model-card: terminated (SIGTERM)"


def test_an_os_error_is_one_line_not_a_traceback(capsys, monkeypatch) -> None:
    """A read-only or full output disk, or a PNEUMO_CACHE that is a file, gave a traceback from every command that
    writes (the concurrency review): the CLI says the system's reason in one line, exit 2."""
    import pneumo.commands.model_card as command
    from pneumo.cli import main

    def read_only(args):
        raise OSError(30, "Read-only file system", "/mnt/ro/out/metrics.json")

    monkeypatch.setattr(command, "run", read_only)
    assert main(["model-card"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pneumo model-card: error: [Errno 30] Read-only file system: '/mnt/ro/out/metrics.json'"


def test_a_model_without_an_operating_point_warns_and_timestamps_have_one_format(tiny_model, tmp_path, caplog) -> None:
    """A training still running or killed left a model.json (threshold 0.5, no policy) that predict used silently (the
    concurrency review); a sidecar's `created` was +00:00 where every other output writes Z."""
    import json
    import logging
    import re
    import shutil

    from pneumo.infer.predictor import Predictor

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", json.loads(tiny_model.read_text())["created"])
    with caplog.at_level(logging.WARNING, logger="pneumo.infer.predictor"):
        Predictor(tiny_model)
    assert not [r for r in caplog.records if "operating point" in r.getMessage()]  # an evaluated model: no warning
    unfinished = tmp_path / "run"
    shutil.copytree(tiny_model.parent, unfinished)
    sidecar = unfinished / tiny_model.name
    meta = json.loads(sidecar.read_text())
    meta["threshold_policy"] = None
    sidecar.write_text(json.dumps(signed(meta)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumo.infer.predictor"):
        Predictor(sidecar)
    assert len(caplog.records) == 1 and "no operating point chosen on validation" in caplog.records[0].getMessage()
