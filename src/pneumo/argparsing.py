"""The house style of every `pneumo` parser: defaults shown, an ``examples:`` epilog, one spelling per flag (no
deprecated aliases before 1.0). (Core layer: commands and the CLI both use it.)"""

from __future__ import annotations

import argparse


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
    """A subcommand parser with the house formatter and an ``examples:`` epilog. Flags match only as spelled: no
    abbreviations, so a removed flag that is a prefix of another (``--data`` of ``--dataset``) fails instead of
    silently meaning the other."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) if examples else None
    return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter,
                          allow_abbrev=False)


def add_dataset_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--dataset DIR``: where a run's training dataset lives now, to rebuild its val fold."""
    parser.add_argument("--dataset", metavar="DIR", help=f"the training dataset, {purpose} (default: the run's, or "
                        "$PNEUMO_DATA)")
