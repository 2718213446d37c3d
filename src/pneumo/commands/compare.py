"""`pneumo compare RUN [RUN ...]`: a leaderboard (markdown + HTML) from the runs' metrics.json; with ``--select``,
the runs grouped into configurations (seeds of one config) and the validation-only selection rule applied."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pneumo.errors import ConfigError

RULE, MIN_SEEDS = "val_nll,val_auc", 3  # the selection rule's steps and the seeds a configuration needs
OWN_FILES = ("leaderboard.md", "leaderboard.html", "selection.md")  # what compare writes (beside the runs by default)
log = logging.getLogger(__name__)

EXAMPLES = """
pneumo compare runs/*                       # runs without metrics.json are skipped with a warning
pneumo compare runs/default runs/lite0-probe --out reports/
pneumo compare runs/* --select              # configurations over seeds; val log-loss, then val AUC decide
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN", help="evaluated run (or evaluation) folders; rows are "
                        "named by folder and link to each report.html")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder for leaderboard.md / leaderboard.html (default: the first run's parent)")
    parser.add_argument("--select", action="store_true",
                        help="also group the runs into configurations (runs whose configs differ only in seeds) and "
                        "apply the selection rule on validation numbers only; writes selection.md")
    parser.add_argument("--rule", metavar="STEPS",
                        help=f"with --select: the rule's steps, in order (val_nll, val_auc; default: {RULE})")
    parser.add_argument("--min-seeds", type=int, metavar="N",
                        help=f"with --select: configurations with fewer seeds are listed but not eligible (default: "
                        f"{MIN_SEEDS})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.compare import write_leaderboard

    if not args.select and (args.rule is not None or args.min_seeds is not None):  # they were silently ignored
        raise ConfigError("--rule and --min-seeds apply to the selection: add --select")
    rule = [s.strip() for s in (args.rule or RULE).split(",") if s.strip()]
    min_seeds = MIN_SEEDS if args.min_seeds is None else args.min_seeds
    if args.select:  # a bad rule or seed count: one line before anything is written
        from pneumo.evaluate.select import STEPS

        unknown = [step for step in rule if step not in STEPS]
        if unknown or min_seeds < 1:
            raise ConfigError(f"--rule: unknown step {unknown[0]!r}; known: {', '.join(STEPS)}" if unknown
                              else f"--min-seeds must be at least 1, got {min_seeds}")
    # `runs/*` takes in the leaderboard an earlier compare wrote beside the runs: files are not runs (a docs audit:
    # "evaluate the run first (pneumo evaluate --model runs/leaderboard.html)")
    runs = [d for d in args.run_dirs if not Path(d).is_file()]
    for other in (d for d in args.run_dirs if Path(d).is_file() and Path(d).name not in OWN_FILES):
        log.warning("skipped: %s is a file, not a run folder", other)
    if not runs:
        raise ConfigError("no run folders given (files are not runs)")
    out = Path(args.out) if args.out else Path(runs[0]).resolve().parent
    md, page = write_leaderboard(runs, out)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"leaderboard: {md}, {page}")
    if args.select:
        from pneumo.evaluate.select import write_selection

        path = write_selection(runs, out, rule=rule, min_seeds=min_seeds)
        print(path.read_text(encoding="utf-8"), end="")
        print(f"selection: {path}")
    return 0
