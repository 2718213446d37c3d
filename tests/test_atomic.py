"""Atomic writes: the file appears whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo import atomic
from pneumo.errors import ConfigError, DataError
from pneumo.models import tensorfile


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


def test_a_write_replaces_a_file_or_a_link_to_one_and_refuses_devices_pipes_and_dangling_links(tmp_path: Path) -> None:
    """`predict --output /dev/stdout` (run as root) replaced the device link with a file, and a FIFO with a file its
    reader never saw: a write replaces only a regular file or a link to one (the link, never its target: a run's file
    linked to a shared one is not overwritten through it)."""
    target = atomic.write_text(tmp_path / "real.csv", "old")
    (tmp_path / "link.csv").symlink_to(target)
    atomic.write_text(tmp_path / "link.csv", "new")
    assert not (tmp_path / "link.csv").is_symlink() and (tmp_path / "link.csv").read_text() == "new"
    assert target.read_text() == "old"
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "device").symlink_to(os.devnull)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name, message in (("pipe", "not a regular file"), ("device", "not a regular file"),
                          ("dangling", "a link to nothing")):
        with pytest.raises(ConfigError, match=message):
            atomic.write_text(tmp_path / name, "x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode) and (tmp_path / "device").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "device", "link.csv", "pipe", "real.csv"]


def test_writing_hands_a_path_to_third_party_writers_and_sets_the_mode(tmp_path: Path) -> None:
    with atomic.writing(tmp_path / "m.csv", mode=0o644) as tmp:
        tmp.write_text("a,b\n1,2\n")
    assert (tmp_path / "m.csv").read_text() == "a,b\n1,2\n"
    assert stat.S_IMODE((tmp_path / "m.csv").stat().st_mode) == 0o644


def test_a_file_name_that_is_not_utf8_neither_fails_a_write_nor_a_digest(tmp_path: Path) -> None:
    """Linux hands such a name (a Windows zip unpacked as is: ``t\\xe9te.png``) to Python with a surrogate; writing
    it into a CSV or report, or hashing the list it is in, failed after the whole adaptation had run."""
    import os

    from pneumo.data.splits import paths_digest

    name = os.fsdecode(b"t\xe9te.png")
    atomic.write_text(tmp_path / "images.csv", f"path\n{name}\n")
    assert (tmp_path / "images.csv").read_bytes() == b"path\nt\\udce9te.png\n"
    assert paths_digest([name]) != paths_digest([os.fsdecode(b"t\xe8te.png")]) != paths_digest(["tete.png"])


def test_write_csv_keeps_hospital_text_from_running_as_a_formula_and_a_bare_cr_from_splitting_a_row(
        tmp_path: Path) -> None:
    """crossfit_predictions.csv, the site check's images.csv and `data scan --output` wrote file names and patient IDs
    as they came (``=HYPERLINK(...)`` ran in a spreadsheet), and a file name with a bare carriage return split its row
    in two (pandas' ``\\n`` line ends do not quote ``\\r``)."""
    import pandas as pd

    frame = pd.DataFrame({"path": ["=HYPERLINK(\"http://x\",\"y\").jpeg", "cr\rreturn.jpeg", "plain.jpeg", "@x", "-3"],
                          "patient_id": ["+SUM(1)", "p1", "p2", "p3", "p4"], "p": [0.5, -0.25, 1.0, 0.0, 0.1],
                          "n": [1, -2, 3, 4, 5]})
    path = atomic.write_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "patient_id": str})
    assert len(back) == len(frame)  # one row per input row, the \r inside its quoted cell
    assert back["path"].tolist() == ["'=HYPERLINK(\"http://x\",\"y\").jpeg", "cr\rreturn.jpeg", "plain.jpeg", "'@x",
                                     "'-3"]
    assert back["patient_id"][0] == "'+SUM(1)"
    assert back["p"].tolist() == [0.5, -0.25, 1.0, 0.0, 0.1] and back["n"].tolist() == [1, -2, 3, 4, 5]  # numbers
    assert [atomic.from_csv_cell(v) for v in back["path"]] == frame["path"].tolist()  # pneumo reads its own back


def test_every_csv_pneumo_writes_goes_through_write_csv() -> None:
    """The formula guard and the quoting live in one writer; a ``to_csv`` elsewhere would skip them."""
    import ast

    package = Path(__file__).resolve().parents[1] / "src" / "pneumo"
    direct = []
    for module in package.rglob("*.py"):
        if module.name == "atomic.py":
            continue
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("to_csv", "DictWriter", "writer") and (
                    node.attr == "to_csv" or getattr(node.value, "id", None) == "csv"):
                direct.append(f"{module.relative_to(package)}:{node.lineno} {node.attr}")
    # the two streaming writers: `pneumo predict`'s rows (each cell through atomic.csv_cell) and the training log
    # metrics.csv (numbers only, appended an epoch at a time)
    assert sorted(d.split(":")[0] for d in direct) == ["commands/predict.py", "train/loop.py"], direct


def test_a_safetensors_file_is_the_same_bytes_whatever_order_its_metadata_came_in(tmp_path: Path) -> None:
    """safetensors writes metadata keys in a per-process order: two identical trainings recorded two weights SHA-256s
    (and model ids) about half the time (the reproducibility review: `{'arch','format'}` vs `{'format','arch'}`)."""
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import load, save

    data = save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)},
                metadata={"format": "pneumo/1", "arch": "efficientnet_lite0", "method": "x"})
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    flipped_header = {**header, "__metadata__": dict(reversed(list(header["__metadata__"].items())))}
    text = json.dumps(flipped_header, separators=(",", ":")).encode()
    flipped = data[:8] + text + b" " * (size - len(text)) + data[8 + size:]
    assert flipped != data or list(header["__metadata__"]) == sorted(header["__metadata__"])
    digests = {tensorfile.write_safetensors(tmp_path / f"{i}.safetensors", d) for i, d in enumerate((data, flipped))}
    assert len(digests) == 1 and (tmp_path / "0.safetensors").read_bytes() == (tmp_path / "1.safetensors").read_bytes()
    loaded = load((tmp_path / "0.safetensors").read_bytes())
    assert np.array_equal(loaded["w"], np.arange(6, dtype=np.float32).reshape(2, 3)) and loaded["b"].dtype == np.float16
    # and across processes, where the order really changes
    script = ("import sys, numpy as np; from safetensors.numpy import save; from pneumo.models import tensorfile; "
              "print(tensorfile.write_safetensors(sys.argv[1], save({'w': np.zeros(2, np.float32)}, "
              "metadata={'format': 'f', 'arch': 'a', 'method': 'm'})))")
    runs = {subprocess.run([sys.executable, "-c", script, str(tmp_path / f"p{i}.safetensors")], check=True,
                           capture_output=True, text=True).stdout.strip() for i in range(4)}
    assert len(runs) == 1


def _dead_pid() -> int:
    """The process id of a process that has exited (a killed writer's)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_write_removes_what_a_killed_writer_left_and_keeps_a_live_writers_file(tmp_path: Path) -> None:
    target = tmp_path / "images.npy"
    dead = tmp_path / f".images.npy.{_dead_pid()}.0badf00d.tmp"
    live = tmp_path / f".images.npy.{os.getppid()}.0badf00d.tmp"  # a running process (pytest's parent) still writes
    other = tmp_path / f".other.npy.{_dead_pid()}.0badf00d.tmp"  # another file's leftover is not this write's business
    for path in (dead, live, other):
        path.write_bytes(b"half an array")
    atomic.write_bytes(target, b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


OWNED = frozenset({"metrics.json", "report.html"})


def test_a_folder_appears_whole_and_a_failed_one_leaves_the_earlier_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    with atomic.folder(out, owned=OWNED, replace=True) as work:
        assert not out.exists() and work.parent == tmp_path and work.name.startswith(".")
        atomic.write_text(work / "metrics.json", "first")
        atomic.write_text(work / "report.html", "first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]
    with pytest.raises(RuntimeError), atomic.folder(out, owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "second")
        raise RuntimeError("killed half-way")  # a crash, an out-of-memory, Ctrl-C
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "first", "report.html": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]
    with atomic.folder(out, owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "third")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "third"}  # no file of the first left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]


def test_a_folder_filled_by_another_process_meanwhile_is_kept_and_this_result_refused(tmp_path: Path) -> None:
    out = tmp_path / "new-model"
    with pytest.raises(DataError, match="filled while this ran"), \
            atomic.folder(out, owned=frozenset(), replace=False) as work:
        atomic.write_text(work / "model.json", "mine")
        atomic.write_text(out / "model.json", "theirs")  # the other `pneumo operating-point --out` finished first
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model.json": "theirs"}
    run = tmp_path / "run"  # replace=True never replaces a folder holding a name the command does not write
    with pytest.raises(DataError), atomic.folder(run, owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "mine")
        atomic.write_text(run / "metrics.json", "the run's evaluation")
        atomic.write_text(run / "model.json", "the run's model")  # (review: --force deleted a trained run)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new-model", "run"]


def test_a_folder_removes_what_killed_writers_left_and_keeps_a_live_writers_folder(tmp_path: Path) -> None:
    dead = tmp_path / f".out.partial-{_dead_pid()}"
    live = tmp_path / f".out.partial-{os.getppid()}"
    away = tmp_path / ".out.partial-1-otherhost"  # another container's: kept while it may still be writing
    for path in (dead, live, away):
        path.mkdir()
        (path / "metrics.json").write_text("half")
    with atomic.folder(tmp_path / "out", owned=OWNED, replace=False) as work:
        atomic.write_text(work / "metrics.json", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, away.name])
    os.utime(away, (0, 0))  # untouched for an hour: gone at the next call
    with atomic.folder(tmp_path / "out", owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


def test_an_output_a_kill_left_moved_aside_is_put_back(tmp_path: Path) -> None:
    """Two renames where the system cannot exchange: a kill between them left only hidden copies, then deleted."""
    aside = tmp_path / f".site.old-{_dead_pid()}"
    aside.mkdir()
    (aside / "metrics.json").write_text("earlier")
    (tmp_path / f".site.partial-{_dead_pid()}").mkdir()
    with pytest.raises(RuntimeError), atomic.folder(tmp_path / "site", owned=OWNED, replace=True):
        raise RuntimeError("interrupted again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert (tmp_path / "site" / "metrics.json").read_text() == "earlier"


def test_a_folder_through_a_link_or_named_dot_or_long_is_written_where_it_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with atomic.folder(tmp_path / "link", owned=OWNED, replace=False) as work:
        atomic.write_text(work / "metrics.json", "via the link")
    assert (real / "metrics.json").read_text() == "via the link" and (tmp_path / "link").is_symlink()
    monkeypatch.chdir(real)
    with atomic.folder(".", owned=OWNED, replace=True) as work:  # ValueError: PosixPath('.') has an empty name
        atomic.write_text(work / "metrics.json", "here")
    assert (real / "metrics.json").read_text() == "here"
    long = tmp_path / ("x" * 250)  # a hidden sibling named after it would pass 255 bytes
    with atomic.folder(long, owned=OWNED, replace=False) as work:
        atomic.write_text(work / "metrics.json", "long")
    atomic.write_text(long / "report.html", "long too")
    assert sorted(p.name for p in long.iterdir()) == ["metrics.json", "report.html"]


def test_the_next_write_keeps_a_fresh_temp_file_of_another_machine(tmp_path: Path) -> None:
    fresh, old = (tmp_path / f".m.json.{pid}-otherhost.0badf00d.tmp" for pid in (1, 2))
    for path in (fresh, old):
        path.write_text("a writer in another container")
    os.utime(old, (0, 0))
    atomic.write_text(tmp_path / "m.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.json", fresh.name])


def test_check_folder_lets_through_new_empty_and_earlier_outputs_only(tmp_path: Path) -> None:
    kw = {"owned": frozenset({"site.json", "figures"}), "what": "site check", "hint": "give --force"}
    assert atomic.check_folder(tmp_path / "new", replace=False, **kw) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    atomic.check_folder(tmp_path / "empty", replace=False, **kw)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        atomic.check_folder(tmp_path / "file", replace=True, **kw)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "site.json").write_text("{}")
    (tmp_path / "home" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"holds other files \(notes.txt: not an earlier site check\)"):
        atomic.check_folder(tmp_path / "home", replace=True, **kw)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "site.json").write_text("{}")
    (tmp_path / "earlier" / "figures").mkdir()
    atomic.check_folder(tmp_path / "earlier", replace=True, **kw)
    with pytest.raises(ConfigError, match="earlier site check: give --force"):
        atomic.check_folder(tmp_path / "earlier", replace=False, **kw)


def test_a_running_writers_temp_file_in_another_pid_namespace_is_not_deleted(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two containers with one host name sharing a cache volume: the second's cleanup judged the first's half-written
    temp file by a process id of its own namespace and deleted it (a cache review)."""
    target = tmp_path / "images-224.npy"
    pid = 2 ** 22 + 7  # no such process here (above the kernel's pid_max)
    ours = atomic._owner().partition("-")[2]
    other = tmp_path / f".{target.name}.{pid}-{ours}0.tmp"  # same host, another namespace
    dead = tmp_path / f".{target.name}.{pid}-{ours}.tmp"  # this host and namespace, its writer gone
    if not atomic._pid_namespace():
        pytest.skip("this system does not name its PID namespaces")
    older = tmp_path / f".{target.name}.{pid}-{ours.removesuffix(atomic._pid_namespace())}.tmp"  # an older pneumo's
    for path in (other, dead, older):
        path.write_bytes(b"half")
    assert sorted(atomic.remove_stale_temps(target)) == sorted([dead, older]) and other.exists()
    old = os.stat(other).st_mtime - atomic.STALE_AFTER_S - 60  # untouched for over an hour: left over, removed
    os.utime(other, (old, old))
    assert atomic.remove_stale_temps(target) == [other]


def _mount_point(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    """``out`` as a mount point: `atomic.folder` cannot swap it whole and writes inside it."""
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out.resolve() or real(p))


def test_a_mount_point_is_written_through_a_hidden_folder_inside_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit of machine failures: in a mount point (or a folder whose parent one cannot write) the files went
    straight into ``out``: a full disk left a model's sidecar and weights without its checks, which predict then
    used; ``--force`` deleted the earlier evaluation before the new one failed; two evaluations mixed their files."""
    out = tmp_path / "volume"
    _mount_point(monkeypatch, out)
    with atomic.folder(out, owned=OWNED, replace=True) as work:
        assert work.parent == out and work.name.startswith(atomic.PARTIAL)
        atomic.write_text(work / "metrics.json", "first")
        atomic.write_text(work / "report.html", "first")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "first", "report.html": "first"}
    with pytest.raises(RuntimeError), atomic.folder(out, owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "second")
        raise RuntimeError("disk full half-way")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "first", "report.html": "first"}
    moved = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: moved.append(Path(b).name) or real_rename(a, b))
    with atomic.folder(out, owned=OWNED | {"model.json", "model.safetensors"}, replace=True) as work:
        for name in ("model.json", "model.safetensors", "metrics.json"):
            atomic.write_text(work / name, "third")
    assert {p.name for p in out.iterdir()} == {"model.json", "model.safetensors", "metrics.json"}
    assert moved[-1] == "model.json"  # the sidecar last: a kill during the moves leaves nothing that loads


def test_a_mount_point_filled_meanwhile_keeps_the_other_result_and_a_killed_writers_folder_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "volume"
    _mount_point(monkeypatch, out)
    with pytest.raises(DataError, match="filled while this ran"), \
            atomic.folder(out, owned=OWNED, replace=False) as work:
        atomic.write_text(work / "metrics.json", "mine")
        atomic.write_text(out / "metrics.json", "theirs")  # the other `pneumo evaluate --out` finished first
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "theirs"}
    dead = out / f"{atomic.PARTIAL}{_dead_pid()}"
    dead.mkdir()
    (dead / "model.json").write_text("half")
    assert atomic.check_folder(out, owned=OWNED, replace=True, what="evaluation", hint="") == out  # not "other files"
    with atomic.folder(out, owned=OWNED, replace=True) as work:
        atomic.write_text(work / "metrics.json", "again")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "again"}


def test_a_failed_write_names_the_file_or_folder_and_says_the_earlier_one_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit of machine failures: a full disk said "[Errno 28] No space left on device" (no path), a read-only
    folder named the hidden temp file."""
    import errno

    target = atomic.write_text(tmp_path / "out.csv", "earlier")
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device; the earlier file is unchanged"), \
            atomic.writing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match=r"cannot write .*new\.csv: Read-only file system$"), \
            atomic.writing(tmp_path / "new.csv") as tmp:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))
    unreadable = OSError(errno.EIO, "Input/output error", str(tmp_path / "an-input.jpeg"))  # a read, not the write
    with pytest.raises(OSError) as raised, atomic.writing(target):
        raise unreadable
    assert raised.value is unreadable and target.read_text() == "earlier"
    out = tmp_path / "evaluation"
    for mount in (False, True):
        if mount:
            _mount_point(monkeypatch, out)
        with pytest.raises(OSError, match=f"cannot write {out}: No space left on device"), \
                atomic.folder(out, owned=OWNED, replace=True) as work:
            atomic.write_text(work / "metrics.json", "x")
            with atomic.writing(work / "report.html"):
                raise OSError(errno.ENOSPC, "No space left on device")


def test_json_is_written_strict_with_nan_and_infinity_as_null(tmp_path: Path) -> None:
    """A reporting audit: a run's metrics.json held NaN tokens (fields added after its own conversion)."""
    import json

    import numpy as np

    path = atomic.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(0.5), np.inf], "c": (1, 2)})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [0.5, None],
                                                                                      "c": [1, 2]}
