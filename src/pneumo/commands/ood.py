"""`pneumo ood fit MODEL`: (re)fit a model's out-of-distribution statistics on its own train fold (threshold on val)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.argparsing import subparser
from pneumo.models.ood import DEFAULT_PERCENTILE

EXAMPLES = """
pneumo ood fit --model runs/default
pneumo ood fit --model src/pneumo/assets/default-model.json --dataset chest_xray/
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ood_command", metavar="ACTION", required=True)
    fit = subparser(sub, "fit", help="fit the OOD statistics of a run folder or checkpoint (the shipped model too)",
                    examples=EXAMPLES)
    fit.description = ("Rebuild the model's train/val split from the config in its sidecar, compute "
                         "its features, fit class means + a shared Ledoit-Wolf covariance on train, set the flag "
                         "threshold at a percentile of the val scores, and write <stem>.ood.safetensors + the "
                       "sidecar's `ood` entry; then fit the orientation check (upright vs inverted, rotated, upside down: a "
                       "logistic head on the same features, learned from train images transformed synthetically) into "
                       "<stem>.orient.safetensors + the sidecar's `orientation` entry.")
    fit.add_argument("--model", required=True, help="run folder or checkpoint .json (e.g. "
                     "src/pneumo/assets/default-model.json); the statistics are written into it")
    fit.add_argument("--dataset", metavar="DIR", help="the training dataset, folder or zip (default: the one in the "
                     "model's config, else $PNEUMO_DATA)")
    fit.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                     help="val percentile that becomes the flag threshold")
    fit.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from pneumo.train.ood import fit_ood_for

    entry = fit_ood_for(args.model, data=args.dataset, percentile=args.percentile)
    print(f"ood: {entry['file']} ({entry['method']}, {entry['n_features']} features, {entry['n_train']} train images); "
          f"threshold {entry['threshold']:.3f} = val percentile {entry['percentile']:g} of {entry['n_val']} images")
    from pneumo.data.rundir import RunDir

    folder = Path(args.model)
    if folder.is_dir() and RunDir(folder).metrics.is_file():  # its report still counts flags at the old limit
        print(f"the run's metrics.json, report and predictions.csv flag images at the old limit: re-run "
              f"pneumo evaluate --model {args.model}")
    return 0
