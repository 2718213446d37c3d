"""`pneumo compare RUN [RUN ...]`: a leaderboard (markdown + HTML) from the runs' metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """
pneumo compare runs/*                       # runs without metrics.json are skipped with a warning
pneumo compare runs/default runs/best --out reports/
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN", help="evaluated run (or evaluation) folders; rows are "
                        "named by folder and link to each report.html")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder for leaderboard.md / leaderboard.html (default: the first run's parent)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.compare import write_leaderboard

    out = Path(args.out) if args.out else Path(args.run_dirs[0]).resolve().parent
    md, page = write_leaderboard(args.run_dirs, out)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"leaderboard: {md}, {page}")
    return 0
