"""Atomic file writes (temp file in the same folder + ``os.replace``): a reader never sees a half-written file.

Every file pneumo writes goes through here: `write_bytes` / `write_text` / `write_json` for content in memory,
`writing` for a writer that wants a path of its own (a memmap, an ONNX exporter). Also the helpers every file
writer and checker shares: `to_jsonable` (strict JSON: nan/inf -> null), `sha256_file`, and `write_csv` /
`csv_cell` for every CSV (what a hospital opens in a spreadsheet).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from pneumo.errors import ConfigError, DataError


def temp_path(path: str | os.PathLike) -> Path:
    """A unique hidden temp name next to ``path`` (same folder, so the final rename is atomic), naming the process
    and machine that writes it (`is_stale`)."""
    path = Path(path)
    return path.with_name(f".{short_name(path.name)}.{_owner()}.{uuid.uuid4().hex[:8]}.tmp")


def short_name(name: str) -> str:
    """``name``, or a digest of it when a hidden ``.<name>.<owner>...`` sibling would pass the 255-byte name limit."""
    return name if len(name.encode("utf-8", "surrogateescape")) <= 160 else hashlib.sha1(
        name.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _pid_namespace() -> str:
    """This process's PID namespace (``n`` + its inode; "" where the system has none): two containers with one host
    name share a cache volume, not their process ids."""
    try:
        return f"-n{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _owner() -> str:
    """``<pid>-<host>[-n<pid namespace>]``: who writes a temp file or folder (a container or another host shares the
    folder, not the process ids: a cache review saw a container of the same host name delete a running build's file
    as a dead process's)."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c == "-")[:24] or "host"
    return f"{os.getpid()}-{host}{_pid_namespace()}"


STALE_AFTER_S = 3600  # another machine's leftover is removed only when untouched this long


def is_stale(owner: str, path: Path) -> bool:
    """Whether a leftover of writer ``owner`` (`_owner`, or a bare pid of older versions) may be deleted: a process of
    this machine and PID namespace that no longer runs, or another's (machine, container) untouched for
    `STALE_AFTER_S`. An older pneumo's ``<pid>-<host>`` of this host name is judged as this namespace's (as it was)."""
    pid, _, host = owner.partition("-")
    if not pid.isdigit() or owner == _owner():
        return False
    ours = _owner().partition("-")[2]
    if host and host not in (ours, ours.removesuffix(_pid_namespace())):
        try:
            return time.time() - path.lstat().st_mtime > STALE_AFTER_S
        except OSError:
            return False
    return not _running(int(pid))


class WriteFailed(OSError):
    """A write that failed, said of the file or folder the user named (a full disk's error named no file, a read-only
    folder's the hidden temp file: an audit of machine failures)."""

    def __init__(self, errno_: int | None, reason: str, target: Path, kept: str = "") -> None:
        super().__init__(errno_, f"cannot write {target}: {reason}" + (f"; {kept}" if kept else ""))
        self.reason = reason


def raise_said_of(exc: OSError, target: Path, inside: Path, kept: str = "") -> NoReturn:
    """Raise ``exc`` as a `WriteFailed` of ``target`` when it is a system error of ``target`` or of a path under
    ``inside`` (the temp file or folder standing for it), or of no path (a full disk); any other error (a file being
    read, a decoder's OSError without an errno) as it is."""
    name = None if exc.filename is None else Path(os.fsdecode(exc.filename))
    if exc.errno is None or name is not None and name != target and not name.is_relative_to(inside):
        raise exc
    raise WriteFailed(exc.errno, getattr(exc, "reason", None) or exc.strerror or str(exc), target, kept) from exc


@contextmanager
def writing(path: str | os.PathLike, *, mode: int | None = None, private: bool = False) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file (its folder is created).
        mode: file permissions to set before the rename (default: as created).
        private: create the temp file empty with mode 0600 before yielding (open it with ``"w"``, which keeps the
            mode): a process killed mid-write (``kill -9``: nothing runs) leaves a file only its owner can read.
            The next write of ``path`` deletes such leftovers (`remove_stale_temps`).
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # a killed writer's leftover (an image cache's half-written array) goes now
    tmp = temp_path(path)
    existed = os.path.lexists(path)
    try:
        if private:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        raise_said_of(exc, path, tmp, "the earlier file is unchanged" if existed else "")
    finally:
        with contextlib.suppress(OSError):  # on a read-only folder unlink fails too: the first error is the one to tell
            tmp.unlink(missing_ok=True)


def check_replaceable(path: Path) -> None:
    """Whether a write may replace ``path``: new, a regular file, or a link to one (the link is replaced, its target
    left alone: a run's file linked to a shared or packaged one must not be overwritten through it).

    Raises:
        ConfigError: ``path`` is a device, a pipe, a socket or a folder (``--output /dev/stdout`` replaced the
            device link with a file, a FIFO's reader got nothing), or a link to nothing.
    """
    if not os.path.lexists(path):
        return
    try:
        kind = os.stat(path).st_mode
    except OSError:
        raise ConfigError(f"{path} is a link to nothing: give a file path") from None
    if not stat.S_ISREG(kind):
        raise ConfigError(f"{path} is not a regular file (a device, a pipe or a folder): give a file path"
                          + ("; for standard output leave the option out or give -" if not stat.S_ISDIR(kind) else ""))


def remove_stale_temps(path: str | os.PathLike, *, keep_as: Path | None = None) -> list[Path]:
    """Delete the temp files `writing` left next to ``path`` in processes that no longer run (killed mid-write);
    a running writer's is kept (`is_stale`). ``keep_as``: move them there instead (the last one stays). Returns the
    removed paths."""
    path = Path(path)
    tag = short_name(path.name)
    removed = []
    for tmp in sorted(path.parent.glob(f".{glob.escape(tag)}.*.tmp"), key=lambda p: p.lstat().st_mtime):
        owner = tmp.name[len(tag) + 2:].split(".", 1)[0]
        if is_stale(owner, tmp):
            if keep_as is not None:
                os.replace(tmp, keep_as)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_folder(out: str | os.PathLike, *, owned: frozenset[str], replace: bool, what: str, hint: str) -> Path:
    """Where `folder` may write ``out``: new, empty, or (``replace``) an earlier output of the same command: a folder
    holding only names that command writes (``owned``). A folder holding anything else (a run's model, a user's files)
    is never replaced (``--out runs/other --force`` deletes nothing).

    Raises:
        ConfigError: ``out`` is a file; holds an earlier ``what`` and ``replace`` is False (``hint`` says what to
            give); or holds files that are not one.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file: give a folder for the {what}")
    if not outputs(out):
        return out
    other = sorted(p.name for p in outputs(out) if p.name not in owned)
    if other:
        raise ConfigError(f"{out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}: not "
                          f"an earlier {what}): give a new or empty folder")
    if not replace:
        raise ConfigError(f"{out} already holds an earlier {what}: {hint}")
    return out


@contextmanager
def folder(out: str | os.PathLike, *, owned: frozenset[str], replace: bool) -> Iterator[Path]:
    """Yield a folder to write ``out``'s files into; when the block ends without error they are in ``out``.

    Normally a hidden sibling, which then takes ``out``'s place in one atomic exchange (``renameat2``; two renames
    where the system lacks it, and an ``out`` a kill left moved aside is put back by the next call): a reader, or a
    process killed half-way, never sees a folder mixing two runs' files. Where ``out`` is a mount point, or its
    parent is not writable, a hidden folder inside ``out`` (`_in_place`).

    An ``out`` that holds files when the block ends (another process finished into it first, or an earlier output)
    is replaced only if ``replace`` and it holds nothing but ``owned`` names; otherwise this result is discarded with
    an error. Hidden siblings left by killed processes are removed first (`is_stale`).

    Raises:
        DataError: ``out`` was filled by someone else while the block ran.
    """
    out = Path(out).resolve()  # a symlink's target; "." by its name
    parent, tag = out.parent, short_name(out.name)
    parent.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(out) or not os.access(parent, os.W_OK | os.X_OK):
        with _in_place(out, owned, replace) as work:
            yield work
        return
    for stale in parent.glob(f".{glob.escape(tag)}.*-*"):
        kind, _, owner = stale.name[len(tag) + 2:].partition("-")
        if kind in ("partial", "old") and stale.is_dir() and not stale.is_symlink() and is_stale(owner, stale):
            if kind == "old" and not out.exists():  # killed between the two renames: the earlier output goes back
                os.rename(stale, out)
            else:
                shutil.rmtree(stale, ignore_errors=True)
    work, old = (parent / f".{tag}.{kind}-{_owner()}" for kind in ("partial", "old"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        _publish(work, out, old, owned, replace)
    except OSError as exc:
        raise_said_of(exc, out, work, "the earlier output is unchanged" if out.exists() else "")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _publish(work: Path, out: Path, old: Path, owned: frozenset[str], replace: bool) -> None:
    """``work`` becomes ``out`` (see `folder`)."""
    try:
        os.rename(work, out)  # atomic; takes an absent or empty ``out``, fails on one that holds files
        return
    except OSError:
        pass
    if not (replace and out.is_dir() and not out.is_symlink() and all(p.name in owned for p in out.iterdir())):
        raise DataError(f"{out} was filled while this ran (another command writing to the same folder?); "
                        "this result is discarded")
    if not _exchange(work, out):
        os.rename(out, old)
        os.rename(work, out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE
    except (AttributeError, OSError):
        return False
    return done


PARTIAL = ".partial-"  # `_in_place`'s folder inside ``out``: ``.partial-<owner>``


@contextmanager
def _in_place(out: Path, owned: frozenset[str], replace: bool) -> Iterator[Path]:
    """`folder` where ``out`` cannot be swapped whole (a mount point; a folder in a parent one cannot write): the block
    writes into ``out/.partial-<owner>``; when it ends without error, the earlier output's names are deleted and the
    new ones moved up, sidecars (``.json``) last. Not atomic (a kill during the moves leaves some of each), but an
    error or a kill while writing leaves the earlier output as it was and nothing that loads as a model (an audit of
    machine failures: it wrote into ``out`` itself, so a full disk left a half-adapted model that predict used, two
    evaluations mixed their files, and ``--force`` deleted the earlier one before a full disk stopped the new one)."""
    out.mkdir(exist_ok=True)
    for stale in out.glob(f"{PARTIAL}*"):
        if stale.is_dir() and not stale.is_symlink() and is_stale(stale.name[len(PARTIAL):], stale):
            shutil.rmtree(stale, ignore_errors=True)
    work = out / f"{PARTIAL}{_owner()}"
    shutil.rmtree(work, ignore_errors=True)
    moving = False
    try:
        work.mkdir()
        yield work
        present = outputs(out)
        if present and not (replace and all(p.name in owned for p in present)):
            raise DataError(f"{out} was filled while this ran (another command writing to the same folder?); "
                            "this result is discarded")
        moving = True
        for old in present:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        for new in sorted(work.iterdir(), key=lambda p: p.suffix == ".json"):
            os.rename(new, out / new.name)
    except OSError as exc:
        kept = ("it may hold part of the earlier output and part of this one: write it again" if moving
                else "the earlier output is unchanged" if outputs(out) else "")
        raise_said_of(exc, out, work, kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def outputs(out: Path) -> list[Path]:
    """What ``out`` holds, less the folders `_in_place` writes in."""
    return [p for p in out.iterdir() if not p.name.startswith(PARTIAL)] if out.is_dir() else []


def umask_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file here (0666 less the umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or not a process id at all)
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically, creating the parent folder; ``mode`` sets the file permissions."""
    with writing(path, mode=mode) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically. A file name that is not UTF-8 (Linux hands it over with
    surrogates) is written with backslash escapes, as `pneumo predict` prints it, instead of failing the write."""
    return write_bytes(path, text.encode("utf-8", "backslashreplace"))


def write_json(path: str | os.PathLike, payload: Any, *, default: Any = float) -> Path:
    """Write ``payload`` as indented, strict JSON to ``path`` atomically (`to_jsonable`: NaN and infinities are null, a
    run's metrics.json held 56 NaN tokens that strict readers refuse: a reporting audit; ``default`` converts what
    JSON cannot hold)."""
    return write_text(path, json.dumps(to_jsonable(payload), indent=2, default=default, allow_nan=False))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a file named ``=HYPERLINK(...).jpeg``, a patient ID
    ``@x``) gets a leading ``'``, so it shows as text; numbers stay numbers; None is an empty cell."""
    if value is None:
        return ""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def from_csv_cell(value: str) -> str:
    """The text `csv_cell` was given (for pneumo reading back a CSV it wrote: the paths an adapted model lists)."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def write_csv(path: str | os.PathLike, frame: Any) -> Path:
    """A DataFrame as ``path`` (no index), the one way pneumo writes a CSV: text cells through `csv_cell`, and RFC
    4180 line ends (``\r\n``, as `pneumo predict` writes), so that a value holding a bare ``\r`` (a file name) is
    quoted instead of splitting its row."""
    text_columns = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
    guarded = frame.assign(**{c: frame[c].map(csv_cell) for c in text_columns}) if text_columns else frame
    return write_text(path, guarded.to_csv(index=False, lineterminator="\r\n"))


def to_jsonable(obj: object) -> object:
    """numpy scalars/arrays -> Python, tuples -> lists, nan/inf -> None (strict JSON: browsers reject NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, streamed (weights, ONNX exports, downloads)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
