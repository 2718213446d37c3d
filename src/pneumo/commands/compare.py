"""`pneumo compare RUN [RUN ...]`: a leaderboard (markdown + HTML) from the runs' metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN", help="evaluated run folders (runs/<name>)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write leaderboard.md / leaderboard.html (default: the first run's parent)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.compare import write_leaderboard

    out = Path(args.out) if args.out else Path(args.run_dirs[0]).resolve().parent
    md, page = write_leaderboard(args.run_dirs, out)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"leaderboard: {md}, {page}")
    return 0
