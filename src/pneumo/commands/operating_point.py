"""`pneumo operating-point`: choose a new operating point on validation data; writes a NEW model folder (the source
model is never changed)."""

from __future__ import annotations

import argparse
import sys

from pneumo.argparsing import add_dataset_option
from pneumo.data.files import MAX_LISTED
from pneumo.errors import one_line
from pneumo.templates import fmt_threshold

EXAMPLES = """
pneumo operating-point --model runs/default --threshold-policy sensitivity:0.95 --out runs/default-sens95
pneumo operating-point --model runs/default --threshold-policy triage --out runs/default-triage   # sens >= 0.90 (WHO TB triage profile)
pneumo operating-point --threshold-policy youden --data local_val/ --out models/default-local   # your labelled images
pneumo operating-point --model models/site-a --threshold-policy youden --out models/site-a-youden  # as its card lays out
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--threshold-policy", required=True, metavar="POLICY",
                        help="youden | triage (= sensitivity:0.90) | sensitivity:X (the highest threshold whose "
                             "sensitivity on the scores it is chosen on is >= X)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the new model folder (must be new or empty)")
    parser.add_argument("--data", metavar="FOLDER|CSV", help="labelled images to choose on: NORMAL/ + PNEUMONIA/ "
                        "folders or a CSV with path,label (default: the model's own val fold; for an adapted model, "
                        "the policies its adaptation laid out on its cross-fitted scores)")
    add_dataset_option(parser, "to rebuild the model's val fold")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.evaluate.derive import derive_model
    from pneumo.infer.card import with_ci
    from pneumo.policy import check_policy

    policy = check_policy(args.threshold_policy, "--threshold-policy")
    record = derive_model(args.model, policy, args.out, data=args.dataset, val=args.data)
    chosen = record["chosen_on"]
    withheld = chosen.get("n_not_assessed") or 0
    patients = chosen.get("patients_by_class")
    print(f"new model: {args.out} (operating point v{record['version']}: {record['policy']}, threshold "
          f"{fmt_threshold(record['threshold'])}, sensitivity {with_ci(chosen, 'sensitivity')}, specificity "
          f"{with_ci(chosen, 'specificity')}, ROC-AUC {with_ci(chosen, 'roc_auc', 'roc_auc_ci')} on {chosen['n']} "
          f"images" + (f" of {sum(patients.values())} patients" if patients else "") + f" of {chosen['kind']}"
          + (f"; {withheld} without a verdict left out)" if withheld else ")"))
    left_out = record["left_out"]  # named here only: the new folder's record counts them
    if left_out:
        print(f"left out: {len(left_out)} file(s) (unreadable, refused or not read)")
        for path, reason in list(left_out.items())[:MAX_LISTED]:
            print(f"  {one_line(path)}: {one_line(reason)}")
        if len(left_out) > MAX_LISTED:
            print(f"  ... and {len(left_out) - MAX_LISTED} more")
    if record.get("warning"):
        print(f"warning: {record['warning']}", file=sys.stderr)
    print(f"evaluate it: pneumo evaluate --model {args.out}"
          + (" --data HELD_OUT --out validation/   # other patients than these"
             if args.data or chosen.get("location") == "adapt.json" else ""))
    return 0
