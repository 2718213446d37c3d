"""Leaderboard across runs: each run's ``metrics.json`` -> ``leaderboard.md`` and ``leaderboard.html``.

Evaluations of different data are never ranked in one table: the rows are grouped by what they were evaluated on
(the official test split of a dataset, or an external folder / CSV, with its image count), one table each, and the
"evaluated on" column says it. Within a table, rows are sorted by validation ROC-AUC (never by a test number: ranking
on test would be selecting on it). Each row is named by its run folder, linked to that run's report; runs without a
readable metrics.json are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from markupsafe import Markup

from pneumo import atomic
from pneumo.data.rundir import RunDir
from pneumo.errors import DataError, PneumoError
from pneumo.evaluate.intervals import CI_METHOD
from pneumo.infer.card import Markdown, md_table, md_text
from pneumo.models.sidecar import read_meta
from pneumo.policy import STANDARD_POLICIES
from pneumo.templates import Section, fmt_ci, fmt_number, fmt_threshold, page, table

log = logging.getLogger(__name__)
COLUMNS = ("run", "evaluated on", "name", "arch", "mode", "task", "seed", "val AUC", "test accuracy", "test sensitivity",
           "test specificity", "test ROC-AUC", "3-class accuracy / macro-F1", "CIs", "ECE before → after", "threshold (policy)", "shortcut check",
           "wall time")
OPERATING_POLICIES = STANDARD_POLICIES  # the columns: the operating points every evaluation reports
TEST_COLUMNS = (("test accuracy", "accuracy"), ("test sensitivity", "sensitivity"),
                ("test specificity", "specificity"), ("test ROC-AUC", "roc_auc"))


ALL_COLUMNS = (*COLUMNS, *(f"{p}: acc / sens / spec" for p in OPERATING_POLICIES))


def load_run_metrics(run_dir: str | os.PathLike) -> dict:
    """A run's ``metrics.json`` (the ``evaluate_predictions`` dict plus ``name``, ``config``, ``wall_time_s``)."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise DataError(f"{path} not found: evaluate the run first (pneumo evaluate --model {run_dir})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc.__class__.__name__}): re-run pneumo evaluate") from exc
    if not isinstance(data, dict) or not isinstance(data.get("test"), dict):
        raise DataError(f"{path} has no 'test' results: re-run pneumo evaluate {run_dir}")
    _check_same_weights(run_dir, data)
    data.setdefault("name", Path(run_dir).name)
    data["_run_dir"] = str(run_dir)
    return data


def _check_same_weights(run_dir: str | os.PathLike, data: dict) -> None:
    """Refuse a run whose metrics.json measured other weights than its model.json holds (retrained or replaced since
    its evaluation: a review ranked a new model by the old one's numbers)."""
    sidecar = RunDir(run_dir).model
    measured = data.get("weights_sha256") or (data.get("model_identity") or {}).get("weights_sha256")
    measured = [measured] if isinstance(measured, str) else measured  # a run's evaluation; `pneumo evaluate --data`'s
    if not sidecar.is_file() or not isinstance(measured, list):  # an ensemble's folder; an older metrics.json
        return
    try:
        current = read_meta(sidecar).sha256
    except PneumoError as exc:
        raise DataError(f"{sidecar}: {exc}") from None
    if current not in measured:
        raise DataError(f"{RunDir(run_dir).metrics} measured other weights than {sidecar.name} holds (retrained or "
                        f"replaced since): re-run pneumo evaluate --model {run_dir}")


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


def evaluated_on(data: dict) -> str:
    """What an evaluation's test numbers were measured on: ``official test split of chest_xray (624 images)`` or
    ``external data /path/to/folder (60 images)``; rows with different texts are never ranked together."""
    ext = data.get("external") if isinstance(data.get("external"), dict) else None
    n = _get(data, "test", "n")
    if ext and not ext.get("official_test_split"):
        # normalised: an older pneumo recorded ``/x/run/../data`` as typed (a review: one folder, three tables)
        where = f"external data {os.path.normpath(ext['data']) if isinstance(ext.get('data'), str) else '?'}"
    else:
        root = Path(ext["data"]).parent if ext and ext.get("data") else _get(data, "config", "data", "root")
        name = (Path(str(root)).stem if str(root).endswith(".zip") else Path(str(root)).name) if root else ""
        limit = None if ext else _get(data, "config", "data", "limit_per_class")  # a run's subset of it
        where = f"{'a subset of the ' if limit else ''}official test split of {name or 'the dataset'}"
    return f"{where} ({n if isinstance(n, int) else '?'} images)"


def leaderboard_row(data: dict) -> dict[str, str]:
    """One run's formatted cells, keyed by :data:`COLUMNS`."""
    test = data.get("test", {})
    metrics, cis = test.get("metrics", {}), test.get("ci", {})
    operating = data.get("operating_points") or {}
    row = {
        "run": str(data.get("_run_dir", data.get("name", "?"))),
        "evaluated on": evaluated_on(data),
        "name": str(data.get("name", "?")),
        "arch": str(data.get("arch") or _get(data, "config", "model", "name") or "n/a"),
        "mode": str(data.get("mode") or _get(data, "config", "model", "mode") or "n/a"),
        "task": str(data.get("task") or _get(data, "config", "data", "task") or "n/a"),
        "seed": fmt_number(_get(data, "config", "train", "seed")),
        "val AUC": fmt_number(_get(data, "val", "roc_auc")),
        "ECE before → after": f"{fmt_number(test.get('ece_before'))} → {fmt_number(test.get('ece_after'))}",
        "threshold (policy)": f"{fmt_threshold(data.get('threshold'))} ({data.get('threshold_policy') or 'n/a'})",
        "shortcut check": shortcut_cell(Path(str(data.get("_run_dir", ""))) / "figures" / "shortcut_stats.json"),
        "wall time": _duration(data.get("wall_time_s")),
        # intervals of an older method (percentile bootstrap, images) beside today's are not comparable
        "CIs": "current" if _get(data, "bootstrap", "method") == CI_METHOD else "older method: evaluate again",
        # what the val AUC was measured on: the split's settings and the fold's size (not a column; `val_note`)
        "_val fold": "/".join(str(_get(data, *key)) for key in (("config", "data", "split_seed"), ("config", "data",
                                                                "val_fraction"), ("config", "data", "limit_per_class"),
                                                                ("val", "n"))),
    }
    for column, key in TEST_COLUMNS:  # pneumonia vs normal, for every task
        row[column] = fmt_ci(metrics.get(key), cis.get(key))
    mc = test.get("multiclass") or {}
    row["3-class accuracy / macro-F1"] = (f"{fmt_ci(mc.get('accuracy'), _get(mc, 'ci', 'accuracy'))} / "
                                          f"{fmt_ci(mc.get('macro_f1'), _get(mc, 'ci', 'macro_f1'))}" if mc else "n/a")
    for policy in OPERATING_POLICIES:
        p = operating.get(policy)
        row[f"{policy}: acc / sens / spec"] = (" / ".join(fmt_number(p.get(k)) for k in ("accuracy", "sensitivity",
                                                                                         "specificity"))
                                               if p else "n/a")
    return {**{c: row[c] for c in ALL_COLUMNS}, "_val fold": row["_val fold"]}


def shortcut_cell(path: Path) -> str:
    """The run report's shortcut verdict (`pneumo.explain.shortcut`): flagged / clean, with the peak-on-marker rate."""
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))["verdict"]
    except (OSError, ValueError, KeyError, TypeError):
        return "n/a"
    reasons = verdict.get("reasons") if isinstance(verdict, dict) else None
    if verdict.get("flagged") and isinstance(reasons, list) and reasons:  # what flagged it, as the run's report says
        return "FLAGGED (" + "; ".join(map(str, reasons)) + ")"  # (an audit: two figures below the flags were shown)
    detail = f"peaks on markers {fmt_number(verdict.get('peak_on_markers_vs_chance'))}x chance" + (
        f", outside lungs {fmt_number(verdict.get('outside_lungs_vs_area'))}x"
        if verdict.get("outside_lungs_judged", True) else "")
    return f"{'FLAGGED' if verdict.get('flagged') else 'clean'} ({detail})"


def _val_auc_key(data: dict) -> float:
    value = _get(data, "val", "roc_auc")
    return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _report_link(row: dict[str, str], out_dir: Path | None) -> str | None:
    report = Path(row["run"]) / "report.html"
    if not report.is_file():
        return None
    return Path(os.path.relpath(report.resolve(), out_dir.resolve())).as_posix() if out_dir else report.as_posix()


def group_rows(rows: Sequence[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The rows by their "evaluated on" data, in order of first appearance (the official test split first)."""
    groups: dict[str, list[dict[str, str]]] = {}
    for row in sorted(rows, key=lambda r: not r["evaluated on"].startswith("official")):  # stable: keeps the ranking
        groups.setdefault(row["evaluated on"], []).append(row)
    return groups


def val_note(members: Sequence[dict[str, str]]) -> str:
    """A warning where a table's runs measured their val AUC on other val folds (another split seed, val fraction,
    subset or size: a training audit found them ranked together without a word), else ""."""
    if len({row.get("_val fold") for row in members}) <= 1:
        return ""
    return ("These runs' val folds differ (split seed, val fraction, data subset or size): their val ROC-AUCs are not "
            "measured on the same images, so the order is a rough one.")


def leaderboard_markdown(rows: Sequence[dict[str, str]], out_dir: Path | None = None) -> str:
    """One GitHub-flavoured markdown table per evaluated-on data; the run column links to each report (relative to
    ``out_dir``)."""
    def run_cell(row: dict[str, str]) -> object:
        link = _report_link(row, out_dir)
        return Markdown(f"[{md_text(row['run'])}]({link.replace(' ', '%20')})") if link else row["run"]

    blocks = []
    for where, members in group_rows(rows).items():
        table_lines = md_table(ALL_COLUMNS, [[run_cell(r) if c == "run" else r[c] for c in ALL_COLUMNS]
                                             for r in members])
        note = val_note(members)
        blocks.append("\n".join([f"### Evaluated on {md_text(where)}", "", *([md_text(note), ""] if note else []),
                                 *table_lines]) + "\n")
    return "\n".join(blocks)


def leaderboard_html(rows: Sequence[dict[str, str]], out_dir: Path | None = None) -> str:
    """A standalone HTML page with the same tables, one section per evaluated-on data (house CSS, no scripts); run
    folders link to their reports."""
    def run_cell(row: dict[str, str]) -> object:
        link = _report_link(row, out_dir)
        return Markup('<a href="{}">{}</a>').format(link, row["run"]) if link else row["run"]

    note = ("<p>One table per data set evaluated on: evaluations of different data are never ranked together. Sorted "
            "by validation ROC-AUC. Test numbers at each model's stored operating point (threshold and temperature "
            "chosen on val; accuracy, sensitivity, specificity and ROC-AUC are pneumonia vs normal for 3-class runs "
            "too, whose 3-class figures have a column of their own), 95 % CIs (exact for proportions, BCa bootstrap for ROC-AUC, whole patients where known; "
            "the CIs column names rows evaluated with an older method); the last columns give "
            "the standard policies side by side (each chosen on val; <code>triage</code>: val sensitivity &ge; "
            "0.90).</p>")
    sections = []
    for k, (where, members) in enumerate(group_rows(rows).items()):
        cells = ([run_cell(r) if c == "run" else r[c] for c in ALL_COLUMNS] for r in members)
        differ = val_note(members)
        body = ((note if k == 0 else "") + (Markup("<p><strong>{}</strong></p>").format(differ) if differ else "")
                + table(ALL_COLUMNS, cells, table_id=f"leaderboard-{k}"))
        sections.append(Section(f"leaderboard-{k}", f"Evaluated on {where}", body))
    return page("pneumo leaderboard", sections, subtitle=f"{len(rows)} run(s) on {len(sections)} data set(s)")


def load_runs(run_dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Every readable run's metrics (:func:`load_run_metrics`); the others are skipped with a warning."""
    results, skipped = [], []
    for d in run_dirs:
        try:
            results.append(load_run_metrics(d))
        except DataError as exc:
            skipped.append(exc)
    if not results:
        raise skipped[0] if skipped else DataError("no runs given: pass one or more run folders")
    for exc in skipped:
        log.warning("skipped: %s", exc)
    return results


def write_leaderboard(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Read every run's ``metrics.json`` and write ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``.

    Returns:
        The two paths (markdown, HTML).
    """
    results = load_runs(run_dirs)
    rows = [leaderboard_row(r) for r in sorted(results, key=_val_auc_key)]
    out_dir = Path(out_dir)
    md = atomic.write_text(out_dir / "leaderboard.md", leaderboard_markdown(rows, out_dir))
    page_path = atomic.write_text(out_dir / "leaderboard.html", leaderboard_html(rows, out_dir))
    return md, page_path
