"""pneumo: pneumonia detection in pediatric chest X-rays."""

from __future__ import annotations

__version__ = "0.1.0"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the command line's, and each `pneumo serve --workers` process's
LOG_TIME, LOG_DATEFMT = "%(asctime)s.%(msecs)03dZ", "%Y-%m-%dT%H:%M:%S"  # a service's lines: UTC, ISO 8601 (the
# process sets `logging.Formatter.converter = time.gmtime`; an audit-trail review: local time without a zone)
