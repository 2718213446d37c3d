"""pneumo: pneumonia detection in pediatric chest X-rays."""

from __future__ import annotations

__version__ = "0.1.0"
