"""Atomic file writes (temp file in the same folder + ``os.replace``): a reader never sees a half-written file.

Every file pneumo writes goes through here: `write_bytes` / `write_text` / `write_json` for content in memory,
`writing` for a writer that wants a path of its own (a memmap, an ONNX exporter). Also the helpers every file
writer and checker shares: `to_jsonable` (strict JSON: nan/inf -> null), `sha256_file`, and `write_csv` /
`csv_cell` for every CSV (what a hospital opens in a spreadsheet).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.errors import ConfigError, DataError


def temp_path(path: str | os.PathLike) -> Path:
    """A unique hidden temp name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # a killed writer's leftover (an image cache's half-written array) goes now
    tmp = temp_path(path)
    try:
        if private:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # on a read-only folder unlink fails too: the first error is the one to tell
            tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files `writing` left next to ``path`` in processes that no longer run (killed mid-write); a
    temp file of a running process (this machine's process ids) is kept. Returns the deleted paths."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_folder(out: str | os.PathLike, *, marker: str, replace: bool, what: str, hint: str) -> Path:
    """Where `folder` may write ``out``: new, empty, or (``replace``) an earlier output of the same command, known by
    its ``marker`` file. A folder holding anything else is never replaced (``--out ~/Desktop --force`` deletes
    nothing).

    Raises:
        ConfigError: ``out`` is a file; holds an earlier ``what`` and ``replace`` is False (``hint`` says what to
            give); or holds files that are not one.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file: give a folder for the {what}")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not (out / marker).is_file():
        raise ConfigError(f"{out} holds other files (no {marker}: not an earlier {what}): give a new or empty folder")
    if not replace:
        raise ConfigError(f"{out} already holds an earlier {what}: {hint}")
    return out


@contextmanager
def folder(out: str | os.PathLike, *, marker: str, replace: bool) -> Iterator[Path]:
    """Yield a hidden sibling folder to write ``out``'s files into; when the block ends without error it becomes
    ``out`` in one rename, so a reader (or a process killed half-way) never sees a folder mixing two runs' files.

    An ``out`` that holds files when the block ends (another process finished into it first, or an earlier output)
    is swapped out and deleted only if ``replace`` and it holds ``marker`` (an earlier output of the same command);
    otherwise this result is discarded with an error. Hidden folders left by killed processes are removed first.

    Raises:
        DataError: ``out`` was filled by someone else while the block ran.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = stale.name[len(out.name) + 2:].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not _running(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    work, old = (out.with_name(f".{out.name}.{kind}-{os.getpid()}") for kind in ("partial", "old"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        try:
            os.rename(work, out)  # atomic; replaces an empty folder, fails on one that holds files
        except OSError:
            if not (replace and out.is_dir() and (out / marker).is_file()):
                raise DataError(f"{out} was filled while this ran (another command writing to the same folder?); "
                                "this result is discarded") from None
            os.rename(out, old)
            os.rename(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


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
    """Write ``payload`` as indented JSON to ``path`` atomically (``default`` converts what JSON cannot hold)."""
    return write_text(path, json.dumps(payload, indent=2, default=default))


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


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata keys in sorted order: safetensors writes them in an order that
    changes from process to process, so one training run twice gave two SHA-256s (and two model ids) for the same
    weights. The header keeps its length (the tensor offsets are unchanged); anything unexpected is left as it is."""
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        return data
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:
        return data
    return data[:8] + text + b" " * (size - len(text)) + data[8 + size:]


def write_safetensors(path: str | os.PathLike, data: bytes) -> str:
    """Write a safetensors file (`canonical_safetensors`) atomically, mode 0644 (checkpoints are shared and
    packaged); returns its SHA-256, the same for the same tensors and metadata in every process."""
    data = canonical_safetensors(data)
    write_bytes(path, data, mode=0o644)
    return hashlib.sha256(data).hexdigest()


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
