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


def shipped_as_run(run_dir: Path, dataset: Path, *, operating_point: bool = True, own_config: bool = False) -> Path:
    """The shipped model as a training run of ``dataset`` would leave it: its weights, checks and card in ``run_dir``,
    its sidecar (without its recorded operating point unless ``operating_point``; its config's dataset ``dataset``
    when ``own_config``, else as shipped), and config.yaml and folds.csv of its config on ``dataset``. Returns the run
    folder."""
    import dataclasses
    import shutil

    from pneumo.config import dump_yaml, from_dict, to_dict
    from pneumo.data.rundir import RunDir
    from pneumo.data.splits import folds_for
    from pneumo.models.sidecar import companion_files, read_meta, resolve_model, weights_path, write_meta

    sidecar = resolve_model(None)
    meta = read_meta(sidecar)
    run = RunDir(run_dir)
    run.path.mkdir(parents=True)
    shutil.copyfile(weights_path(sidecar, meta), run.weights)
    for name in companion_files(meta):
        shutil.copyfile(sidecar.parent / name, run.path / name)
    shutil.copyfile(sidecar.with_suffix(".md"), run.model.with_suffix(".md"))  # its recorded card
    cfg = from_dict(meta.config)
    cfg.data.root = str(dataset)
    extra = meta.extra if operating_point else {k: v for k, v in meta.extra.items() if k != "operating_point"}
    write_meta(run.model, dataclasses.replace(meta, weights_file=run.weights.name, extra=extra,
                                              config=to_dict(cfg) if own_config else meta.config))
    run.config.write_text(dump_yaml(cfg))
    folds_for(cfg).to_csv(run.folds, index=False)
    return run.path
