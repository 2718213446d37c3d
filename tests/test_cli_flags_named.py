"""Every ``--flag`` that a message of the CLI's library code or commands names is an option of some pneumo command:
an error that says "pass --val-data" when no command has it sends the user nowhere."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from pneumo.cli import build_parser

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumo"
SCANNED = ("infer", "evaluate", "commands")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` and of every subcommand under it, nested ones included."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= options(sub)
    return found


def named_flags(root: Path) -> set[tuple[str, str]]:
    """(``--flag``, ``file:line``) for every flag written in a string literal under ``root``."""
    found = set()
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found |= {(flag, f"{path.relative_to(root.parent)}:{node.lineno}")
                          for flag in FLAG.findall(node.value)}
    return found


def test_every_flag_a_message_names_exists() -> None:
    real = options(build_parser())
    named = {pair for package in SCANNED for pair in named_flags(PACKAGE / package)}
    assert len({flag for flag, _ in named}) > 10  # the scan sees the messages
    unknown = sorted(f"{where} names {flag}" for flag, where in named if flag not in real)
    assert not unknown, "no pneumo command has these options:\n" + "\n".join(unknown)


def test_the_scan_finds_a_flag_in_an_f_string(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text('x = 1\nraise ValueError(f"{x}: pass --val-data DATASET or --data DIR")\n')
    assert {flag for flag, _ in named_flags(tmp_path)} == {"--val-data", "--data"}
