"""The ``pneumo`` command. Subcommands live in ``pneumo.commands.<name>``: each parses, calls the library, prints."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import signal
import sys
import threading
import warnings

from pneumo import LOG_FORMAT, __version__
from pneumo.allocator import hold_freed_memory
from pneumo.argparsing import HelpFormatter, Parser, subparser
from pneumo.errors import OneLineArgs, PneumoError, one_line

# name -> (module, one-line help); modules are imported only when their subcommand runs or builds its parser.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("pneumo.commands.data", "dataset: scan, split, cache, report, download"),
    "train": ("pneumo.commands.train", "train a model from a preset (+ overrides), then evaluate it"),
    "evaluate": ("pneumo.commands.evaluate", ("evaluate a model: the official test split, or any labelled folder "
                                              "(external validation)")),
    "operating-point": ("pneumo.commands.operating_point", ("choose a new operating point on val: writes a NEW "
                                                            "model folder")),
    "compare": ("pneumo.commands.compare", "leaderboard (markdown + HTML) across runs"),
    "explain": ("pneumo.commands.explain", "Grad-CAM / occlusion maps for images"),
    "predict": ("pneumo.commands.predict", "predict JPEG/PNG/DICOM files, folders or globs"),
    "export": ("pneumo.commands.export", "export a model to ONNX"),
    "ood": ("pneumo.commands.ood", "out-of-distribution statistics: fit them for a run (--model)"),
    "site": ("pneumo.commands.site", "check a new site's unlabelled images for a shift from the training data"),
    "serve": ("pneumo.commands.serve", "web service and page (FastAPI)"),
    "adapt": ("pneumo.commands.adapt", "adapt a model to a new site's labelled images: writes a NEW model folder"),
    "model-card": ("pneumo.commands.model_card", "print a model's card (the shipped model by default)"),
}
# Commands that run a model over batches keep the memory freed tensors leave in the process (`pneumo.allocator`):
# glibc would hand it back and the kernel zero-fill it again for every batch. `train` follows `train.hold_memory`;
# `serve`, a long-lived process, gives memory back.
HOLD_MEMORY = ("evaluate", "operating-point", "explain", "predict", "export", "ood", "site", "adapt")
# Flag conventions: --model is a trained model everywhere (run folder, checkpoint, ensemble folder; default, or
# "default": the shipped model), --arch an architecture (train); --dataset the training dataset (folder or zip); --data
# labelled or input images (a folder or CSV); --threshold-policy a threshold policy; --out an output FOLDER (train's:
# the folder holding its runs); --output a FILE; --seed a command's own draw (train: training; --split-seed the split).


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pneumo",
        description="Pneumonia detection in pediatric chest X-rays: data, training, honest evaluation, "
        "explanations, prediction, export and a web service. Research use only, not a medical device.",
        epilog="examples:\n  pneumo predict xrays/ --output predictions.csv\n"
        "  pneumo evaluate --data hospital_xrays/ --out validation   # the shipped model on your labelled images\n"
        "  pneumo COMMAND --help",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"pneumo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        mod.add_parser(subparser(sub, name, help=help_text, examples=getattr(mod, "EXAMPLES", "")))
    return parser


class _QuietPydicom(logging.Filter):
    """pydicom's warnings about a malformed file (which echo its bytes) are left out; its errors are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("pydicom") and record.levelno < logging.ERROR)


def command_name(args: argparse.Namespace) -> str:
    """``pneumo``, ``pneumo train`` or, for a command with actions, ``pneumo data download``: as argparse names it
    in its own usage errors."""
    command = getattr(args, "command", None)
    action = getattr(args, f"{command}_command", None) if command else None
    return " ".join(part for part in ("pneumo", command, action) if part)


# spellings of older versions (no aliases before 1.0): named with today's, so a script's error says what to write
RENAMED = {"--out-dir": "--out", "--val": "--data", "--val-data": "--data", "--policy": "--threshold-policy"}
RENAMED_IN = {"pneumo train": {"--model": "--arch"}, "pneumo predict": {"--out": "--output"}}


def _flags_of(parser: argparse.ArgumentParser, where: str) -> set[str]:
    """The option strings of the (sub)command ``where`` names (``pneumo data cache``)."""
    for name in where.split()[1:]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return set(parser._option_string_actions)


def renamed_hint(parser: argparse.ArgumentParser, where: str, extra: list[str]) -> str:
    """``" (renamed: --val is --data now)"`` for the older spellings among ``extra`` whose new name the command has; a
    bare model path given to evaluate or export is ``--model`` now (an upgrade review)."""
    table, flags = {**RENAMED, **RENAMED_IN.get(where, {})}, _flags_of(parser, where)
    said = [f"{old} is {table[old]} now" for old in dict.fromkeys(a.split("=", 1)[0] for a in extra)
            if old in table and table[old] in flags]
    if where in ("pneumo evaluate", "pneumo export") and extra and not extra[0].startswith("-"):
        said.append("a model is given with --model")
    return f" (renamed: {'; '.join(said)})" if said else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    where = command_name(args)
    if extra:  # named with the command they were given to (argparse said "pneumo: error: unrecognized arguments")
        parser.exit(2, f"{where}: error: unrecognized arguments: {one_line(' '.join(extra))}"
                       f"{renamed_hint(parser, where, extra)}\n")
    args.command_line = shlex.join(["pneumo", *(sys.argv[1:] if argv is None else argv)])  # recorded by train
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:  # names and tags from a hospital's data stay one line each
        if not any(isinstance(f, OneLineArgs) for f in handler.filters):
            handler.addFilter(OneLineArgs())
    if not args.verbose:  # a malformed DICOM is one line (InputError), not pydicom's warnings echoing its bytes first
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        for handler in logging.getLogger().handlers:  # (pydicom sets its logger's level when it is imported)
            if not any(isinstance(f, _QuietPydicom) for f in handler.filters):
                handler.addFilter(_QuietPydicom())
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in HOLD_MEMORY:
        hold_freed_memory()
    # SIGTERM unwinds like Ctrl-C (not for serve: uvicorn lets requests in flight finish)
    catch = args.command != "serve" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if catch else None
    try:
        return int(args.func(args) or 0)
    except PneumoError as exc:
        print(f"{where}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{where}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a read-only or full disk, a cache path that is a file: the system's reason, one line
        print(f"{where}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop): unwinds as Ctrl-C does, so partial outputs and temp files are removed."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
