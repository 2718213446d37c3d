"""Leaderboard across runs: each run's ``metrics.json`` -> ``leaderboard.md`` and ``leaderboard.html``.

Rows are sorted by validation ROC-AUC (never by a test number: ranking on test would be selecting on it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pneumo import atomic
from pneumo.errors import DataError
from pneumo.templates import Section, fmt_ci, fmt_number, page, table

COLUMNS = ("name", "arch", "mode", "task", "seed", "val AUC", "test accuracy", "test sensitivity",
           "test specificity", "test ROC-AUC", "ECE before → after", "threshold (policy)", "wall time")
TEST_COLUMNS = (("test accuracy", "accuracy"), ("test sensitivity", "sensitivity"),
                ("test specificity", "specificity"), ("test ROC-AUC", "roc_auc"))


def load_run_metrics(run_dir: str | os.PathLike) -> dict:
    """A run's ``metrics.json`` (the ``evaluate_predictions`` dict plus ``name``, ``config``, ``wall_time_s``)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DataError(f"{path} not found: evaluate the run first (pneumo evaluate {run_dir})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc.__class__.__name__}): re-run pneumo evaluate") from exc
    if not isinstance(data, dict) or not isinstance(data.get("test"), dict):
        raise DataError(f"{path} has no 'test' results: re-run pneumo evaluate {run_dir}")
    data.setdefault("name", Path(run_dir).name)
    return data


def _get(data: dict, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def leaderboard_row(data: dict) -> dict[str, str]:
    """One run's formatted cells, keyed by :data:`COLUMNS`."""
    test = data.get("test", {})
    metrics, cis = test.get("metrics", {}), test.get("ci", {})
    row = {
        "name": str(data.get("name", "?")),
        "arch": str(data.get("arch") or _get(data, "config", "model", "name") or "n/a"),
        "mode": str(data.get("mode") or _get(data, "config", "model", "mode") or "n/a"),
        "task": str(data.get("task") or _get(data, "config", "data", "task") or "n/a"),
        "seed": fmt_number(_get(data, "config", "train", "seed")),
        "val AUC": fmt_number(_get(data, "val", "roc_auc")),
        "ECE before → after": f"{fmt_number(test.get('ece_before'))} → {fmt_number(test.get('ece_after'))}",
        "threshold (policy)": f"{fmt_number(data.get('threshold'))} ({data.get('threshold_policy') or 'n/a'})",
        "wall time": _duration(data.get("wall_time_s")),
    }
    for column, key in TEST_COLUMNS:
        row[column] = fmt_ci(metrics.get(key), cis.get(key))
    return {c: row[c] for c in COLUMNS}


def _val_auc_key(data: dict) -> float:
    value = _get(data, "val", "roc_auc")
    return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def leaderboard_markdown(rows: Sequence[dict[str, str]]) -> str:
    """A GitHub-flavoured markdown table."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def leaderboard_html(rows: Sequence[dict[str, str]]) -> str:
    """A standalone HTML page with the same table (house CSS, no scripts)."""
    note = ("<p>Sorted by validation ROC-AUC. Test numbers: official test split, threshold and temperature chosen "
            "on val, 95 % percentile bootstrap CIs.</p>")
    body = note + table(COLUMNS, ([r[c] for c in COLUMNS] for r in rows), table_id="leaderboard")
    return page("pneumo leaderboard", [Section("leaderboard", "Runs", body)], subtitle=f"{len(rows)} run(s)")


def write_leaderboard(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Read every run's ``metrics.json`` and write ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``.

    Returns:
        The two paths (markdown, HTML).
    """
    results = [load_run_metrics(d) for d in run_dirs]
    if not results:
        raise DataError("no runs given: pass one or more run folders")
    rows = [leaderboard_row(r) for r in sorted(results, key=_val_auc_key)]
    out_dir = Path(out_dir)
    md = atomic.write_text(out_dir / "leaderboard.md", leaderboard_markdown(rows))
    page = atomic.write_text(out_dir / "leaderboard.html", leaderboard_html(rows))
    return md, page

