"""The house style of every `pneumo` parser: defaults shown, an ``examples:`` epilog, deprecated spellings that still
work for one release with a warning. (Core layer: commands and the CLI both use it.)"""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written and appends ``(default: X)`` to options that have a default
    and do not state it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text


def subparser(sub, name: str, *, help: str, examples: str = "") -> argparse.ArgumentParser:
    """A subcommand parser with the house formatter and an ``examples:`` epilog."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) if examples else None
    return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)


def deprecated(message: str) -> None:
    """Warn once on stderr that a spelling is deprecated (still works for one release)."""
    print(f"pneumo: warning: {message}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """``--old VALUE`` stores into the new option's dest and warns."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecated(f"{option_string} is deprecated and will be removed in the next release: use {self.new}")
        setattr(namespace, self.dest, values)


def model_option(args: argparse.Namespace) -> str | None:
    """``--model``, or the deprecated positional MODEL (with a warning) of the commands that used to take one."""
    model = args.model
    if getattr(args, "legacy_model", None):
        deprecated("a positional MODEL is deprecated and will be removed in the next release: use --model MODEL")
        model = model or args.legacy_model
    return model


def add_output_csv(parser: argparse.ArgumentParser, help: str) -> None:
    """``--output CSV`` (and its deprecated spelling ``--out``)."""
    parser.add_argument("--output", metavar="CSV", help=help)
    parser.add_argument("--out", dest="output", action=DeprecatedAlias, new="--output CSV")


def add_dataset_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--dataset DIR``: where a run's training dataset lives now, to rebuild its val fold."""
    parser.add_argument("--dataset", metavar="DIR", help=f"the training dataset, {purpose} (default: the run's, or "
                        "$PNEUMO_DATA)")
