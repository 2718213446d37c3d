"""Ensemble presets: train (or resume) each member run on one split, evaluate each, then their mean probability.
(In the evaluation layer: it trains, then evaluates.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pneumo.config import RunConfig, member_configs


def train_ensemble(cfg: RunConfig, overrides: list[str], *, resume: bool = False, force: bool = False,
                   evaluate: bool = True, on_member: Callable[[Path, dict | None], None] | None = None
                   ) -> tuple[list[Path], dict | None]:
    """Train every member of the ensemble preset ``cfg`` (the same ``overrides`` apply to each, except the name),
    evaluate each, then evaluate the ensemble into ``<out_dir>/<name>``.

    Returns:
        ``(member run folders, the ensemble's metrics or None when evaluate=False)``.
    """
    from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run
    from pneumo.train.run import train

    members = member_configs(cfg, [o for o in overrides if not o.startswith("name=")])
    run_dirs = []
    for member in members:
        run_dir = train(member, resume=resume, force=force)
        run_dirs.append(run_dir)
        result = evaluate_run(run_dir) if evaluate else None
        if on_member:
            on_member(run_dir, result)
    if not evaluate:
        return run_dirs, None
    return run_dirs, evaluate_ensemble(run_dirs, Path(cfg.out_dir) / cfg.name)
