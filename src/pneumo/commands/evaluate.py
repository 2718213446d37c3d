"""`pneumo evaluate RUN`: the protocol on the official test split (threshold + temperature from val only)."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run folder (runs/<name>)")
    parser.add_argument("--threshold-policy", help="youden | sensitivity:X (default: the run's config)")
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples (default: the run's config, 1000)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder if it moved since training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.runner import evaluate_run, summary_line

    result = evaluate_run(args.run_dir, policy=args.threshold_policy, n_bootstrap=args.bootstrap, data=args.data)
    print(summary_line(result))
    print(f"report: {args.run_dir}/report.html")
    return 0
