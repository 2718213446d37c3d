"""`pneumo adapt`: adapt a model to a new site's labelled images; writes a NEW model folder (the source is only read)."""

from __future__ import annotations

import argparse

from pneumo.argparsing import add_schema_flags, schema_values

EXAMPLES = """
pneumo adapt --data site_labels.csv --out models/site-a            # the shipped model, CSV with path,label,patient_id
pneumo adapt --data site_xrays/ --out models/site-a --model runs/default --threshold-policy sensitivity:0.90
pneumo evaluate --model models/site-a --data site_held_out/ --out validation/   # then validate on held-out patients
"""

# AdaptConfig field -> help of its option (type and default from the field)
TUNABLE = {"folds": "patient-grouped cross-fitting folds", "epochs": "fine-tuning epochs",
           "rehearsal": "source training images mixed in per site image and epoch (0: off)",
           "rehearsal_min": "at least this many source training images an epoch when rehearsal is on",
           "seed": "seed of the folds, draws and augmentation"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    from pneumo.config import AdaptConfig  # light: the parser is built for every command

    d = AdaptConfig()
    parser.add_argument("--data", required=True, metavar="FOLDER|CSV",
                        help="the site's labelled images: NORMAL/ + PNEUMONIA/ folders, or a CSV with path,label and "
                             "optionally patient_id (without it a DICOM's PatientID groups its films, as a keyed "
                             "hash; any other image counts as its own patient)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the new model folder (must be new or empty)")
    parser.add_argument("--model", help="run folder or checkpoint to adapt (default: the shipped model)")
    parser.add_argument("--dataset", metavar="DIR", help="the source training dataset, for rehearsal and the "
                        "source-hospital report (default: the model's, or $PNEUMO_DATA; absent: no rehearsal)")
    parser.add_argument("--threshold-policy", default=d.threshold_policy, metavar="POLICY",
                        help="operating point chosen on the cross-fitted scores: youden | triage | sensitivity:X")
    add_schema_flags(parser, d, TUNABLE)
    parser.add_argument("--by", action="append", default=[], metavar="COLUMN",
                        help="a column of the --data CSV (e.g. scanner; or view, which DICOMs give too): also report "
                             "the cross-fitted performance for each of its values; repeatable")
    parser.add_argument("--device", default="auto", help="where to fine-tune: auto | cpu | cuda | cuda:N | mps")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.adapt.report import adaptation_warnings, missed_at_operating_point, unusable_operating_point
    from pneumo.adapt.run import adapt
    from pneumo.config import AdaptConfig, check_device
    from pneumo.policy import parse_policy
    from pneumo.templates import fmt_threshold

    cfg = AdaptConfig(threshold_policy=args.threshold_policy, **schema_values(args, TUNABLE))  # ConfigError: exit 2
    check_device(args.device)  # as train's: before the site is read
    record = adapt(args.model, args.data, args.out, dataset=args.dataset, cfg=cfg, device=args.device,
                   by=tuple(args.by))
    local, op = record["local"]["after"], record["operating_point"]
    sens, spec = local["metrics"]["sensitivity"], local["metrics"]["specificity"]
    (lo, hi), (slo, shi) = local["sensitivity_exact_ci"], local["specificity_exact_ci"]
    print(f"adapted model: {args.out} ({record['site']['n_images']} images, {record['site']['n_patients']} patients; "
          f"{record['seconds']['total']:.0f} s)")
    print(f"cross-fitted on the site: AUC {local['metrics']['roc_auc']:.3f}, at threshold {fmt_threshold(op['threshold'])} "
          f"({op['policy']}) sensitivity {sens:.3f} [{lo:.3f}, {hi:.3f}], specificity {spec:.3f} [{slo:.3f}, {shi:.3f}]"
          " (on the scores the threshold was chosen on" + (": the sensitivity meets the policy by construction"
                                                             if parse_policy(op["policy"])[0] == "sensitivity" else "")
          + "; held-out patients measure both)")
    ranking = record["local"]["ranking"]
    interval = " [{:+.3f}, {:+.3f}]".format(*ranking["ci"]) if ranking["ci"] else ""
    withheld = record["local"]["before"].get("n_not_assessed") or 0  # (an adapt audit: only the card said so)
    print(f"the source model on the same {record['local']['n']} images: AUC {ranking['roc_auc_before']:.3f} "
          f"(gain {ranking['gain']:+.3f}{interval})" + (
              f"; it gives {withheld} of them no verdict (out of distribution or turned: the card's table of the "
              "source model at its stored threshold leaves them out)" if withheld else ""))
    if record.get("source_site"):
        src = record["source_site"]
        before, after = src["before"]["metrics"], src["after"]["metrics"]
        print(f"source hospital ({src['n']} test images, {src['n_patients']} patients): AUC {before['roc_auc']:.3f} -> "
              f"{after['roc_auc']:.3f}; sensitivity {before['sensitivity']:.3f} -> {after['sensitivity']:.3f}, "
              f"specificity {before['specificity']:.3f} -> {after['specificity']:.3f} (its own threshold "
              f"{fmt_threshold(record['source_model']['threshold'])} -> this site's)")
    for warning in adaptation_warnings(record):
        print(f"warning: {warning.replace('--model THIS', f'--model {args.out}')}")
    print(("do not deploy it as it is; " if unusable_operating_point(record) or missed_at_operating_point(record)
           else "")
          + f"validate it on held-out patients: pneumo evaluate --model {args.out} --data HELD_OUT --out validation/")
    return 0
