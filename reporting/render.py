"""The report as JSON rows and as markdown; ``render_table`` is the one table of runs, used by
the report and by ``bench/budget_grid.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reporting.inputs import Reference, Run

__all__ = ["TABLE_LEGEND", "reference_row", "render_markdown", "render_table", "run_row"]


def _largest(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return max(present) if present else None


def run_row(run: Run) -> dict[str, Any]:
    macs = [v for v in run.macs_fraction.values() if v is not None]
    params = [v for v in run.params_fraction.values() if v is not None]
    own = {n: b for n, b in run.domain_budgets.items() if b is not None and b != run.budget}
    return {
        "model_name": run.model_name,
        "version": run.version,
        "source": run.source,
        "budget": run.budget,
        "domain_budgets": own,
        "budget_metric": run.budget_metric,
        "sharing": run.sharing,
        "sharing_weight": run.sharing_weight,
        "learnable_sharing_weight": run.learnable_weight,
        "mean_test_accuracy": run.mean_test_accuracy,
        "test_accuracy": run.test_accuracy,
        "compact_params_fraction": run.compact_params_fraction,
        "domain_params_fraction": run.params_fraction,
        "domain_macs_fraction": run.macs_fraction,
        "max_domain_params_fraction": max(params) if params else None,
        "max_domain_macs_fraction": max(macs) if macs else None,
        "domain_time_fraction": run.time_fraction,
        "domain_predicted_time_fraction": run.predicted_time_fraction,
        "max_domain_time_fraction": _largest(run.time_fraction),
        "max_domain_predicted_time_fraction": _largest(run.predicted_time_fraction),
        "time_batch": run.time_batch,
        "wall_time_s": run.wall_time_s,
        "budget_check": run.budget_status,
        "budget_notes": run.budget_notes,
        "channel_usage_plot": run.channel_plot,
    }


def reference_row(reference: Reference) -> dict[str, Any]:
    return {
        "label": reference.label,
        "mean_test_accuracy": reference.mean_test_accuracy,
        "source": reference.source,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


TABLE_LEGEND = (
    "Accuracy is test top-1. `compact/backbone params` counts everything needed to serve all "
    "domains (compact shared convolutions + every domain's BN and head) over the "
    "single-domain backbone. `domain MACs` and `domain params` are each domain's "
    "subnetwork over the backbone (max over domains); `domain time` its served forward time "
    "over the unpruned backbone's, measured at export at the largest batch timed (predicted "
    "by the latency table in brackets, if training had one). A budget `0.5 (x 0.3)` gives "
    "domain `x` its own. `–`: not recorded."
)


def render_table(
    rows: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The markdown table of runs (``run_row``) and reference lines (``reference_row``): one
    accuracy column per domain, then cost, training time and the budget check."""
    names = list(dict.fromkeys(n for row in rows for n in row["test_accuracy"]))
    lines = [
        "| budget | metric | sharing | run | "
        + "".join(f"{n} | " for n in names)
        + "mean acc | compact/backbone params | max domain params | max domain MACs "
        "| max domain time | train s | budget check |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|---|",
    ]
    for row in rows:
        accuracy = "".join(f"{_fmt(row['test_accuracy'].get(n))} | " for n in names)
        budget = "–" if row["budget"] is None else f"{row['budget']:g}"
        own = row.get("domain_budgets") or {}
        if own:
            budget += " (" + ", ".join(f"{n} {b:g}" for n, b in own.items()) + ")"
        wall = "–" if row["wall_time_s"] is None else f"{row['wall_time_s']:.0f}"
        time = _fmt(row.get("max_domain_time_fraction"))
        if row.get("max_domain_predicted_time_fraction") is not None:
            time += f" ({_fmt(row['max_domain_predicted_time_fraction'])})"
        if row.get("time_batch") is not None and time != "–":
            time += f" @{row['time_batch']}"
        lines.append(
            f"| {budget} | {row['budget_metric'] or '–'} | {row['sharing']} | "
            f"{row['model_name']}/{row['version']} | {accuracy}"
            f"{_fmt(row['mean_test_accuracy'], 4)} | {_fmt(row['compact_params_fraction'])} | "
            f"{_fmt(row['max_domain_params_fraction'])} | "
            f"{_fmt(row['max_domain_macs_fraction'])} | {time} | {wall} | "
            f"{'**OVER**' if row['budget_check'] == 'over' else row['budget_check']} |"
        )
    for reference in references:
        lines.append(
            f"| – | – | – | {reference['label']} | "
            + "– | " * len(names)
            + f"{reference['mean_test_accuracy']:.4f} | – | – | – | – | – | – |"
        )
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    rows: list[Mapping[str, Any]] = report["rows"]
    lines = [
        "# Budget-aware multi-domain pruning: report",
        "",
        f"Created {report['created_at']} from: " + ", ".join(f"`{p}`" for p in report["inputs"]),
        "",
        TABLE_LEGEND,
        "",
        *render_table(rows, report["references"]),
    ]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["", "## Not found or not recorded", ""]
        lines += [f"- {line}" for line in warnings]
    check = report["budget_check"]
    lines += [
        "",
        "## Budget check",
        "",
        f"Every domain's cost in the metric(s) its budget caps must be at or below the budget: "
        f"{check['ok']} ok, {check['over']} over, {check['unchecked']} unchecked.",
        "",
    ]
    for row in rows:
        status = {"ok": "ok", "over": "**OVER BUDGET**", "unchecked": "not checked"}[
            row["budget_check"]
        ]
        notes = "; ".join(row["budget_notes"])
        lines.append(f"- `{row['model_name']}/{row['version']}`: {status}: {notes}")
    nested = report.get("nested") or []
    if nested:
        lines += [
            "",
            "## Nested levels vs trained alone",
            "",
            "Mean test accuracy of each level of a nested run (one training run, one artifact) "
            "and of the runs trained alone at that budget (the best of them).",
            "",
            "| nested run | budget | nested | alone | nested - alone |",
            "|---|---|---|---|---|",
        ]
        for row in nested:
            nested_accuracy = _fmt(row["nested_mean_test_accuracy"], 4)
            lines.append(
                f"| `{row['run']}` | {row['budget']:g} | {nested_accuracy} "
                f"| {_fmt(row['alone_mean_test_accuracy'], 4)} | {_fmt(row['difference'], 4)} |"
            )
    plots = report["plots"]
    lines += ["", "## Figures", ""]
    for key, caption in (
        ("accuracy_vs_budget", "Mean test accuracy vs budget"),
        ("cost_vs_budget", "Params and MACs vs budget"),
    ):
        if plots.get(key):
            lines += [f"### {caption}", "", f"![{caption}]({plots[key]})", ""]
        else:
            lines += [f"### {caption}", "", "Not drawn: no run records both.", ""]
    if plots.get("nested_accuracy_vs_budget"):
        caption = "Nested levels vs models trained alone"
        lines += [f"### {caption}", "", f"![{caption}]({plots['nested_accuracy_vs_budget']})", ""]
    if plots["channel_usage"]:
        lines += ["### Channel usage (which channels each domain uses, which survive pruning)", ""]
        for row in rows:
            if row["channel_usage_plot"]:
                label = f"{row['model_name']}/{row['version']}"
                lines += [f"![channel usage {label}]({row['channel_usage_plot']})", ""]
    return "\n".join(lines).rstrip() + "\n"
