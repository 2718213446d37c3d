"""Report pages from Jinja2 templates: one base layout (``base.html.j2`` with the house ``style.css``) extended by the
run/data/leaderboard report (``report.html.j2``) and the explanation contact sheet (``contact_sheet.html.j2``);
one figure style (`pneumo.templates.figures`).

Templates escape every value they print, except the trusted HTML of section bodies and headlines: build those from
`table`, `figure` and `escape`, which escape what they are given. Pages are self-contained (CSS inlined, no script,
no CDN); figures link relative to the page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup
from markupsafe import escape as _markup_escape

__all__ = ["Section", "escape", "figure", "fmt_ci", "fmt_number", "page", "render", "table"]
TEMPLATES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Section:
    """One report section: ``key`` (its anchor), ``title`` and a trusted HTML ``body``."""

    key: str
    title: str
    body: str


# Unicode direction controls shown as their escapes: a file named "bidi\u202egpj.exe.jpeg" displayed as
# "bidigepj.exe.jpg", so a reviewer searched for a file that does not exist.
_BIDI = {ord(ch): f"\\u{ord(ch):04x}" for ch in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"}


def visible(value: object) -> object:
    """Text with its direction controls written as escapes (trusted HTML stays trusted); other values as they are."""
    if isinstance(value, Markup):
        return Markup(str(value).translate(_BIDI))
    return value.translate(_BIDI) if isinstance(value, str) else value


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              finalize=visible)


def render(name: str, **context: object) -> str:
    """Render the template ``name`` (a file in this folder) with ``context``."""
    return environment().get_template(name).render(**context)


def page(title: str, sections: Iterable[Section | tuple[str, str]], *, subtitle: str = "", headline: str = "",
         intro: str = "", stamp: bool = True) -> str:
    """A whole report page: title, subtitle, headline block, contents, the sections in order, the footer.

    Args:
        title: page title.
        sections: `Section`s, or ``(title, trusted html)`` pairs (numbered anchors ``s1``, ``s2`` ...).
        subtitle: one line under the title.
        headline: trusted HTML under the title (cards with the headline numbers).
        intro: trusted HTML before the sections.
        stamp: print the generation time in the footer (off for pages that must be reproducible).
    """
    blocks = [s if isinstance(s, Section) else Section(f"s{i}", s[0], s[1]) for i, s in enumerate(sections, 1)]
    blocks = [{"key": s.key, "title": s.title, "body": Markup(s.body)} for s in blocks]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") if stamp else ""
    return render("report.html.j2", title=title, subtitle=subtitle, headline=Markup(headline), intro=Markup(intro),
                  sections=blocks, stamp=when)


def escape(value: object) -> str:
    """HTML-escape any value's ``str`` (quotes included) for trusted HTML built in Python."""
    return str(_markup_escape(str(value).translate(_BIDI)))


def fmt_number(value: object, digits: int = 3) -> str:
    """``0.912``; ints (or integral CI ends of counts) without decimals; None / nan -> ``n/a``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def fmt_threshold(value: float | None, digits: int = 4) -> str:
    """A threshold with ``digits`` decimals, or 3 significant digits below ``10**-(digits - 1)`` (an adapted model's
    sensitivity threshold can be 2e-05: never shown as 0.0000)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if value == 0 or value >= 10.0 ** -(digits - 1) else f"{value:.3g}"


def fmt_ci(value: object, ci: Sequence | None, digits: int = 3) -> str:
    """``0.912 [0.889, 0.934]``; the interval is left out when missing, and ``[CI n/a]`` when given but undefined (a
    bootstrap interval not shown for a small sample): never a bare number that reads as certain."""
    text = fmt_number(value, digits)
    if ci is None or len(ci) != 2:
        return text
    if any(v is None or not math.isfinite(v) for v in ci):
        return text if text == "n/a" else f"{text} [CI n/a]"
    if isinstance(value, (int, np.integer)):
        return f"{text} [{ci[0]:.0f}, {ci[1]:.0f}]"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _cell(value: object) -> dict[str, object]:
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return {"text": fmt_number(value) if numeric else value, "numeric": numeric}


def table(header: Sequence[object], rows: Iterable[Sequence[object]], *, caption: str | None = None,
          table_id: str = "", total_last: bool = False, row_headers: bool = False) -> str:
    """An HTML table: cells escaped, numbers right-aligned and formatted with `fmt_number`.

    Args:
        header: column titles.
        rows: the cells, row by row.
        caption: a caption above the table.
        table_id: the table's ``id``.
        total_last: the last row is a total (bold).
        row_headers: the first cell of each row is its header.
    """
    macro = environment().get_template("parts.html.j2").module.table
    return str(macro(list(header), [[_cell(v) for v in row] for row in rows], caption, table_id, total_last,
                        row_headers))


def figure(path: str | os.PathLike, caption: str, *, relative_to: str | os.PathLike | None = None) -> str:
    """A captioned figure linking an image; ``relative_to`` (the page's folder) makes the link relative."""
    src = Path(os.path.relpath(path, relative_to)) if relative_to is not None else Path(path)
    return str(environment().get_template("parts.html.j2").module.figure(src.as_posix(), caption))
