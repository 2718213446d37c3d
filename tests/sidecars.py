"""Editing a sidecar as pneumo would have written it: tests that set up a scenario by changing a value (a threshold, a
file name) re-record the sidecar's own SHA-256, so that the scenario, not the integrity check, is what they test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.models.sidecar import DIGEST_KEY, sidecar_digest


def signed(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its ``sidecar_sha256`` recomputed."""
    return {**payload, DIGEST_KEY: sidecar_digest(payload)}


def edit_sidecar(path: Path, **changes: Any) -> dict[str, Any]:
    """Change keys of the sidecar at ``path`` (a value of ``None`` deletes the key) and re-record its SHA-256."""
    payload = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    payload = signed(payload)
    path.write_text(json.dumps(payload))
    return payload
