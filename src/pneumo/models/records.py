"""The files beside a model's weights that its sidecar records by SHA-256 and every reader checks: the ONNX export
(its ``.onnx.sha256`` record, written by `pneumo export`) and an adapted model's list of the images it was adapted on
(``crossfit_predictions.csv``). The weights themselves: `pneumo.models.sidecar.verify_weights`."""

from __future__ import annotations

import json
from pathlib import Path

from pneumo import atomic
from pneumo.data.rundir import CROSSFIT, CROSSFIT_KEY
from pneumo.errors import IntegrityError
from pneumo.models.sidecar import CheckpointMeta


def check_crossfit(sidecar: Path, meta: CheckpointMeta) -> Path | None:
    """An adapted model's list of the images it was adapted on (``crossfit_predictions.csv``), checked against the
    SHA-256 its sidecar records; None for a model that records none. Every reader and every copy checks it: a lost or
    changed list would make the images it was adapted on look external (a review found copies passing one on).

    Raises:
        IntegrityError: the recorded list is missing or changed.
    """
    recorded = meta.extra.get(CROSSFIT_KEY)
    listed = Path(sidecar).parent / CROSSFIT
    if not recorded:
        return None
    if not listed.is_file():
        raise IntegrityError(f"{listed} that the model's sidecar records is missing: it cannot tell which images the "
                             "model was adapted on; copy the whole model folder again")
    if atomic.sha256_file(listed) != recorded:
        raise IntegrityError(f"{listed} does not match the SHA-256 its sidecar records: it was changed after pneumo "
                             "wrote it; copy the whole model folder again")
    return listed


def verify_onnx(onnx_path: Path, weights_sha256: str | None = None) -> bool:
    """Check an ONNX file against the record written at export: True if it matches, False if there is no record.

    Raises:
        IntegrityError: the file's SHA-256 differs from the record, or it was exported from other weights.
    """
    record = onnx_record_path(onnx_path)
    if not record.is_file():
        return False
    try:
        recorded = json.loads(record.read_text())
        expected, source = recorded["onnx_sha256"], recorded["weights_sha256"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"the checksum record {record} is unreadable: delete {onnx_path.name} and "
                             f"{record.name} to export again") from None
    if weights_sha256 is not None and source != weights_sha256:
        raise IntegrityError(f"{onnx_path} was exported from other weights than {weights_sha256[:12]}...: delete it "
                             "to export again")
    if atomic.sha256_file(onnx_path) != expected:
        raise IntegrityError(f"checksum mismatch for {onnx_path}: the ONNX export is corrupted or was replaced; "
                             f"delete it (and {record.name}) to export again")
    return True


def onnx_record_path(onnx_path: Path) -> Path:
    """Where `pneumo export` records an ONNX file's SHA-256 and the weights it was made from."""
    return onnx_path.with_name(onnx_path.name + ".sha256")
