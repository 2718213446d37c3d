"""`pneumo predict`: JPEG/PNG/DICOM files, folders or globs -> CSV or JSON lines."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path

from pneumo import __version__, atomic
from pneumo.errors import ConfigError, PneumoError, one_line
from pneumo.provenance import utc_now

log = logging.getLogger(__name__)

EXAMPLES = """
pneumo predict xrays/ --output predictions.csv                    # the shipped model, ONNX Runtime
pneumo predict 'scans/**/*.dcm' --model runs/default --format jsonl
pneumo predict xrays/ --heatmaps maps/ --output predictions.csv   # + Grad-CAM overlays, linked per row
"""


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}  # the output's extension decides its format


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                        help="auto: ONNX Runtime, exported once into the cache; torch if that fails")
    parser.add_argument("--format", choices=["csv", "jsonl"],
                        help="output format (default: the --output file's extension, .csv or .jsonl; csv on standard "
                        "output)")
    parser.add_argument("--output", metavar="FILE", help="output file (default, or -: standard output); a folder (existing, "
                        "or a path ending in /) gets predictions.csv (or .jsonl) inside it")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call")
    parser.add_argument("--heatmaps", metavar="DIR", help="also write Grad-CAM overlays here (the heatmap column "
                        "links each row to its file)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads: batches scored side by side, one thread each (default: all cores)")
    parser.set_defaults(func=run)


def output_target(output: str | None, fmt: str | None) -> tuple[Path | None, str]:
    """(output file or None for standard output, format). A folder gets ``predictions.<format>`` inside it; a file's
    extension decides the format.

    Raises:
        ConfigError: an unknown extension without ``--format``, or a ``--format`` that contradicts the extension.
    """
    if output is None or output == "-":
        return None, fmt or "csv"
    if Path(output).is_dir() or output.endswith(("/", os.sep)):
        fmt = fmt or "csv"
        return Path(output) / f"predictions.{fmt}", fmt
    suffix = Path(output).suffix.lower()
    implied = FORMATS.get(suffix)
    if implied is None and fmt is None:
        raise ConfigError(f"cannot tell the format of --output {output} from its extension {suffix or '(none)'}: "
                          "name it .csv or .jsonl, or give --format csv|jsonl")
    if implied is not None and fmt is not None and fmt != implied:
        raise ConfigError(f"--format {fmt} contradicts --output {output} (a {suffix} file is {implied}): drop "
                          "--format or rename the output")
    return Path(output), fmt or implied


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pneumo.evaluate.cautions import operating_point_warning
    from pneumo.infer.batch import find_inputs, predict_file_results
    from pneumo.infer.predictor import Predictor
    from pneumo.models.processes import env_from_os, shard

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    output, fmt = output_target(args.output, args.format)
    inputs = find_inputs(args.inputs)
    order, skipped = inputs.order, inputs.skipped  # rows in the order the inputs name them, skipped ones included
    env = env_from_os()
    if env.world_size > 1:  # torchrun -m pneumo predict ...: each rank a contiguous shard, the parts concatenate
        order = list(shard(order, env.rank, env.world_size))
        skipped = {path: skipped[path] for path in order if path in skipped}
        if output:
            output = Path(f"{output}.part-{env.rank}-of-{env.world_size}.{fmt}")
    files = [path for path in order if path not in skipped]

    # one thread per model call, one call per core at a time (`predict_file_results`; issue 24)
    predictor = Predictor(args.model, backend=args.backend, threads=1) if files else None
    if predictor is not None and (warning := operating_point_warning(predictor.meta)):
        log.warning("%s", warning)
    counts = {"scored": 0, "errors": 0, "not assessed": 0, "out-of-distribution": 0, "refused (input)": 0}
    with contextlib.ExitStack() as stack:  # a file output appears whole, at the end (pneumo.atomic), or not at all
        if output:  # patients' results: the temp file is private while written; a killed run's rows are kept
            partial = output.with_name(f"{output.name}.partial")  # (deleted, a volume audit: hours of scoring lost)
            for stale in atomic.remove_stale_temps(output, keep_as=partial):
                log.warning("the rows of a killed run (%s) are in %s", one_line(stale.name), one_line(str(partial)))
            tmp = stack.enter_context(atomic.writing(output, mode=atomic.umask_mode(), private=True))
            out = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        else:
            out = sys.stdout
        write = _row_writer(out, fmt)
        classes = predictor.classes if predictor else ["NORMAL", "PNEUMONIA"]
        model = {"model_id": predictor.model_id if predictor else None,  # which model, operating point, code and
                 "threshold_policy": predictor.meta.threshold_policy if predictor else None,  # run answered, on every
                 "backend": predictor.backend if predictor else None, "pneumo_version": __version__,  # row (an
                 "created": utc_now()}  # audit-trail review)
        heatmaps = None
        if args.heatmaps and files:  # a --heatmaps that is a file: one line before the progress bar
            from pneumo.explain.overlay import HeatmapWriter

            heatmaps = HeatmapWriter(predictor, Path(args.heatmaps), flag="--heatmaps")
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not sys.stderr.isatty() and output is None)
        results = iter(predict_file_results(predictor, files, batch_size=args.batch_size, heatmaps=heatmaps,
                                            workers=args.threads) if files else ())
        stack.callback(bar.close)
        if output:  # Ctrl-C, SIGTERM: the rows written so far are kept (private), the output is not written
            stack.push(lambda kind, exc, tb: _keep_partial(kind, out, tmp, partial, bar.n, len(files)))
        for path in order:
            if path in skipped:  # a named input that is not read: a row, in its place, not silence
                counts["errors"] += 1
                bar.write(f"pneumo predict: {one_line(f'{path}: skipped: {skipped[path]}')}", file=sys.stderr)
                write(_row(path, None, classes, f"skipped: {skipped[path]}", args.heatmaps, None, model))
                continue
            item = next(results)  # the files' results come in the files' order
            bar.update(1)  # one image at a time (heat maps included), not one batch
            if item.error:
                counts["refused (input)" if item.refused else "errors"] += 1  # a lateral film or a report fails nothing
                # (bar.write: not glued to the live bar's line, a volume audit)
                bar.write(f"pneumo predict: {one_line(f'{item.path}: {item.error}')}", file=sys.stderr)
            else:
                counts["scored"] += 1
                counts["not assessed"] += not item.prediction.assessed  # out of distribution, turned, non-finite
                counts["out-of-distribution"] += bool(item.prediction.ood)
            write(_row(item.path, item.prediction, classes, item.error, args.heatmaps, item.heatmap, model,
                       refused=item.refused))
    total = len(files) + len(skipped)
    print(f"summary: {total} input(s): " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + (f"; {inputs.ignored} other file(s) in the folders not read (DICOMDIR, hidden, not images)"
             if inputs.ignored else "")  # (a DICOM audit: a CD's DICOMDIR and viewer went unsaid)
          + (f"; written to {output}" if output else ""), file=sys.stderr)
    if counts["scored"] == 0 and counts["refused (input)"] < total:  # every input refused (laterals, reports): as documented,
        # a refusal fails nothing; a review found "none could be read", exit 2, for a folder of laterals only
        raise PneumoError(f"none of the {total} input(s) could be read"
                          + (f" ({counts['refused (input)']} refused)" if counts["refused (input)"] else ""))
    return 1 if counts["errors"] else 0


def _keep_partial(kind: type | None, out, tmp: Path, partial: Path, done: int, total: int) -> None:
    """On an interrupt (``kind``), move the rows written so far to ``partial`` (mode 0600, as written) and say so."""
    if kind is None or not issubclass(kind, KeyboardInterrupt):
        return
    out.flush()
    os.replace(tmp, partial)
    print(f"pneumo predict: stopped after {done} of {total} image(s): their rows are in {one_line(str(partial))} "
          "(readable by you alone); the output was not written", file=sys.stderr)


def _row_writer(out, fmt: str):
    """A function writing one row (a dict) as a JSON line or a CSV row (the header before the first)."""
    writer = None

    def write(row: dict) -> None:
        nonlocal writer
        if fmt == "jsonl":
            out.write(json.dumps(row) + "\n")
            return
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row))
            writer.writeheader()
        writer.writerow({key: atomic.csv_cell(value) for key, value in row.items()})

    return write


def _row(path: Path, prediction, classes: list[str], error: str | None, heatmaps: str | None,
         heatmap: Path | None, model: dict, *, refused: bool = False) -> dict:
    row = {"path": _printable(path), **_flatten(prediction, classes, error)}
    if refused:  # a lateral film, a report: refused as an input, with its reason in `error`
        row["refused"] = "input"
    if heatmaps:
        row["heatmap"] = str(heatmap) if heatmap else None
    return {**row, **model}  # which model and operating point answered, on every row (as the service's responses)


def _printable(path: Path) -> str:
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _flatten(result, classes: list[str], error: str | None) -> dict:
    """One output row; absent values are None (an empty CSV cell, null in JSON lines)."""
    row = {"p_pneumonia": None, "p_calibrated": None, "label": None, "threshold": None, "threshold_calibrated": None,
           "ood_score": None, "ood": None, "reason": None, "refused": None, "error": error or None}
    if result is not None:  # label "not assessed" (with the reason) for an image outside the model's scope
        row.update(p_pneumonia=_rounded(result.p_pneumonia, 6), p_calibrated=_rounded(result.p_calibrated, 6),
                   label=result.label, threshold=round(result.threshold, 6), reason=result.reason, refused=result.refused,
                   threshold_calibrated=None if result.threshold_calibrated is None
                   else round(result.threshold_calibrated, 6))
        if result.ood is not None:
            row.update(ood_score=None if result.ood_score is None else round(result.ood_score, 4), ood=result.ood)
    if len(classes) > 2:
        for c in classes:
            row[f"p_{c}"] = _rounded(result.probabilities[c], 6) if result is not None else None
    return row


def _rounded(value: float, digits: int) -> float | None:
    """``value`` rounded; NaN or infinity (a broken model's output, withheld) -> None: the JSON lines stay JSON."""
    return round(value, digits) if math.isfinite(value) else None
