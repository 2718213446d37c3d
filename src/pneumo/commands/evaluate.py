"""`pneumo evaluate RUN [RUN ...]`: the protocol on the official test split (threshold + temperature from val only);
several runs of one split are evaluated as an ensemble (mean probability) into ``--out``."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", nargs="+", help="a run folder (runs/<name>); several: an ensemble")
    parser.add_argument("--out", metavar="DIR", help="where an ensemble's metrics and report go (required for one)")
    parser.add_argument("--threshold-policy", help="youden | sensitivity:X (default: the run's config)")
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples (default: the run's config, 1000)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder if it moved since training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.errors import ConfigError
    from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run, summary_line
    from pneumo.explain.analysis import analysis_sections

    options = {"policy": args.threshold_policy, "n_bootstrap": args.bootstrap, "data": args.data}
    if len(args.run_dir) == 1:
        result, folder = evaluate_run(args.run_dir[0], analysis=analysis_sections, **options), args.run_dir[0]
    elif not args.out:
        raise ConfigError("several runs are evaluated as an ensemble: give --out DIR for its report")
    else:
        result, folder = evaluate_ensemble(args.run_dir, args.out, **options), args.out
    print(summary_line(result))
    print(f"report: {folder}/report.html")
    return 0
