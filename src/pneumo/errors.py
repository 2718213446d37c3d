"""Exceptions raised by the library. The CLI and the service turn them into one-line messages / 4xx responses."""

from __future__ import annotations

import logging
import re


class PneumoError(Exception):
    """Base class: the message is one actionable line meant for the user."""


class DataError(PneumoError):
    """A dataset folder, manifest, split or cache is missing or inconsistent."""


class LeakageError(DataError):
    """A patient or an exact duplicate straddles two splits."""


class ConfigError(PneumoError):
    """A configuration is impossible or refers to something that does not exist."""


class ModelError(PneumoError):
    """A model name, weights file or checkpoint cannot be used."""


class IntegrityError(ModelError):
    """A weights file or a model export does not match its recorded SHA-256 (corrupt or modified): never used."""


class InputError(PneumoError):
    """An input image (JPEG/PNG/DICOM) cannot be read or is not acceptable."""


class NotAssessed(InputError):
    """A readable DICOM object the model does not assess: a lateral film, a FOR PROCESSING image, an object without
    pixel data (a report, a presentation state), a multi-frame object, a screen capture. A PACS export holds them
    beside the frontal films: `pneumo predict` lists them as refused, not as errors that fail the run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # what the object is, the message's words before its details ("a lateral film", "a FOR PROCESSING image"):
        # pneumo's own words, never a file's content, so an audit line or a count may carry them (kept when a caller
        # re-raises it with the file's name in front)
        self.kind = re.split(r" \(|:|,", message, maxsplit=1)[0]


def one_line(text: str) -> str:
    """``text`` safe to print as one line of a terminal or a log: control characters (newline, carriage return, escape
    sequences, Unicode line separators) and undecodable bytes of a file name are written as escapes (``\\n``), so a
    file name cannot add a line (a forged ``pneumo predict: ...``) or move the cursor."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)


class OneLineArgs(logging.Filter):
    """A log record's text arguments through `one_line`: a file name, a CSV value or a DICOM tag logged with ``%s``
    cannot add a forged line or send escape sequences to the operator's terminal (the message templates are ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(one_line(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: one_line(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True
