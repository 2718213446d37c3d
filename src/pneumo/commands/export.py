"""`pneumo export`: a run (or the shipped model) to ONNX for CPU inference with ONNX Runtime."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--out", help="output .onnx file or folder (default: next to the checkpoint)")
    parser.add_argument("--int8", action="store_true", help="also write a dynamically int8-quantized copy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.infer.export import export_onnx

    path = export_onnx(args.model, args.out, quantize=args.int8)
    print(f"onnx: {path}")
    if args.int8:
        print(f"int8: {path.with_name(path.stem + '.int8.onnx')}")
    return 0
