"""The docs name files that exist: every repository path written in README.md, docs/USAGE.md and docs/ARCHITECTURE.md
(``tests/…py``, ``bench/…py``, ``tools/…``, ``src/pneumo/…``) is there, except in ARCHITECTURE's list of what was
removed, which names where it was."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w/.-])((?:tests|bench|tools|src/pneumo|docs)/[\w./-]*\w\.(?:py|md|sh|yaml|jsonl|json|safetensors))")


REMOVED = re.compile(r"^Removed:\n(?:[*  ].*\n)*", re.MULTILINE)  # the bullet list under "Removed:"


def named_paths(text: str) -> set[str]:
    return {match.group(1) for match in PATH.finditer(REMOVED.sub("", text))}


def test_the_pattern_finds_paths_and_skips_other_text() -> None:
    text = ("run `python bench/bench_predict.py --data x` or tests/data/test_decode_fuzz.py; not ../shared/docs/X.md\n"
            "Removed:\n* `bench/bench_int8.py`: gone\n  with `tools/old.sh`\n\nThen `tools/ship_model.py`.\n")
    assert named_paths(text) == {"bench/bench_predict.py", "tests/data/test_decode_fuzz.py", "tools/ship_model.py"}


@pytest.mark.parametrize("doc", ["README.md", "docs/ARCHITECTURE.md", "docs/USAGE.md"])
def test_every_file_a_doc_names_exists(doc: str) -> None:
    missing = sorted(path for path in named_paths((REPO / doc).read_text(encoding="utf-8"))
                     if not (REPO / path).exists())
    assert missing == [], f"{doc} names files that do not exist: {missing}"
