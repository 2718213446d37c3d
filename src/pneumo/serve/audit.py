"""The service's audit trail: one line per prediction request on the ``pneumo.serve.audit`` logger, matched to the
response by a request id, so that a hospital can tell weeks later which model and operating point gave which result
and whether it was a verdict or a refusal (an audit-trail review: the access log said ``200`` for a verdict and a
refusal alike, and nothing tied a stored result to a log line). No file name, no content, no detail text of the
upload: the id, the model, the threshold and what came of it."""

from __future__ import annotations

import logging
import re
import uuid

log = logging.getLogger("pneumo.serve.audit")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a caller's X-Request-ID kept only if it is such a token


def to_file(path: str) -> None:
    """Write the audit lines to ``path`` alone (appended; reopened when logrotate moves it), not to the service's log
    (an operations review: the trail meant to answer questions weeks later rotated with the noisy application log).

    Raises:
        OSError: the file cannot be opened for appending.
    """
    from logging.handlers import WatchedFileHandler

    from pneumo.serve.http import service_log_formatter

    handler = WatchedFileHandler(path, encoding="utf-8")
    handler.setFormatter(service_log_formatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def detach_files() -> None:
    """Undo `to_file` (the service stops): the audit lines go with the service's log again."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
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
    (`Prediction.refused`)."""
    outcome = "verdict" if body.get("assessed", True) else f"refused:{body.get('refused')}"
    log.info('prediction request=%s client=%s model=%s policy=%s threshold=%.6g p=%.6g label="%s" outcome=%s', rid,
             client, body["model_id"], body.get("threshold_policy"), body["threshold"], body["p_pneumonia"],
             body["label"], outcome)  # (a label may hold a space)


def log_refusal(rid: str, client: str, model_id: str | None, status: int) -> None:
    """``no prediction``: the request ended with ``status`` (the input gate or the decoder: 422; busy: 503; ...)."""
    log.info("no prediction request=%s client=%s model=%s status=%d", rid, client, model_id, status)
