"""safetensors files pneumo writes (weights, OOD statistics, orientation heads): canonical, so the same tensors and
metadata give the same SHA-256 in every process, and a digest of the tensor bytes alone."""

from __future__ import annotations

import hashlib
import json
import os

from pneumo import atomic


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


def tensors_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a safetensors file's tensor bytes (its header and metadata left out): one digest for the same
    weights whichever order an older pneumo wrote their metadata in."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + size)
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_safetensors(path: str | os.PathLike, data: bytes) -> str:
    """Write a safetensors file (`canonical_safetensors`) atomically, mode 0644 (checkpoints are shared and
    packaged); returns its SHA-256, the same for the same tensors and metadata in every process."""
    data = canonical_safetensors(data)
    atomic.write_bytes(path, data, mode=0o644)
    return hashlib.sha256(data).hexdigest()
