"""The budget check: every domain's cost in the metric(s) its budget caps must be at or below
its budget (a domain may have its own)."""

from __future__ import annotations

from collections.abc import Iterable

from reporting.inputs import Run

__all__ = ["BUDGET_TOLERANCE", "METRIC_FIELDS", "check_budget", "check_runs"]

BUDGET_TOLERANCE = 1e-9
METRIC_FIELDS = {"params": ("params",), "macs": ("macs",), "both": ("params", "macs")}


def check_budget(run: Run) -> tuple[str, list[str]]:
    """``ok``/``over``/``unchecked`` and the notes: every domain's cost in the metric(s) its
    budget caps must be at or below the domain's budget. Params and MACs are the fractions
    counted from the run's weights (``reporting.counts``), never the manifest's; a latency
    budget (``latency@<batch>``, a prediction no weights can recount) is checked on the
    manifest's ``budget_costs``."""
    if run.budget is None and not any(v is not None for v in run.domain_budgets.values()):
        return "unchecked", ["no budget recorded"]
    fields = METRIC_FIELDS.get(run.budget_metric or "both", ("params", "macs"))
    notes: list[str] = []
    worst: dict[str, float] = {}
    over = False
    for name in run.domains:
        budget = run.domain_budgets.get(name, run.budget)
        if budget is None:
            notes.append(f"no budget for {name}")
            continue
        costs: dict[str, float | None]
        if run.budget_metric == "latency":
            recorded = run.budget_costs.get(name, {})
            costs = {k: v for k, v in recorded.items() if k.startswith("latency")}
            costs = costs or {"latency": None}
        else:
            fractions = {"params": run.params_fraction, "macs": run.macs_fraction}
            costs = {f"{metric}_fraction": fractions[metric].get(name) for metric in fields}
        for metric, value in costs.items():
            if value is None:
                notes.append(f"no {metric} cost for {name}")
                continue
            worst[metric] = max(worst.get(metric, value), value)
            if value > budget + BUDGET_TOLERANCE:
                over = True
                notes.append(f"{name} {metric} {value:.4f} > budget {budget:g}")
    if over:
        return "over", notes
    if not worst:
        return "unchecked", notes or ["no domain costs recorded"]
    maxima = ", ".join(f"max {metric} {value:.4f}" for metric, value in worst.items())
    return "ok", [f"every domain within budget {_budgets(run)} ({maxima})", *notes]


def _budgets(run: Run) -> str:
    own = {n: b for n, b in run.domain_budgets.items() if b is not None and b != run.budget}
    text = "–" if run.budget is None else f"{run.budget:g}"
    return text + "".join(f", {n} {b:g}" for n, b in own.items())


def check_runs(runs: Iterable[Run]) -> None:
    """Fill in every run's ``budget_status`` and ``budget_notes``."""
    for run in runs:
        run.budget_status, run.budget_notes = check_budget(run)
