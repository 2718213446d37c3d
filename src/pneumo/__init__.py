"""pneumo: pneumonia detection in pediatric chest X-rays."""

from __future__ import annotations

__version__ = "0.1.0"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the command line's, and each `pneumo serve --workers` process's
