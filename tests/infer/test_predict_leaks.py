"""`pneumo predict` leaks nothing (issue 24 item 6): the results being written are readable by their owner only, a
killed run's temp file is removed by the next run, and a file name cannot forge a line on stderr."""

from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path

import pytest

from pneumo import atomic
from pneumo.cli import main
from pneumo.errors import one_line


@pytest.fixture(scope="module")
def xrays(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xrays")
    for path in sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:2]:
        shutil.copyfile(path, folder / path.name)
    return folder


def _predict(*args: str, model: Path) -> int:
    return main(["predict", *args, "--model", str(model), "--backend", "torch"])


def test_the_results_being_written_are_private_and_the_file_keeps_the_usual_mode(
        xrays: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumo.infer import batch

    real, modes = batch.predict_file_results, []

    def watching(*args, **kwargs):
        for item in real(*args, **kwargs):
            modes.extend(stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob(".predictions.csv.*.tmp"))
            yield item

    monkeypatch.setattr(batch, "predict_file_results", watching)
    old = os.umask(0o022)
    try:
        assert _predict(str(xrays), "--output", str(tmp_path / "predictions.csv"), model=tiny_model) == 0
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}  # what kill -9 would leave behind
    assert stat.S_IMODE((tmp_path / "predictions.csv").stat().st_mode) == 0o644  # as open() would have made it
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_a_killed_run_temp_file_is_removed_by_the_next_run(xrays: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    killed = tmp_path / ".predictions.csv.999999999.deadbeef.tmp"  # no such process id
    running = tmp_path / f".predictions.csv.{os.getppid()}.cafecafe.tmp"  # a process that still runs
    other = tmp_path / ".other.csv.999999999.deadbeef.tmp"
    for path in (killed, running, other):
        path.write_text("file,p_pneumonia\npatient-001.jpeg,0.9\n")
    assert _predict(str(xrays), "--output", str(out), model=tiny_model) == 0
    assert not killed.exists() and running.exists() and other.exists()
    assert len(list(csv.DictReader(out.open()))) == 2


def test_a_newline_in_a_file_name_cannot_forge_a_line_on_stderr(xrays: Path, tiny_model: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    forged = tmp_path / "x.jpeg\npneumo predict: patient-042.jpeg: ok\x1b[2K"
    forged.write_bytes(b"not an image")
    assert _predict(str(xrays), str(forged), model=tiny_model) == 1  # one input could not be read
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("pneumo predict")]
    assert len(lines) == 1, captured.err  # (the other line is the summary)
    assert all(line.startswith(("pneumo predict: ", "summary: ")) for line in captured.err.splitlines()), captured.err
    assert "x.jpeg\\npneumo predict: patient-042.jpeg: ok\\x1b[2K" in lines[0]
    assert "not an image" in lines[0] and "\x1b" not in captured.err
    assert len(list(csv.DictReader(captured.out.splitlines()))) == 3  # the CSV keeps the name, quoted


def test_an_error_quoting_a_path_stays_on_one_line(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert _predict("missing.jpeg\npneumo predict: error: forged", model=tiny_model) == 2
    assert capsys.readouterr().err == "pneumo predict: error: no such file, folder or match: missing.jpeg\\npneumo " \
                                      "predict: error: forged\n"


def test_one_line_escapes_only_what_cannot_be_printed() -> None:
    assert one_line("a\nb\r\tc\x1b[31m\u2028\udc80 é 日本") == "a\\nb\\r\\tc\\x1b[31m\\u2028\\udc80 é 日本"


def test_stale_temp_files_of_other_outputs_and_running_processes_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "a[1].csv"  # glob characters in the name are taken literally
    mine = tmp_path / f".a[1].csv.{os.getpid()}.00000000.tmp"
    dead = tmp_path / ".a[1].csv.999999999.00000000.tmp"
    similar = tmp_path / ".a1.csv.999999999.00000000.tmp"
    for path in (mine, dead, similar):
        path.write_text("x")
    assert atomic.remove_stale_temps(out) == [dead]
    assert mine.exists() and similar.exists()
