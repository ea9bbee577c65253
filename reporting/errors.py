"""Reporting's error: input that holds no run, or an output folder that cannot be written."""

from __future__ import annotations

__all__ = ["ReportError"]


class ReportError(ValueError):
    """Bad report input or output; the message is one line and names the path."""
