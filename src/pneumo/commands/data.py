"""`pneumo data ...`: scan, split, cache, report, download."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pneumo import atomic
from pneumo.argparsing import subparser
from pneumo.config import INTENSITIES, RESIZE_POLICIES, DataConfig
from pneumo.data.manifest import scan_dataset
from pneumo.errors import ConfigError, LeakageError

EXAMPLES = """
pneumo data download                                   # the Mendeley archive into ~/.cache/pneumo
pneumo data report --dataset chest_xray/ --out runs/data-report
pneumo data split --dataset chest_xray/ --output folds.csv
pneumo data ACTION --help
"""
ACTION_EXAMPLES = {
    "scan": "pneumo data scan --dataset chest_xray/ --output manifest.csv",
    "split": "pneumo data split --dataset chest_xray/ --val-fraction 0.1 --split-seed 0 --output folds.csv",
    "cache": "pneumo data cache --dataset chest_xray/ --size 224 --resize-policy letterbox",
    "report": "pneumo data report --dataset chest_xray/ --out runs/data-report",
    "download": "pneumo data download --cache-dir ~/.cache/pneumo",
}


def _dataset_flag(parser: argparse.ArgumentParser) -> None:
    """``--dataset`` of the data actions: the dataset itself (not a run's, as `argparsing.add_dataset_option`)."""
    parser.add_argument("--dataset", metavar="DIR", help="dataset folder or zip (default: $PNEUMO_DATA)")


def _default(field: str):
    """The run configuration's default (`config.DataConfig`): `pneumo data` caches and splits as a run would."""
    return DataConfig.model_fields[field].default


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return subparser(sub, name, help=help_text, examples=ACTION_EXAMPLES[name])

    p = action("scan", "list the images into a manifest CSV and print counts")
    _dataset_flag(p)
    p.add_argument("--output", metavar="CSV", help="write the manifest to this file")
    p.set_defaults(func=run_scan)

    p = action("split", "patient-grouped, subtype-stratified train/val split + leakage check")
    _dataset_flag(p)
    p.add_argument("--val-fraction", type=float, default=_default("val_fraction"),
                   help="share of patients per subtype in val")
    p.add_argument("--split-seed", type=int, default=_default("split_seed"),
                   help="seed of the patient split (a run config's data.split_seed; not the training seed)")
    p.add_argument("--output", metavar="CSV", help="write the manifest with its fold column to this file")
    p.set_defaults(func=run_split)

    p = action("cache", "decode all images once into a uint8 memory-mapped cache")
    _dataset_flag(p)
    p.add_argument("--size", type=int, default=_default("image_size"), help="side of the square model input in pixels")
    p.add_argument("--resize-policy", choices=RESIZE_POLICIES, default=_default("resize_policy"),
                   help="squash (stretch to a square) or letterbox (pad to a square)")
    p.add_argument("--intensity", choices=INTENSITIES, default=_default("intensity"), help="intensity step")
    p.add_argument("--cache-dir", help="default: $PNEUMO_CACHE or ~/.cache/pneumo")
    p.set_defaults(func=run_cache)

    p = action("report", "write the HTML dataset report (counts, sizes, intensities, samples, leakage)")
    _dataset_flag(p)
    p.add_argument("--out", default="runs/data-report", metavar="DIR", help="output folder")
    p.add_argument("--val-fraction", type=float, default=_default("val_fraction"),
                   help="share of patients per subtype in val")
    p.add_argument("--split-seed", type=int, default=_default("split_seed"),
                   help="seed of the patient split (a run config's data.split_seed; not the training seed)")
    p.set_defaults(func=run_report)

    p = action("download", "download the Mendeley archive (checksum-verified, resumable)")
    p.add_argument("--cache-dir", help="default: $PNEUMO_CACHE or ~/.cache/pneumo")
    p.add_argument("--source", default="mendeley", help="where from")
    p.set_defaults(func=run_download)


def _counts(df) -> str:
    column = "fold" if "fold" in df else "split"
    table = df.groupby([column, "subtype"]).size().unstack(fill_value=0)
    table["total"] = table.sum(axis=1)
    return table.to_string()


def run_scan(args: argparse.Namespace) -> int:
    df = scan_dataset(args.dataset)
    print(_counts(df))
    if args.output:
        atomic.write_csv(args.output, df)  # (a non-UTF-8 file name with backslash escapes)
        print(f"manifest: {args.output} ({len(df)} images)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from pneumo.data.splits import assign_folds, check_split, leakage_report

    check_split(args.val_fraction, args.split_seed)  # before the scan
    folds = assign_folds(scan_dataset(args.dataset), val_fraction=args.val_fraction, seed=args.split_seed)
    print(_counts(folds))
    print("patients per fold:", folds.groupby("fold")["patient_key"].nunique().to_dict())
    print("leakage check: passed", leakage_report(folds))
    if args.output:
        atomic.write_csv(args.output, folds)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    from pneumo.data.cache import build_cache, check_image_size

    check_image_size(args.size)  # before the scan
    df = scan_dataset(args.dataset, cache_dir=args.cache_dir)
    start = time.perf_counter()
    cache = build_cache(
        df, args.dataset, size=args.size, policy=args.resize_policy, intensity=args.intensity, cache_dir=args.cache_dir
    )
    print(f"cache: {cache.file} {cache.images.shape} in {time.perf_counter() - start:.1f} s")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pneumo.data.report import write_data_report
    from pneumo.data.splits import assign_folds, check_split

    check_split(args.val_fraction, args.split_seed)  # before the scan
    if Path(args.out).exists() and not Path(args.out).is_dir():  # (was an errno after the whole scan)
        raise ConfigError(f"--out {args.out} is a file, not a folder: give a folder for the report")
    start = time.perf_counter()
    _progress("scanning the dataset", start)
    df = scan_dataset(args.dataset)
    _progress(f"{len(df)} images; patient-grouped split", start)
    try:
        folds, leak = assign_folds(df, val_fraction=args.val_fraction, seed=args.split_seed), None
    except LeakageError as exc:  # the report is where a user sees it: written first, then the one-line error
        folds, leak = None, exc
    _progress("decoding samples, drawing figures, writing the report", start)
    path = write_data_report(df, df.attrs.get("location", args.dataset), Path(args.out), folds_df=folds, seed=args.split_seed,
                             split_error=None if leak is None else str(leak))
    _progress("done", start)
    print(f"dataset report: {path}")
    if leak is not None:
        raise leak
    return 0


def _progress(step: str, start: float) -> None:
    print(f"pneumo data report: [{time.perf_counter() - start:5.1f} s] {step}", file=sys.stderr, flush=True)


def run_download(args: argparse.Namespace) -> int:
    from pneumo.data.download import fetch_dataset

    path = fetch_dataset(args.cache_dir, source=args.source)
    print(f"dataset archive: {path}\nuse it with: --dataset {path} (or PNEUMO_DATA={path})")
    return 0

