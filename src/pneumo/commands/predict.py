"""`pneumo predict`: JPEG/PNG/DICOM files, folders or globs -> CSV or JSON lines."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import sys
from pathlib import Path

from pneumo import atomic
from pneumo.errors import ConfigError, PneumoError

log = logging.getLogger(__name__)

EXAMPLES = """
pneumo predict xrays/ --output predictions.csv                    # the shipped model, ONNX Runtime
pneumo predict 'scans/**/*.dcm' --model runs/default --format jsonl
pneumo predict xrays/ --heatmaps maps/ --output predictions.csv   # + Grad-CAM overlays, linked per row
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                        help="auto: ONNX Runtime, exported once into the cache; torch if that fails")
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="output format")
    parser.add_argument("--output", metavar="FILE", help="output file (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call")
    parser.add_argument("--heatmaps", metavar="DIR", help="also write Grad-CAM overlays here (the heatmap column "
                        "links each row to its file)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pneumo.infer.batch import expand_inputs, predict_file_results
    from pneumo.infer.predictor import Predictor
    from pneumo.models.processes import env_from_os, shard

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    files = expand_inputs(args.inputs)
    env = env_from_os()
    if env.world_size > 1:  # torchrun -m pneumo predict ...: each rank takes a contiguous shard
        files = shard(files, env.rank, env.world_size)
        if args.output:
            args.output = f"{args.output}.part-{env.rank}-of-{env.world_size}.{args.format}"

    predictor = Predictor(args.model, backend=args.backend, threads=args.threads)
    failures = 0
    with contextlib.ExitStack() as stack:  # a file output appears whole, at the end (pneumo.atomic), or not at all
        if args.output:
            out = stack.enter_context(open(stack.enter_context(atomic.writing(args.output)), "w", newline="",
                                           encoding="utf-8"))
        else:
            out = sys.stdout
        writer = None
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not sys.stderr.isatty() and args.output is None)
        for item in predict_file_results(predictor, files, batch_size=args.batch_size, heatmap_dir=args.heatmaps):
            bar.update(1)  # one image at a time (heat maps included), not one batch
            row = {"file": _printable(item.path), **_flatten(item.prediction, predictor.classes, item.error)}
            if args.heatmaps:
                row["heatmap"] = str(item.heatmap) if item.heatmap else None
            if item.error:
                failures += 1
                print(f"pneumo predict: {_printable(item.path)}: {item.error}", file=sys.stderr)
            if args.format == "jsonl":
                out.write(json.dumps(row) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow({key: csv_cell(value) for key, value in row.items()})
        bar.close()
    if failures == len(files):
        raise PneumoError(f"none of the {len(files)} input(s) could be read")
    return 1 if failures else 0


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a file named ``=HYPERLINK(...).jpeg``) gets a leading
    ``'``, so it shows as text; numbers stay numbers; None is an empty cell."""
    if value is None:
        return ""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _printable(path: Path) -> str:
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _flatten(result, classes: list[str], error: str | None) -> dict:
    """One output row; absent values are None (an empty CSV cell, null in JSON lines)."""
    row = {"p_pneumonia": None, "p_calibrated": None, "label": None, "threshold": None, "ood_score": None, "ood": None,
           "error": error or None}
    if result is not None:
        row.update(p_pneumonia=round(result.p_pneumonia, 6), p_calibrated=round(result.p_calibrated, 6),
                   label=result.label, threshold=round(result.threshold, 6))
        if result.ood is not None:  # out-of-distribution: don't trust the label
            row.update(ood_score=None if result.ood_score is None else round(result.ood_score, 4), ood=result.ood)
    if len(classes) > 2:
        for c in classes:
            row[f"p_{c}"] = round(result.probabilities[c], 6) if result is not None else None
    return row
