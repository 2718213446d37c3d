"""Atomic writes: the file appears whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pneumo import atomic


def test_writes_create_the_folder_and_leave_only_the_file(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_a_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = atomic.write_text(tmp_path / "t.txt", "old")
    with pytest.raises(RuntimeError), atomic.writing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_writing_hands_a_path_to_third_party_writers_and_sets_the_mode(tmp_path: Path) -> None:
    with atomic.writing(tmp_path / "m.csv", mode=0o644) as tmp:
        tmp.write_text("a,b\n1,2\n")
    assert (tmp_path / "m.csv").read_text() == "a,b\n1,2\n"
    assert stat.S_IMODE((tmp_path / "m.csv").stat().st_mode) == 0o644


def test_a_file_name_that_is_not_utf8_neither_fails_a_write_nor_a_digest(tmp_path: Path) -> None:
    """Linux hands such a name (a Windows zip unpacked as is: ``t\\xe9te.png``) to Python with a surrogate; writing
    it into a CSV or report, or hashing the list it is in, failed after the whole adaptation had run."""
    import os

    from pneumo.evaluate.operating import paths_digest

    name = os.fsdecode(b"t\xe9te.png")
    atomic.write_text(tmp_path / "images.csv", f"path\n{name}\n")
    assert (tmp_path / "images.csv").read_bytes() == b"path\nt\\udce9te.png\n"
    assert paths_digest([name]) != paths_digest([os.fsdecode(b"t\xe8te.png")]) != paths_digest(["tete.png"])
