"""Pick a configuration by a selection rule written before the runs (PROTOCOL.md "Selecting when validation is
saturated"), from validation numbers only.

Runs are grouped into configurations: runs whose configs differ only in seeds, paths and reporting options are seeds
of one configuration. Each configuration is summarised by the mean and SD over its seeds of the rule's validation
measures. The rule is a sequence of steps; at each step the configurations still in the running are those whose
mean is within the larger of the two SDs of the best mean (a difference smaller than the seed-to-seed spread decides
nothing); the first step that leaves one configuration decides. If several remain after the last step, the rule is
undecided here: its later steps (the shortcut check on val, the cost) are the user's. A test number is never read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumo import atomic
from pneumo.config import REMOVED_DEFAULTS, REMOVED_KEYS, from_dict, to_dict
from pneumo.data.rundir import RunDir
from pneumo.errors import DataError
from pneumo.evaluate.compare import _get, load_runs
from pneumo.infer.card import md_table
from pneumo.models.tensorfile import tensors_sha256

log = logging.getLogger(__name__)

# Config fields that do not change what is trained: seeds (they make the repeats), paths, the device, checkpoint
# cadence, memory handling, and the evaluation's reporting options (the threshold policy does not change the
# probabilities).
NOT_CONFIG = ("name", "out_dir", "data.root", "data.cache_dir", "data.split_seed", "train.seed", "train.device",
              "train.checkpoint_every_steps", "train.hold_memory", "eval.threshold_policy", "eval.n_bootstrap",
              "eval.bootstrap_seed", "eval.ece_bins")


@dataclass(frozen=True)
class Step:
    """One step of a rule: a validation measure read from a run's ``metrics.json`` and its direction."""
    label: str
    path: tuple[str, ...]
    lower_is_better: bool


STEPS = {
    "val_nll": Step("val log-loss", ("val", "nll_before"), True),
    "val_auc": Step("val ROC-AUC", ("val", "roc_auc"), False),
}
DEFAULT_RULE = ("val_nll", "val_auc")


@dataclass
class Configuration:
    """The runs (seeds) of one configuration."""
    label: str
    key: str
    runs: list[dict] = field(default_factory=list)

    def values(self, step: Step) -> list[float]:
        out = []
        for run in self.runs:
            value = _get(run, *step.path)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(f"{run.get('_run_dir', run.get('name'))}: metrics.json has no {'.'.join(step.path)} "
                                "(re-run pneumo evaluate)")
            out.append(float(value))
        return out

    def mean_sd(self, step: Step) -> tuple[float, float]:
        values = self.values(step)
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def train_seconds(self) -> float:
        times = [float(t) for r in self.runs
                 if isinstance(t := (r.get("training") or {}).get("wall_time_s", r.get("wall_time_s")), (int, float))]
        return statistics.fmean(times) if times else math.inf


def config_key(data: dict) -> str:
    """Canonical JSON of a run's config without the :data:`NOT_CONFIG` fields; old configs are filled with today's
    defaults (fields added since then were off by default); a removed option set to other than its old default
    (`REMOVED_DEFAULTS`) still tells its runs apart."""
    config = data.get("config")
    if not isinstance(config, dict):
        raise DataError(f"{data.get('_run_dir', data.get('name'))}: metrics.json has no config")
    removed = {key: value for key, default in REMOVED_DEFAULTS.items()
               if (value := _get(config, *key.split("."))) is not None and value != default}
    values = _without(to_dict(from_dict(_without(config, REMOVED_KEYS))), NOT_CONFIG)
    return json.dumps({**values, "removed": removed} if removed else values, sort_keys=True)


def _without(values: dict, dotted: Sequence[str]) -> dict:
    values = json.loads(json.dumps(values))
    for name in dotted:
        *parents, last = name.split(".")
        node = values
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return values


def _label(name: str) -> str:
    return re.sub(r"-s\d+$", "", name)


def group_runs(results: Sequence[dict]) -> list[Configuration]:
    """Runs (``load_run_metrics`` dicts) grouped by :func:`config_key`, in order of first appearance."""
    groups: dict[str, Configuration] = {}
    for data in results:
        key = config_key(data)
        if key not in groups:
            groups[key] = Configuration(_label(str(data.get("name", "?"))), key)
        groups[key].runs.append(data)
    seen: dict[str, int] = {}
    for g in groups.values():  # one name, other settings (a row re-run with a changed option): label them apart
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label = f"{g.label}#{seen[g.label]}"
    return list(groups.values())


@dataclass
class Selection:
    pick: Configuration | None  # None: the rule is undecided among ``remaining``
    remaining: list[Configuration]
    log: list[str]
    excluded: list[Configuration]


def select(configs: Sequence[Configuration], rule: Sequence[str] = DEFAULT_RULE, min_seeds: int = 3) -> Selection:
    """Apply ``rule`` (keys of :data:`STEPS`) to the configurations with at least ``min_seeds`` runs."""
    if min_seeds < 1:
        raise DataError(f"min_seeds must be 1 or more, got {min_seeds}")
    unknown = [s for s in rule if s not in STEPS]
    if unknown:
        raise DataError(f"unknown rule step {unknown[0]!r}; known: {', '.join(STEPS)}")
    eligible = [c for c in configs if len(c.runs) >= min_seeds]
    excluded = [c for c in configs if len(c.runs) < min_seeds]
    log = [f"{c.label}: {len(c.runs)} seed(s) < {min_seeds}, not eligible" for c in excluded]
    if not eligible:  # listed, as the help and the README say: selection.md shows what is missing
        log.append(f"no configuration has {min_seeds} or more seeds: nothing to select (train more seeds)")
        return Selection(None, [], log, excluded)
    tasks = sorted({str(run.get("task", "binary")) for c in eligible for run in c.runs})
    if len(tasks) > 1:  # log-loss over 2 classes and over 3 are on other scales (chance 0.69 and 1.10): a training audit
        raise DataError(f"the runs hold {' and '.join(tasks)} models: their val log-loss is not on one scale; select "
                        "among the runs of one task at a time")
    remaining = list(eligible)
    for name in rule:
        if len(remaining) == 1:
            break
        step = STEPS[name]
        stats = {c.label: c.mean_sd(step) for c in remaining}
        sign = 1 if step.lower_is_better else -1
        best = min(remaining, key=lambda c: sign * stats[c.label][0])
        b_mean, b_sd = stats[best.label]
        kept = [c for c in remaining if abs(stats[c.label][0] - b_mean) <= max(b_sd, stats[c.label][1])]
        log.append(f"{step.label}: " + "; ".join(f"{c.label} {stats[c.label][0]:.4f} ± {stats[c.label][1]:.4f}"
                                                 for c in remaining)
                   + f" -> best {best.label}; within the larger SD: {', '.join(c.label for c in kept)}")
        remaining = kept
    if len(remaining) == 1:
        log.append(f"pick: {remaining[0].label}")
        return Selection(remaining[0], remaining, log, excluded)
    log.append(f"undecided among {', '.join(c.label for c in remaining)}: the rule's next step decides (e.g. the "
               "shortcut check on val, then the cheaper model)")
    return Selection(None, remaining, log, excluded)


def configurations_markdown(configs: Sequence[Configuration], rule: Sequence[str] = DEFAULT_RULE) -> str:
    """One row per configuration: seeds, the rule's measures (mean ± SD) and the mean training time."""
    head = ["configuration", "seeds", *(STEPS[s].label for s in rule), "training (mean)", "runs"]
    rows = []
    for c in configs:
        cells = [c.label, str(len(c.runs))]
        for s in rule:
            try:
                mean, sd = c.mean_sd(STEPS[s])
                cells.append(f"{mean:.4f} ± {sd:.4f}")
            except DataError:
                cells.append("n/a")
        cells.append(f"{c.train_seconds:.0f} s" if math.isfinite(c.train_seconds) else "n/a")
        cells.append(", ".join(str(r.get("name", "?")) for r in c.runs))
        rows.append(cells)
    return "\n".join(md_table(head, rows)) + "\n"


def trained_runs(results: Sequence[dict]) -> list[dict]:
    """The runs that are trainings of their own: a model derived by `pneumo operating-point` (the same weights at
    another threshold) counted as one more seed of its source's configuration, and a copy of one run's weights as
    another; an ensemble has no training config. Those are left out, with a warning each."""
    kept, weights = [], set()
    for data in results:
        run = RunDir(data["_run_dir"])
        meta = json.loads(run.model.read_text(encoding="utf-8")) if run.model.is_file() else {}
        # the tensors, not the file: an older pneumo wrote one model's metadata in a per-process order (two SHA-256s)
        content = tensors_sha256(run.weights) if run.weights.is_file() else meta.get("sha256")
        why = ("has no training config (an ensemble?)" if not data.get("config") else
               "is a new operating point of another run (pneumo operating-point): the same weights"
               if (meta.get("operating_point") or {}).get("derived_from") else
               "holds the same weights as a run before it" if content and content in weights else None)
        if why:
            log.warning("selection: %s %s: not counted as a seed", data["_run_dir"], why)
            continue
        weights.add(content)
        data["_val_fold"] = ((meta.get("operating_point") or {}).get("chosen_on") or {}).get("paths_sha256")
        kept.append(data)
    if not kept:
        raise DataError("none of the runs is a training of its own (derived operating points, copies, ensembles)")
    return kept


def _fold_warning(configs: Sequence[Configuration]) -> list[str]:
    """A line when the configurations were measured on different sets of val folds (another split seed or dataset):
    their val numbers then differ by the images as well as by the configuration."""
    folds = {c.label: frozenset(r.get("_val_fold") for r in c.runs) for c in configs}
    if len(set(folds.values())) <= 1 or any(None in f for f in folds.values()):
        return []
    line = ("warning: the configurations were measured on different val folds (other split seeds or data: "
            + "; ".join(f"{label}: {len(f)} fold(s)" for label, f in folds.items())
            + "): compare configurations run on the same splits")
    log.warning("selection: %s", line)
    return [line]


def write_selection(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                    rule: Sequence[str] = DEFAULT_RULE, min_seeds: int = 3) -> Path:
    """Group the runs into configurations, apply the validation-only ``rule`` (`pneumo.evaluate.select`) and write
    ``selection.md`` (the configurations table, each step's means and SDs, the pick or why the rule is undecided)."""
    configs = group_runs(trained_runs(load_runs(run_dirs)))
    result = select(configs, rule, min_seeds)
    text = ("# Selection (validation only)\n\nRule: " + ", then ".join(STEPS[s].label for s in rule)
            + f"; a step decides when the best mean is ahead by more than the larger SD; configurations with fewer "
            f"than {min_seeds} seeds are not eligible.\n\n" + configurations_markdown(configs, rule) + "\n"
            + "\n".join(f"- {line}" for line in [*result.log, *_fold_warning(configs)]) + "\n")
    return atomic.write_text(Path(out_dir) / "selection.md", text)
