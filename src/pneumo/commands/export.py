"""`pneumo export`: a run (or the shipped model) to ONNX for CPU inference with ONNX Runtime."""

from __future__ import annotations

import argparse

from pneumo.argparsing import deprecated, model_option

EXAMPLES = """
pneumo export --model runs/default --int8     # runs/default/model.onnx (+ model.int8.onnx)
pneumo export --out exported/                 # the shipped model into exported/default-model.onnx
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("legacy_model", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: next to the checkpoint; needed for the "
                        "shipped model)")
    parser.add_argument("--int8", action="store_true", help="also write a dynamically int8-quantized copy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.infer.export import export_onnx

    model = model_option(args)
    if args.out and args.out.endswith(".onnx"):
        deprecated("--out FILE.onnx is deprecated and will be removed in the next release: --out is a folder")
    path = export_onnx(model, args.out, quantize=args.int8)
    print(f"onnx: {path}")
    if args.int8:
        print(f"int8: {path.with_name(path.stem + '.int8.onnx')}")
    return 0
