"""`pneumo site check`: is a new site's image set like the model's training data (before adapting or trusting it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.argparsing import subparser

EXAMPLES = """
pneumo site check --data hospital_xrays/ --out site-check/           # the shipped model, reference from $PNEUMO_DATA
pneumo site check --data images.csv --model runs/default --dataset chest_xray/ --sample 500 --out site-check/
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    check = subparser(sub, "check", help="compare a site's unlabelled images with the model's training data: "
                      "OOD share, predicted-positive rate, score distributions, image properties -> shifted or not",
                      examples=EXAMPLES)
    check.add_argument("--data", required=True, metavar="FOLDER|CSV",
                       help="the site's images: a folder (JPEG/PNG/DICOM, any depth) or a CSV with a path column")
    check.add_argument("--out", required=True, metavar="DIR", help="output folder: site.json, images.csv, report.html")
    check.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    check.add_argument("--dataset", metavar="DIR",
                       help="the model's training dataset, for the reference sample (default: $PNEUMO_DATA, else the "
                            "dataset the model's config records where that path exists; without any, the model's "
                            "recorded statistics only)")
    check.add_argument("--sample", type=int, default=300, metavar="N",
                       help="reference images drawn (seeded) from the model's val fold (its train + val folds "
                            "when it records no split)")
    check.add_argument("--seed", type=int, default=0, help="seed of the reference sample")
    check.add_argument("--force", action="store_true", help="replace the earlier check an --out folder holds (without "
                       "it: an error; a folder holding other files is never replaced)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from pneumo.adapt.check import check_site

    result = check_site(args.data, args.out, model=args.model, dataset=args.dataset, sample=args.sample,
                        seed=args.seed, replace=args.force)
    ood = result["ood"]
    ood_text = f", OOD {100 * ood['share']:.1f} %" if ood else ""
    turned = result["properties"]["site"].get("n_turned")
    ood_text += f", {turned} refused by the orientation check" if turned else ""
    reason = f": {result['reasons'][0]}" if result["reasons"] else ""
    verdict = "SHIFTED" if result["shifted"] else "not shifted" + (" (too few images to tell: check 50 or more)"
                                                                   if result.get("few_images") else "")
    n_copies = result.get("n_copies") or 0
    copies = f", {n_copies} {'copy' if n_copies == 1 else 'copies'} measured once" if n_copies else ""
    kinds = ", ".join(f"{kind}: {n}" for kind, n in (result.get("refused") or {}).items())  # (were all "not frontal films")
    print(f"site: {verdict} ({result['n_scored']} of {result['n_images']} "
          f"images scored, {result['n_unreadable'] + result['n_refused_by_gate']} not, {result['n_refused']} "
          f"refused as predict refuses them{f' ({kinds})' if kinds else ''}{copies}{ood_text}){reason}")
    if result.get("case_mix_differs") and result["shifted"]:  # the shift may be why: not said to be case mix alone
        print(f"calls: {result['case_mix'][0]} (with the images shifted, from the shift as well as, perhaps, "
              "another case mix)")
    elif result.get("case_mix_differs"):  # not a shift: the stored operating point's sensitivity/specificity may hold
        print(f"case mix: {result['case_mix'][0]} (another prevalence changes predictive values, not sensitivity or "
              "specificity; labelled images tell which: pneumo evaluate --data LABELLED)")
    print(f"report: {Path(args.out) / 'report.html'}")
    print(f"numbers: {Path(args.out) / 'site.json'}")
    return 0
