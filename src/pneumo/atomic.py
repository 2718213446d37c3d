"""Atomic file writes (temp file in the same folder + ``os.replace``): a reader never sees a half-written file.

Every file pneumo writes goes through here: `write_bytes` / `write_text` / `write_json` for content in memory,
`writing` for a writer that wants a path of its own (a memmap, an ONNX exporter, ``DataFrame.to_csv``). Also the
two helpers every file writer and checker shares: `to_jsonable` (strict JSON: nan/inf -> null) and `sha256_file`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def temp_path(path: str | os.PathLike) -> Path:
    """A unique hidden temp name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def writing(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file (its folder is created).
        mode: file permissions to set before the rename (default: as created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically, creating the parent folder; ``mode`` sets the file permissions."""
    with writing(path, mode=mode) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, *, default: Any = float) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (``default`` converts what JSON cannot hold)."""
    return write_text(path, json.dumps(payload, indent=2, default=default))


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
