"""What `pneumo evaluate` does, as one library call: a run on the official test split, several runs as an ensemble,
or any model (run, shipped, ensemble folder, checkpoint) on a labelled folder / CSV (external validation). The
report's Grad-CAM sections come from `pneumo.explain.analysis`, passed in by the caller (explanations sit above
evaluation)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pneumo.data.rundir import RunDir
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.external import Gallery, evaluate_external
from pneumo.evaluate.intervals import check_bootstrap
from pneumo.evaluate.operating import policies_to_report
from pneumo.evaluate.runner import Analysis, evaluate_ensemble, evaluate_run


def is_run(model: str | os.PathLike | None) -> bool:
    return model not in (None, "default") and RunDir(model).is_run()


def default_external_out(model: str | None, data: str | os.PathLike) -> Path:
    """``evaluations/<model>-on-<data>``: a folder of its own, never the model's."""
    name = "default" if model in (None, "default") else Path(model).name or "model"
    where = Path(data).stem if Path(data).is_file() else Path(data).resolve().name
    return Path("evaluations") / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-on-{where}")


def official_test_folder(dataset: str | None) -> Path:
    """The official test split of the dataset as a labelled folder (for models that are not runs)."""
    from pneumo.data.manifest import resolve_root

    root = resolve_root(dataset)
    for candidate in (root / "test", *sorted(root.glob("*/test"))):
        if candidate.is_dir():
            return candidate
    raise DataError(f"no test/ folder in {root}: give the labelled images with --data FOLDER")


def evaluate(models: list[str], *, data: str | None = None, out: str | None = None, policies: tuple[str, ...] = (),
             n_bootstrap: int | None = None, dataset: str | None = None, progress: bool = False,
             sections: Analysis | None = None, gallery: Gallery | None = None,
             force: bool = False, by: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """Dispatch one evaluation; returns (metrics, the folder holding report.html). Nothing here changes a model.

    Args:
        models: model locations ([] or ["default"]: the shipped model); several runs: an ensemble (needs ``out``).
        data: a labelled folder / CSV: external validation at the model's stored operating point.
        out: output folder (an ensemble's, or the external validation's; default evaluations/<model>-on-<data>).
        policies: extra threshold policies reported side by side (youden, sensitivity:0.95, triage always are).
        n_bootstrap: bootstrap resamples (default: the run's config, else 1000).
        dataset: the training dataset if it moved (the run's val/test folds are read from it).
        progress: progress bars.
        sections: a run's report sections from explanations (``explain.analysis.analysis_sections``: shortcut
            indicator, error gallery, embeddings); None: none.
        gallery: an external validation's error gallery (``explain.analysis.error_gallery``); None: none.
        force: replace an earlier evaluation in the output folder; without it, an error. A folder holding other
            files is never replaced.
        by: columns of a ``data`` CSV whose values get subgroup rows (external validation only).

    Raises:
        ConfigError: among others, an output folder that is not empty, without ``force``.
    """
    policies_to_report(None, policies)  # fail at once on a bad policy
    models = [m for m in models if m] or ["default"]
    if n_bootstrap is not None:
        check_bootstrap(n_bootstrap, 0)
    if by and not data:
        raise ConfigError(f"--by {by[0]}: subgroups are columns of a labelled CSV: give it with --data")
    if len(models) > 1:
        if data:
            raise ConfigError("external validation of an ensemble: evaluate the runs as an ensemble first "
                              "(--model A --model B --out ENS), then --model ENS --data FOLDER")
        if not out:
            raise ConfigError("several runs are evaluated as an ensemble: give --out DIR for its report")
        return evaluate_ensemble(models, out, policy=policies[0] if policies else None, n_bootstrap=n_bootstrap,
                                 data=dataset, policies=policies, replace=force, progress=progress), Path(out)
    model = models[0]
    if data is None and is_run(model):
        if out:  # it was ignored: the run's own files were rewritten while the user looked in --out
            raise ConfigError(f"--out {out}: a run is evaluated into its own folder ({model}); leave --out out, or "
                              "give --data FOLDER|CSV to evaluate it on labelled images into --out")
        return evaluate_run(model, n_bootstrap=n_bootstrap, data=dataset, policies=policies,
                            analysis=sections, progress=progress), Path(model)
    official = data is None
    if data is None:
        data = str(official_test_folder(dataset))
    target = Path(out) if out else default_external_out(None if model == "default" else model, data)
    boot = 1000 if n_bootstrap is None else n_bootstrap
    result = evaluate_external(None if model == "default" else model, data, target, n_bootstrap=boot,
                               policies=policies, val_data=dataset, progress=progress, analysis=gallery,
                               official=official, by=by, replace=force)
    return result, target
