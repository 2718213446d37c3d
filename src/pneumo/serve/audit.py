"""The service's audit trail: one line per prediction request on the ``pneumo.serve.audit`` logger, matched to the
response by a request id, so that a hospital can tell weeks later which model and operating point gave which result
and whether it was a verdict or a refusal (an audit-trail review: the access log said ``200`` for a verdict and a
refusal alike, and nothing tied a stored result to a log line). No file name, no content, no detail text of the
upload: the id, the model, the threshold and what came of it."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import uuid
from logging.handlers import WatchedFileHandler

from pneumo import LOG_DATEFMT, LOG_FORMAT, LOG_TIME

log = logging.getLogger("pneumo.serve.audit")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a caller's X-Request-ID kept only if it is such a token


def service_log_formatter() -> logging.Formatter:
    """A service's log lines: the time first, in UTC, ISO 8601 with ``Z`` (sets the process's
    `logging.Formatter.converter`, so uvicorn's formatters, given `LOG_TIME`, write UTC too)."""
    logging.Formatter.converter = time.gmtime
    return logging.Formatter(f"{LOG_TIME} {LOG_FORMAT}", LOG_DATEFMT)


def to_file(path: str) -> None:
    """Write the audit lines to ``path`` alone (appended; reopened when logrotate moves it), not to the service's log
    (an operations review: the trail meant to answer questions weeks later rotated with the noisy application log).

    Raises:
        OSError: the file cannot be opened for appending.
    """
    handler = _Trail(path, encoding="utf-8")
    handler.setFormatter(service_log_formatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class _Trail(WatchedFileHandler):
    """The audit file, flushed line by line; a line that cannot be written (a full disk) is remembered, not printed
    as a traceback per request (`broken`)."""

    error: str | None = None  # why the last line was not written
    _before: str | None = None  # the line before it

    def emit(self, record: logging.LogRecord) -> None:
        self._before, self.error = self.error, None
        try:
            super().emit(record)  # writes and flushes; a failure calls handleError
        except OSError:  # reopening a rotated file is outside logging's own guard
            self.handleError(record)
        if self._before and not self.error:
            logging.getLogger("pneumo.serve").warning("audit log %s written again", self.baseFilename)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        if self._before is None:  # said once, not per request
            logging.getLogger("pneumo.serve").error("audit log %s cannot be written (%s): predictions are refused "
                                                    "until it can", self.baseFilename, reason)
        self.error = f"the audit log cannot be written ({reason}): no verdict is given without its audit line"


def broken() -> str | None:
    """Why the last audit line could not be written, or None (an audit of machine failures: on a full disk the
    service gave verdicts whose audit lines were lost, and stayed ready). Predictions are refused (503) meanwhile;
    the refusal's own audit line is the retry that clears it."""
    return next((h.error for h in log.handlers if isinstance(h, _Trail) and h.error), None)


def detach_files() -> None:
    """Undo `to_file` (the service stops): the audit lines go with the service's log again."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        with contextlib.suppress(OSError):  # a full disk: what the buffer held is lost either way; stop cleanly
            handler.close()
    log.propagate = True


def request_id(header: str | None) -> str:
    """The caller's ``X-Request-ID`` if it is a plain token of at most 64 characters, else a new random one."""
    return header if header and _CLIENT_ID.fullmatch(header) else uuid.uuid4().hex


def ids(request) -> tuple[str, str]:
    """(`request_id` of its ``X-Request-ID``, the client's address): the access line names the client, the audit line
    both, so the two can be joined (an operations review). The address is the proxy's unless uvicorn trusts it
    (``FORWARDED_ALLOW_IPS``)."""
    return request_id(request.headers.get("x-request-id")), request.client.host if request.client else "unknown"


def log_prediction(rid: str, client: str, body: dict) -> None:
    """``prediction``: the answer's model, policy and threshold, P, and the verdict or the kind of refusal
    (`Prediction.refused`).

    Raises:
        HTTPException: 503, the line could not be written (`broken`): the answer is not given.
    """
    outcome = "verdict" if body.get("assessed", True) else f"refused:{body.get('refused')}"
    log.info('prediction request=%s client=%s model=%s policy=%s threshold=%.6g p=%.6g label="%s" outcome=%s', rid,
             client, body["model_id"], body.get("threshold_policy"), body["threshold"], body["p_pneumonia"],
             body["label"], outcome)  # (a label may hold a space)
    if broken():
        from fastapi import HTTPException

        raise HTTPException(503, broken())


def log_refusal(rid: str, client: str, model_id: str | None, status: int, kind: str | None = None) -> None:
    """``no prediction``: the request ended with ``status`` (the input gate or the decoder: 422; busy: 503; ...) and,
    for an image refused, what it is (``refused="a lateral film"``, `NotAssessed.kind`) or ``refused="unreadable"``
    (a DICOM audit: a lateral, a report, a multi-frame object and a corrupt file gave one line)."""
    log.info("no prediction request=%s client=%s model=%s status=%d%s", rid, client, model_id, status,
             f' refused="{kind}"' if kind else "")
