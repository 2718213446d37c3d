"""`pneumo data ...`: scan, split, cache, report, download, export."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pneumo.data.manifest import scan_dataset


def add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="dataset folder or zip (default: $PNEUMO_DATA)")


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("scan", help="list the images into a manifest CSV and print counts")
    add_data_option(p)
    p.add_argument("--out", metavar="CSV", help="write the manifest here")
    p.set_defaults(func=run_scan)

    p = sub.add_parser("split", help="patient-grouped, subtype-stratified train/val split + leakage check")
    add_data_option(p)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of patients per subtype in val (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="CSV", help="write the manifest with its fold column here")
    p.set_defaults(func=run_split)

    p = sub.add_parser("cache", help="decode all images once into a uint8 memory-mapped cache")
    add_data_option(p)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--policy", choices=["squash", "letterbox"], default="squash")
    p.add_argument("--intensity", choices=["none", "equalize", "clahe", "standardize"], default="none")
    p.add_argument("--cache-dir", help="default: $PNEUMO_CACHE or ~/.cache/pneumo")
    p.set_defaults(func=run_cache)

    p = sub.add_parser("report", help="write the HTML dataset report (counts, sizes, intensities, samples, leakage)")
    add_data_option(p)
    p.add_argument("--out", default="runs/data-report", help="output folder (default runs/data-report)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_report)

    p = sub.add_parser("download", help="download the Mendeley archive (checksum-verified, resumable)")
    p.add_argument("--cache-dir", help="default: $PNEUMO_CACHE or ~/.cache/pneumo")
    p.add_argument("--source", default="mendeley")
    p.set_defaults(func=run_download)

    p = sub.add_parser("export", help="write a compact copy (short side = SIZE, JPEG) in the Kaggle layout")
    add_data_option(p)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.set_defaults(func=run_export)


def _counts(df) -> str:
    column = "fold" if "fold" in df else "split"
    table = df.groupby([column, "subtype"]).size().unstack(fill_value=0)
    table["total"] = table.sum(axis=1)
    return table.to_string()


def run_scan(args: argparse.Namespace) -> int:
    df = scan_dataset(args.data)
    print(_counts(df))
    if args.out:
        df.to_csv(args.out, index=False)
        print(f"manifest: {args.out} ({len(df)} images)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from pneumo.data.splits import assign_folds, leakage_report

    folds = assign_folds(scan_dataset(args.data), val_fraction=args.val_fraction, seed=args.seed)
    print(_counts(folds))
    print("patients per fold:", folds.groupby("fold")["patient_key"].nunique().to_dict())
    print("leakage check: passed", leakage_report(folds))
    if args.out:
        folds.to_csv(args.out, index=False)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    from pneumo.data.cache import build_cache

    df = scan_dataset(args.data)
    start = time.perf_counter()
    cache = build_cache(
        df, args.data, size=args.size, policy=args.policy, intensity=args.intensity, cache_dir=args.cache_dir
    )
    print(f"cache: {cache.file} {cache.images.shape} in {time.perf_counter() - start:.1f} s")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pneumo.data.report import write_data_report
    from pneumo.data.splits import assign_folds

    df = scan_dataset(args.data)
    folds = assign_folds(df, val_fraction=args.val_fraction, seed=args.seed)
    path = write_data_report(df, df.attrs.get("location", args.data), Path(args.out), folds_df=folds, seed=args.seed)
    print(f"dataset report: {path}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from pneumo.data.download import fetch_dataset

    path = fetch_dataset(args.cache_dir, source=args.source)
    print(f"dataset archive: {path}\nuse it with: --data {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pneumo.data.export import export_compact

    out = export_compact(scan_dataset(args.data), args.data, Path(args.out), size=args.size, quality=args.quality)
    print(f"compact copy: {out}")
    return 0
