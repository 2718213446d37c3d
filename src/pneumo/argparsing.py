"""The house style of every `pneumo` parser: defaults shown, an ``examples:`` epilog, one spelling per flag (no
deprecated aliases before 1.0). (The commands layer: the CLI and the commands use it.)"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written and appends ``(default: X)`` to options that have a default
    and do not state it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default in ([], ""):  # 0 is one
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, ``pneumo <command>: error: ...`` and exit 2, as every other error of
    the CLI (argparse printed the usage block first); ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def subparser(sub, name: str, *, help: str, examples: str = "") -> argparse.ArgumentParser:
    """A subcommand parser with the house formatter and an ``examples:`` epilog. Flags match only as spelled: no
    abbreviations, so a removed flag that is a prefix of another (``--data`` of ``--dataset``) fails instead of
    silently meaning the other."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) if examples else None
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter,
                            allow_abbrev=False)
    # `pneumo evaluate -v` as well as `pneumo -v evaluate` (a CLI review); unset here unless given
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return parser


def add_dataset_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--dataset DIR``: where a run's training dataset lives now, to rebuild its val fold."""
    parser.add_argument("--dataset", metavar="DIR", help=f"the training dataset, {purpose} (default: the run's, or "
                        "$PNEUMO_DATA)")


def add_schema_flags(parser: Any, defaults: Any, helps: dict[str, str]) -> None:
    """One flag per schema field named in ``helps`` (``--max-queue`` for ``max_queue``), typed and defaulted by the
    schema instance ``defaults``; the schema checks the values when it is built from `schema_values`."""
    for field, help_text in helps.items():
        default = getattr(defaults, field)
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default,
                            help=f"{help_text} (default {default:g})")


def schema_values(args: argparse.Namespace, helps: dict[str, str]) -> dict[str, Any]:
    """The values of the flags `add_schema_flags` added, by field name."""
    return {field: getattr(args, field) for field in helps}
