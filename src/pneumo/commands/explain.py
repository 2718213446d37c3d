"""`pneumo explain`: Grad-CAM / Grad-CAM++ / occlusion / integrated-gradients maps for images and folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo.errors import ModelError, PneumoError, one_line

EXAMPLES = """
pneumo explain xray.jpeg                                     # Grad-CAM of the shipped model into ./explanations
pneumo explain xrays/ --model runs/default --method occlusion --out maps/   # + a contact sheet
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    from pneumo.explain import METHODS, TARGETS

    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--model", help="run folder or checkpoint .json/.safetensors (default: the shipped model)")
    parser.add_argument("--method", choices=METHODS, default="gradcam", help="explanation method")
    parser.add_argument("--layer", metavar="NAME", help="module to hook for gradcam/gradcam++ (default per model)")
    parser.add_argument("--target", choices=TARGETS, default="predicted",
                        help="explain the predicted label or always the pneumonia evidence")
    parser.add_argument("--out", default="explanations", metavar="DIR", help="output folder")
    parser.add_argument("--window", type=int, default=32, help="occlusion window in model pixels")
    parser.add_argument("--stride", type=int, default=16, help="occlusion stride in model pixels")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.errors import InputError, NotAssessed
    from pneumo.explain.overlay import HeatmapWriter, write_contact_sheet
    from pneumo.infer.batch import find_inputs, load_input
    from pneumo.infer.predictor import Predictor

    if args.threads is not None and args.threads < 1:
        raise PneumoError(f"--threads must be >= 1, got {args.threads}")
    if args.model and Path(args.model).suffix.lower() == ".onnx":
        raise ModelError(f"{args.model}: explanations need the PyTorch checkpoint (the run folder or its "
                         ".json/.safetensors), not an ONNX export")
    inputs = find_inputs(args.images)  # what is not read (a dangling link...) is said, as predict says it
    if not inputs.files:
        raise InputError("no input images found" + "".join(f"; {one_line(str(p))}: {one_line(why)}"
                                                           for p, why in list(inputs.skipped.items())[:3]))
    files = inputs.files
    predictor = Predictor(args.model, threads=args.threads)
    writer = HeatmapWriter(predictor, args.out, method=args.method, layer=args.layer, target=args.target,
                           window=args.window, stride=args.stride)
    written, failed = [], [(str(p), f"skipped: {why}") for p, why in inputs.skipped.items()]
    for path, why in failed:
        print(f"pneumo explain: {one_line(path)}: {one_line(why)}", file=sys.stderr)
    refused = 0  # a lateral film, a report: refused for what it is, as predict refuses it, which fails nothing
    for path in files:  # scored as predict scores it (its decode, the input gate); explained at full resolution
        gray, prepared, error = load_input(predictor, path, full=True)
        if error is not None:
            refused += isinstance(error, NotAssessed)
            failed.append((str(path), str(error)))
            print(f"pneumo explain: {one_line(str(path))}: {one_line(str(error))}", file=sys.stderr)
            continue
        prediction = predictor.predict_prepared(prepared[None])[0]
        item = writer.write_result(path, gray, prediction, prepared=prepared)
        written.append(item)
        p = item.prediction
        print(f"{one_line(str(path))}\t{p.label}\tP(pneumonia)={p.p_pneumonia:.3f}\t{one_line(str(item.overlay))}"
              f"\tmap_scale={item.scale:.3g}"
              + (f"\tno verdict: {p.reason}; map for audit only" if p.reason else ""))
    if written and (len(files) + len(inputs.skipped) > 1 or any(Path(i).is_dir() for i in args.images)):
        subtitle = (f"model {predictor.model_id} · {args.method} · target {args.target}"
                    + (f" · layer {args.layer}" if args.layer else ""))  # which maps these are (an explain audit)
        sheet = write_contact_sheet(args.out, written, title=f"pneumo explain ({args.method})", subtitle=subtitle,
                                    failed=[(one_line(path), one_line(why)) for path, why in failed])
        print(f"contact sheet: {sheet}")
    if not written and refused < len(files) + len(inputs.skipped):
        raise PneumoError(f"none of the {len(files) + len(inputs.skipped)} input(s) could be read"
                          + (f" ({refused} refused)" if refused else ""))
    return 1 if len(failed) > refused else 0

