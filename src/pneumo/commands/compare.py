"""`pneumo compare RUN [RUN ...]`: a leaderboard (markdown + HTML) from the runs' metrics.json; with ``--select``,
the runs grouped into configurations (seeds of one config) and the validation-only selection rule applied."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.errors import ConfigError

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
    parser.add_argument("--rule", default="val_nll,val_auc", metavar="STEPS",
                        help="the rule's steps, in order (val_nll, val_auc); with --select (default: %(default)s)")
    parser.add_argument("--min-seeds", type=int, default=3, metavar="N",
                        help="configurations with fewer seeds are listed but not eligible (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.compare import write_leaderboard

    rule = [s.strip() for s in args.rule.split(",") if s.strip()]
    if args.select:  # a bad rule or seed count: one line before anything is written
        from pneumo.evaluate.select import STEPS

        unknown = [step for step in rule if step not in STEPS]
        if unknown or args.min_seeds < 1:
            raise ConfigError(f"--rule: unknown step {unknown[0]!r}; known: {', '.join(STEPS)}" if unknown
                              else f"--min-seeds must be at least 1, got {args.min_seeds}")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]).resolve().parent
    md, page = write_leaderboard(args.run_dirs, out)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"leaderboard: {md}, {page}")
    if args.select:
        from pneumo.evaluate.select import write_selection

        path = write_selection(args.run_dirs, out, rule=rule, min_seeds=args.min_seeds)
        print(path.read_text(encoding="utf-8"), end="")
        print(f"selection: {path}")
    return 0
