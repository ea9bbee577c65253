"""The mean over domains (``multidomain.stats``)."""

from __future__ import annotations

from multidomain.stats import mean


def test_mean_of_values_and_missing_values() -> None:
    assert mean({"a": 0.5, "b": 0.25, "c": 1.0}.values()) == (0.5 + 0.25 + 1.0) / 3
    assert mean(v for v in (0.1, 0.2)) == (0.1 + 0.2) / 2
    assert mean([0.5, None]) is None
    assert mean([]) is None
