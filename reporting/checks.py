"""The budget check: every domain's cost in the metric(s) its budget caps must be at or below
the budget."""

from __future__ import annotations

from collections.abc import Iterable

from reporting.inputs import Run

__all__ = ["BUDGET_TOLERANCE", "METRIC_FIELDS", "check_budget", "check_runs"]

BUDGET_TOLERANCE = 1e-9
METRIC_FIELDS = {"params": ("params",), "macs": ("macs",), "both": ("params", "macs")}


def check_budget(run: Run) -> tuple[str, list[str]]:
    """``ok``/``over``/``unchecked`` and the notes: every domain's cost in the metric(s) its
    budget caps must be at or below the budget."""
    if run.budget is None:
        return "unchecked", ["no budget recorded"]
    fields = METRIC_FIELDS.get(run.budget_metric or "both", ("params", "macs"))
    notes: list[str] = []
    maxima: list[str] = []
    over = False
    for metric in fields:
        fractions = run.params_fraction if metric == "params" else run.macs_fraction
        missing = [n for n in run.domains if fractions.get(n) is None]
        if missing:
            notes.append(f"no {metric}_fraction for {', '.join(missing)}")
        values = {n: v for n in run.domains if (v := fractions.get(n)) is not None}
        if values:
            maxima.append(f"max {metric} {max(values.values()):.4f}")
        for name, value in values.items():
            if value > run.budget + BUDGET_TOLERANCE:
                over = True
                notes.append(f"{name} {metric}_fraction {value:.4f} > budget {run.budget:g}")
    if over:
        return "over", notes
    if not maxima:
        return "unchecked", notes or ["no domain costs recorded"]
    return "ok", [f"every domain within budget {run.budget:g} ({', '.join(maxima)})", *notes]


def check_runs(runs: Iterable[Run]) -> None:
    """Fill in every run's ``budget_status`` and ``budget_notes``."""
    for run in runs:
        run.budget_status, run.budget_notes = check_budget(run)
