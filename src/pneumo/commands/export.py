"""`pneumo export`: a run (or the shipped model) to ONNX for CPU inference with ONNX Runtime."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pneumo.errors import ConfigError

EXAMPLES = """
pneumo export --model runs/default            # runs/default/model.onnx
pneumo export --out exported/                 # the shipped model into exported/default-model.onnx
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: next to the checkpoint; needed for the "
                        "shipped model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from pneumo.evaluate.cautions import operating_point_warning
    from pneumo.infer.export import export_onnx
    from pneumo.models.sidecar import read_meta

    if args.out and args.out.endswith(".onnx"):
        raise ConfigError(f"--out is a folder, got the file name {args.out}: the export is <folder>/<model>.onnx")
    with _only_export(args.out):
        path = export_onnx(args.model, args.out)
        # what the model's records say against deploying it, said where it is packed for deployment (an export audit)
        warning = operating_point_warning(read_meta(path.with_suffix(".json")))
        if warning:
            logging.getLogger(__name__).warning("%s", warning)
        if args.out:  # the folder that gets deployed: with what a port of the preprocessing checks itself against
            from pneumo.infer.conformance import write_conformance

            write_conformance(path.with_suffix(".json"), warning=warning)
    print(f"onnx: {path}")
    for other in sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.stem}.") and p != path):
        print(f"  with {other.name}")
    if (path.parent / "conformance").is_dir():
        print("  with conformance/ (inputs, the model input pneumo makes of each, its outputs: check a port against them)")
    print("outside pneumo: see pneumo's README, 'The export outside pneumo' (preprocessing, threshold scale, checks)")
    return 0


@contextlib.contextmanager
def _only_export(out: str | None) -> Iterator[None]:
    """Hold the ``--out`` folder's lock (``flock`` on the folder itself: nothing left in it) while exporting into it:
    two exports started into one folder at once both checked it empty, then both wrote (two models and one model's
    conformance cases: an audit of machine failures); the second is refused, as it is when the first has finished."""
    if not out:
        yield
        return
    folder = Path(out)
    made = not folder.exists()
    if made:
        folder.mkdir(parents=True)
    if not folder.is_dir():  # a file: `export_onnx` says so
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"--out {folder}: another export is writing into it: wait for it, then export each "
                              "model into a folder of its own") from None
        yield
    finally:
        os.close(handle)
        if made and not any(folder.iterdir()):  # a refused export leaves no folder behind
            folder.rmdir()
