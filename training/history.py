"""The compact training history an artifact records (``manifest["training"]["history"]``).

Budget-aware training keeps one row per step; the artifact keeps one every ``every`` steps
(about ``HISTORY_ROWS`` rows) and the last step, as columns (one list per quantity, values
rounded to 4 decimals: a few KB):

* ``step``: steps done at the row;
* ``ce``, ``accuracy``: mean cross-entropy over domains and training-batch accuracy, averaged
  over the steps since the previous row;
* ``sharing_loss``, ``sharing_weight`` (gamma; learned with a learnable weight),
  ``budget_penalty``: at the row's step;
* ``target``: ``{domain: [...]}``, the annealed budget target of each domain;
* ``cost``: ``{metric: {domain: [...]}}``, each domain's cost (fraction of the backbone's) in
  every capped metric, from its switches at the row's step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HISTORY_ROWS", "StepTrace", "compact_history", "history_interval"]

HISTORY_ROWS = 30


@dataclass(frozen=True)
class StepTrace:
    """What budget-aware training adds to a step's row: costs ``[metric][domain]``, targets per
    domain, the sharing loss and weight and the budget penalty."""

    cost: list[list[float]]
    target: list[float]
    sharing_loss: float
    sharing_weight: float
    budget_penalty: float


def history_interval(steps: int, every: int = 0) -> int:
    """``every`` if given, else the interval that keeps about ``HISTORY_ROWS`` rows."""
    return every if every > 0 else max(1, math.ceil(steps / HISTORY_ROWS))


def compact_history(
    rows: Sequence[Mapping[str, float]],
    traces: Sequence[StepTrace],
    domains: Sequence[str],
    metrics: Sequence[str],
    every: int,
) -> dict[str, Any]:
    """Columns of one row every ``every`` steps (and the last) from the loop's per-step ``rows``
    (``ce``, ``acc``) and the matching ``traces``."""
    if len(rows) != len(traces):
        raise ValueError(f"{len(rows)} step rows but {len(traces)} traces")
    out: dict[str, Any] = {
        "every": every,
        "step": [],
        "ce": [],
        "accuracy": [],
        "sharing_loss": [],
        "sharing_weight": [],
        "budget_penalty": [],
        "target": {name: [] for name in domains},
        "cost": {metric: {name: [] for name in domains} for metric in metrics},
    }
    start = 0
    for done in range(1, len(rows) + 1):
        if done % every and done != len(rows):
            continue
        window, trace = rows[start:done], traces[done - 1]
        start = done
        out["step"].append(done)
        out["ce"].append(_round(sum(r["ce"] for r in window) / len(window)))
        out["accuracy"].append(_round(sum(r["acc"] for r in window) / len(window)))
        for key in ("sharing_loss", "sharing_weight", "budget_penalty"):
            out[key].append(_round(getattr(trace, key)))
        for d, name in enumerate(domains):
            out["target"][name].append(_round(trace.target[d]))
            for m, metric in enumerate(metrics):
                out["cost"][metric][name].append(_round(trace.cost[m][d]))
    return out


def _round(value: float) -> float:
    return round(float(value), 4)
