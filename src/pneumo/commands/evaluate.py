"""`pneumo evaluate`: the protocol on the official test split (a run), an ensemble of runs, or any labelled folder
(external validation, at the model's stored operating point). Evaluating never changes a model."""

from __future__ import annotations

import argparse
import sys

from pneumo.argparsing import add_dataset_option
from pneumo.errors import one_line

EXAMPLES = """
pneumo evaluate --data hospital_xrays/                 # the shipped model on your labelled folder (NORMAL/ PNEUMONIA/)
pneumo evaluate --model runs/default --data labels.csv --out validation/   # a CSV of path,label
pneumo evaluate --model runs/default                   # a run on the official test split (its own report.html)
pneumo evaluate --model runs/a --model runs/b --out runs/ens              # an ensemble of runs of one split
pneumo evaluate --model runs/default --threshold-policy sensitivity:0.98  # one more policy in the table
pneumo evaluate --model models/site-a --data held_out.csv --by view --by sex   # subgroup rows from the CSV's columns
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="MODEL",
                        help="run folder, checkpoint, ensemble folder or 'default' (the shipped model, also when "
                             "omitted); repeat for an ensemble of runs")
    parser.add_argument("--data", metavar="FOLDER|CSV",
                        help="labelled images to validate on: a folder with NORMAL/ and PNEUMONIA/ subfolders (any "
                             "depth) or a CSV with path,label columns. Without it: the official test split")
    parser.add_argument("--out", metavar="DIR", help="output folder for an ensemble's or an external validation's "
                        "report (default: evaluations/<model>-on-<data>, -on-test for the official split); a run "
                        "evaluated on its own test split writes into its folder and takes no --out")
    parser.add_argument("--threshold-policy", action="append", default=[], metavar="POLICY", dest="policies",
                        help="also report this policy (youden | triage | sensitivity:X), chosen on val; repeatable. "
                             "The headline stays the model's stored operating point: to change it, use "
                             "`pneumo operating-point`. For an ensemble of runs (several --model), the first one is "
                             "the ensemble's own (needed when its members' policies differ)")
    parser.add_argument("--by", action="append", default=[], metavar="COLUMN",
                        help="a column of the --data CSV (e.g. sex, scanner; or view, which DICOMs give too): also "
                             "report each of its values as a subgroup at the stored threshold; repeatable")
    parser.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples (default: a run's own "
                        "eval.n_bootstrap for its official test split; 1000 for --data and for the shipped model)")
    parser.add_argument("--force", action="store_true", help="replace the earlier evaluation an --out folder holds "
                        "(without it: an error; a folder holding other files is never replaced)")
    add_dataset_option(parser, "if it moved since training")
    parser.add_argument("--no-analysis", action="store_true", help="skip the Grad-CAM figures (shortcut indicator, "
                        "error gallery, embeddings): faster")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.command import evaluate
    from pneumo.evaluate.labelled import unnamed_not_read
    from pneumo.evaluate.metrics import is_small_sample
    from pneumo.evaluate.report import fmt_number, fmt_threshold
    from pneumo.evaluate.runner import summary_line
    from pneumo.explain.analysis import analysis_sections, error_gallery
    from pneumo.policy import check_policy

    # before any loading, and naming the flag (as operating-point and adapt do); in one spelling
    args.policies = list(dict.fromkeys(check_policy(policy, "--threshold-policy") for policy in args.policies))
    hooks = {} if args.no_analysis else {"sections": analysis_sections, "gallery": error_gallery}
    result, folder = evaluate(list(args.model), data=args.data, out=args.out, policies=tuple(args.policies),
                              n_bootstrap=args.bootstrap, dataset=args.dataset, progress=sys.stderr.isatty(),
                              force=args.force, by=tuple(args.by), **hooks)
    print(summary_line(result))
    ext = result.get("external") or {}
    left_out = {**(ext.get("unreadable") or {}), **(ext.get("not_read") or {})}
    if left_out:
        print(f"left out: {ext.get('n_unreadable', 0) + ext.get('n_not_read', 0)} file(s) "
              f"({ext.get('n_unreadable', 0)} unreadable or refused, "
              f"{ext.get('n_not_read', 0)} not read)")
        for path, reason in left_out.items():  # a hospital's file names: one printable line each
            print(f"  {one_line(path)}: {one_line(reason)}")
        if (unnamed := unnamed_not_read(ext)) > 0:
            print(f"  ... and {unnamed} more files left out (counted, not named)")
    points = result.get("operating_points") or {}
    for policy, p in points.items():
        print(f"  {policy:>18}: threshold {fmt_threshold(p['threshold'])}, accuracy {fmt_number(p['accuracy'])}, "
              f"sensitivity {fmt_number(p['sensitivity'])}, specificity {fmt_number(p['specificity'])}")
    for column, groups in (result.get("subgroups") or {}).items():
        for value, g in groups.items():
            m = g["metrics"]
            print(f"  {one_line(column)}={one_line(value)}: n {g['n']} ({g['n_pos']} pneumonia), "
                  f"ROC-AUC {fmt_number(m['roc_auc'])}, "
                  f"sensitivity {fmt_number(m['sensitivity'])}, specificity {fmt_number(m['specificity'])}"
                  + (" (small sample: read as rough)" if is_small_sample(g["n_pos"], g["n"] - g["n_pos"]) else ""))
    print(f"report: {folder}/report.html")
    return 0
