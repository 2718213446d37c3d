"""`pneumo model-card`: print a model's card (the shipped model by default)."""

from __future__ import annotations

import argparse

EXAMPLES = """
pneumo model-card                       # the shipped default model
pneumo model-card --model runs/default  # a run's model
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pneumo.errors import one_line
    from pneumo.infer.card import model_card_text

    # line by line: a value from a site's data (a folder name, a CSV value) cannot send escape sequences
    print("\n".join(one_line(line) for line in model_card_text(args.model).split("\n")), end="")
    return 0
