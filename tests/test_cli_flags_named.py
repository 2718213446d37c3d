"""Every ``--flag`` that a message of the CLI's library code or commands names is an option of some pneumo command:
an error that says "pass --val-data" when no command has it sends the user nowhere. In a command's own module, where
the command is known, the flag must be an option of that command (or of the one the text names: ``pneumo evaluate
--model``)."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from pneumo.cli import SUBCOMMANDS, build_parser

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumo"
SCANNED = ("data", "models", "evaluate", "explain", "infer", "train", "adapt", "serve", "commands")
# other programs' flags that messages and docstrings quote: torchrun, uvicorn, docker, curl
FOREIGN = {"--nproc", "--factory", "--read-only", "--tmpfs", "--data-binary"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MENTION_OR_FLAG = re.compile(r"\bpneumo (?P<command>[a-z][a-z-]*)|(?P<flag>(?<![\w-])--[a-z][a-z0-9-]*)")


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


def texts(path: Path) -> list[tuple[str, int]]:
    """Every string literal of the module with its line; an f-string as one text, ``{}`` for each field."""
    tree, inside, found = ast.parse(path.read_text(encoding="utf-8")), set(), []
    for node in ast.walk(tree):  # breadth first: an f-string comes before its parts
        if isinstance(node, ast.JoinedStr):
            inside |= {id(part) for part in node.values}
            found.append(("".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values), node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside:
            found.append((node.value, node.lineno))
    return found


def flags_by_command(path: Path, own: str) -> set[tuple[str, str, int]]:
    """(command, ``--flag``, line) in a command's module: a flag belongs to the command the text names before it
    (``pneumo evaluate --model``), else to the module's own command."""
    found = set()
    for text, line in texts(path):
        command = own
        for match in MENTION_OR_FLAG.finditer(text):
            if match["command"]:
                command = match["command"] if match["command"] in SUBCOMMANDS else command
            else:
                found.add((command, match["flag"], line))
    return found


def command_options(name: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return options(sub.choices[name])


def test_a_commands_messages_name_its_own_flags() -> None:
    modules = {module.rsplit(".", 1)[1]: name for name, (module, _) in SUBCOMMANDS.items()}
    real = {name: command_options(name) for name in SUBCOMMANDS}
    named = {pair for module, name in modules.items()
             for pair in flags_by_command(PACKAGE / "commands" / f"{module}.py", name)}
    assert {command for command, _, _ in named} >= {"train", "evaluate", "data", "operating-point"}  # it scans
    wrong = sorted(f"commands/{name}:{line} names {flag} for `pneumo {name}`, which has no such option"
                   for name, flag, line in named if flag not in real[name])
    assert not wrong, "\n".join(wrong)


def test_the_command_a_flag_belongs_to_is_the_one_named_before_it(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text('out = "o"\nprint(f"pass --threshold-policy P, then: pneumo evaluate --model {out} '
                                   '--data D")\n')
    assert flags_by_command(tmp_path / "m.py", "operating-point") == {
        ("operating-point", "--threshold-policy", 2), ("evaluate", "--model", 2), ("evaluate", "--data", 2)}


def test_every_flag_a_message_names_exists() -> None:
    real = options(build_parser())
    named = {pair for package in SCANNED for pair in named_flags(PACKAGE / package)}
    assert len({flag for flag, _ in named}) > 10  # the scan sees the messages
    unknown = sorted(f"{where} names {flag}" for flag, where in named if flag not in real | FOREIGN)
    assert not unknown, "no pneumo command has these options:\n" + "\n".join(unknown)


def test_the_scan_finds_a_flag_in_an_f_string(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text('x = 1\nraise ValueError(f"{x}: pass --val-data DATASET or --data DIR")\n')
    assert {flag for flag, _ in named_flags(tmp_path)} == {"--val-data", "--data"}
