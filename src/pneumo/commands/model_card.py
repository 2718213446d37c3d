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
    from pneumo.infer.card import model_card_text

    print(model_card_text(args.model), end="")
    return 0
