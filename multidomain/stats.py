"""Summary numbers over domains shared by training and reporting (no torch)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["mean"]


def mean(values: Iterable[float | None]) -> float | None:
    """The arithmetic mean, or ``None`` when there are no values or one of them is missing."""
    items = list(values)
    if not items or any(v is None for v in items):
        return None
    return sum(v for v in items if v is not None) / len(items)
