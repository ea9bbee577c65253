"""The report as JSON rows and as markdown; ``render_table`` is the one table of runs, used by
the report and by ``bench/budget_grid.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reporting.inputs import Reference, Run
from reporting.nested import TOLERANCE_POINTS
from reporting.seeds import Setting, spread, spread_json

__all__ = [
    "SETTINGS_LEGEND",
    "TABLE_LEGEND",
    "reference_row",
    "render_markdown",
    "render_nested",
    "render_nested_runs",
    "render_references",
    "render_seed_sections",
    "render_settings",
    "render_table",
    "run_row",
    "setting_row",
]


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
        "protocol": run.protocol,
        "seed": run.seed,
        "s_score": run.s_score,
        "s_per_params": run.s_per_params,
        "s_per_macs": run.s_per_macs,
        "counted_from": None
        if run.counted is None
        else {"weights": run.counted.weights_from, "backbone": run.counted.backbone_from},
        "count_notes": run.count_notes,
        "budget_check": run.budget_status,
        "budget_notes": run.budget_notes,
        "channel_usage_plot": run.channel_plot,
        "nested": run.nested,
        "levels": [
            {
                "budget": level.budget,
                "mean_test_accuracy": level.mean_test_accuracy,
                "test_accuracy": level.test_accuracy,
            }
            for level in run.levels
        ],
        "weight_bytes": run.weight_bytes,
    }


def reference_row(reference: Reference) -> dict[str, Any]:
    return {
        "label": reference.label,
        "kind": reference.kind,
        "protocol": reference.protocol,
        "seed": reference.seed,
        "test_accuracy": reference.test_accuracy,
        "mean_test_accuracy": reference.mean_test_accuracy,
        "params_fraction": reference.params_fraction,
        "max_macs_fraction": reference.max_macs_fraction,
        "counted_from": reference.counted_from,
        "source": reference.source,
    }


def setting_row(setting: Setting, domains: list[str]) -> dict[str, Any]:
    """One setting over its seeds: every figure as mean, std and count."""
    return {
        "protocol": setting.protocol,
        "budget": setting.budget,
        "domain_budgets": dict(setting.own_budgets),
        "budget_metric": setting.budget_metric,
        "sharing": setting.sharing,
        "seeds": setting.seeds,
        "test_accuracy": {d: spread_json(setting.domain_accuracy(d)) for d in domains},
        **{
            name: spread_json(setting.figure(name))
            for name in (
                "mean_test_accuracy",
                "compact_params_fraction",
                "max_domain_params_fraction",
                "max_domain_macs_fraction",
                "s_score",
                "s_per_params",
                "s_per_macs",
            )
        },
    }


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


TABLE_LEGEND = (
    "Accuracy is test top-1. Every ratio is counted from the weights when the report is made "
    "(tensor shapes of the artifact and of its backbone). `compact/backbone params` counts "
    "everything needed to serve all domains (compact shared convolutions + every domain's BN "
    "and head) over the single-domain backbone. `domain MACs` and `domain params` are each "
    "domain's subnetwork without its head (what the budget caps; the head is outside it) over "
    "the backbone (max over domains); `domain time` its served forward time over the unpruned "
    "backbone's, measured at export at the largest batch timed (predicted by the latency table "
    "in brackets, if training had one). `S`: the Visual Decathlon S-score against each domain "
    "fine-tuned alone in the same run and seed (docs/method.md). A budget `b (x c)` gives "
    "domain `x` its own budget `c`. `–`: not recorded or not countable."
)

SETTINGS_LEGEND = (
    "Each setting's runs over its training seeds (one backbone per protocol): mean ± sample "
    "std. `S/params` and `S/MACs`: the S-score per backbone's worth of parameters (all domains "
    "served) and of MACs (mean domain). The text below calls a difference real only when the "
    "means are further apart than the sum of the two spreads."
)


def render_table(
    rows: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The markdown table of runs (``run_row``) and reference lines (``reference_row``): one
    accuracy column per domain, then cost, training time and the budget check."""
    names = list(dict.fromkeys(n for row in rows for n in row["test_accuracy"]))
    lines = [
        "| protocol | seed | budget | metric | sharing | run | "
        + "".join(f"{n} | " for n in names)
        + "mean acc | compact/backbone params | max domain params | max domain MACs "
        "| max domain time | S | train s | budget check |",
        "|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        accuracy = "".join(f"{_fmt(row['test_accuracy'].get(n))} | " for n in names)
        budget = "–" if row["budget"] is None else f"{row['budget']:g}"
        own = row.get("domain_budgets") or {}
        if own:
            budget += " (" + ", ".join(f"{n} {b:g}" for n, b in own.items()) + ")"
        if row.get("nested"):
            budget = "nested " + ", ".join(f"{level['budget']:g}" for level in row["levels"])
        wall = "–" if row["wall_time_s"] is None else f"{row['wall_time_s']:.0f}"
        time = _fmt(row.get("max_domain_time_fraction"))
        if row.get("max_domain_predicted_time_fraction") is not None:
            time += f" ({_fmt(row['max_domain_predicted_time_fraction'])})"
        if row.get("time_batch") is not None and time != "–":
            time += f" @{row['time_batch']}"
        seed = "–" if row.get("seed") is None else str(row["seed"])
        lines.append(
            f"| {row.get('protocol') or '–'} | {seed} | {budget} | {row['budget_metric'] or '–'} "
            f"| {row['sharing']} | {row['model_name']}/{row['version']} | {accuracy}"
            f"{_fmt(row['mean_test_accuracy'], 4)} | {_fmt(row['compact_params_fraction'])} | "
            f"{_fmt(row['max_domain_params_fraction'])} | "
            f"{_fmt(row['max_domain_macs_fraction'])} | {time} | {_fmt(row.get('s_score'), 0)} "
            f"| {wall} | {'**OVER**' if row['budget_check'] == 'over' else row['budget_check']} |"
        )
    for reference in references:
        seed = "–" if reference.get("seed") is None else str(reference["seed"])
        accuracy = "".join(
            f"{_fmt((reference.get('test_accuracy') or {}).get(n))} | " for n in names
        )
        lines.append(
            f"| {reference.get('protocol') or '–'} | {seed} | – | – | – | {reference['label']} | "
            + accuracy
            + f"{_fmt(reference['mean_test_accuracy'], 4)} | "
            f"{_fmt(reference.get('params_fraction'))} | – | "
            f"{_fmt(reference.get('max_macs_fraction'))} | – | – | – | – |"
        )
    return lines


def _cell(value: Mapping[str, Any] | None, digits: int = 3, sign: str = "") -> str:
    """``mean ± std`` (``mean`` alone with one value); ``sign="+"`` signs the mean."""
    if value is None:
        return "–"
    text = f"{value['mean']:{sign}.{digits}f}"
    return text if value["std"] is None else f"{text} ± {value['std']:.{digits}f}"


def render_settings(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table of settings (``setting_row``): mean ± std over seeds."""
    names = list(dict.fromkeys(n for row in settings for n in row["test_accuracy"]))
    lines = [
        "| protocol | budget | metric | sharing | seeds | "
        + "".join(f"{n} | " for n in names)
        + "mean acc | compact/backbone params | max domain params | max domain MACs | S "
        "| S/params | S/MACs |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|---|",
    ]
    for row in settings:
        budget = "–" if row["budget"] is None else f"{row['budget']:g}"
        budget += "".join(f", {n} {b:g}" for n, b in row["domain_budgets"].items())
        seeds = ",".join("?" if s is None else str(s) for s in row["seeds"])
        lines.append(
            f"| {row['protocol'] or '–'} | {budget} | {row['budget_metric'] or '–'} | "
            f"{row['sharing']} | {seeds} | "
            + "".join(f"{_cell(row['test_accuracy'].get(n))} | " for n in names)
            + f"{_cell(row['mean_test_accuracy'], 4)} | {_cell(row['compact_params_fraction'])} "
            f"| {_cell(row['max_domain_params_fraction'])} | "
            f"{_cell(row['max_domain_macs_fraction'])} | {_cell(row['s_score'], 0)} | "
            f"{_cell(row['s_per_params'], 0)} | {_cell(row['s_per_macs'], 0)} |"
        )
    return lines


def render_references(references: Sequence[Mapping[str, Any]]) -> list[str]:
    """The reference rows over seeds: each protocol's backbone, each domain fine-tuned alone."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for reference in references:
        key = (str(reference.get("protocol") or "–"), str(reference["label"]))
        groups.setdefault(key, []).append(reference)
    lines = [
        "| protocol | reference | seeds | mean acc | params to serve its domains / backbone "
        "| max domain MACs / backbone |",
        "|---|---|---|---|---|---|",
    ]
    for (protocol, label), group in groups.items():
        seeds = ",".join(str(r["seed"]) for r in group if r.get("seed") is not None) or "–"
        cells = [
            _cell(spread_json(spread(r.get(field) for r in group)))
            for field in ("mean_test_accuracy", "params_fraction", "max_macs_fraction")
        ]
        lines.append(f"| {protocol} | {label} | {seeds} | " + " | ".join(cells) + " |")
    return lines


NESTED_LEGEND = (
    "A nested run trains every budget level in one run and serves them from one artifact "
    "(`--budgets`, `--nested`). Each level is compared with the runs trained alone at its budget "
    "of the same protocol, seed, sharing variant and budget metric: mean test accuracy mean ± "
    "std over seeds (alone: over the seeds that have both), the difference in points as mean ± "
    f"std of the per-seed differences, and whether its mean is within {TOLERANCE_POINTS:g} "
    "points (the target). Level state: `private` levels train their own BatchNorm affines and "
    "heads, `shared` levels share the largest level's; nested steps: the nested run's (the runs "
    "trained alone have the grid's). Sizes: every tensor of the weights "
    "files, counted from their shapes at 4 bytes a value; the nested artifact against the "
    "artifacts trained alone at its levels' budgets (same protocol, seed, sharing) summed. "
    "Nested runs are not part of the settings above."
)


def _bytes(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def render_nested(
    levels: Sequence[Mapping[str, Any]], sizes: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The nested section: each level over seeds against the runs trained alone
    (``reporting.nested.nested_levels``), and each nested artifact's size against the separate
    artifacts' summed (``nested_sizes``)."""
    lines = [
        "## Nested levels vs trained alone",
        "",
        NESTED_LEGEND,
        "",
        "| protocol | sharing | metric | level state | nested steps | level budget | seeds "
        f"| nested mean acc | alone mean acc | nested - alone (points) | within "
        f"{TOLERANCE_POINTS:g} points |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        seeds = ",".join("?" if s is None else str(s) for s in level["seeds"])
        within = level["within_tolerance"]
        lines.append(
            f"| {level['protocol'] or '–'} | {level['sharing']} | {level['budget_metric'] or '–'} "
            f"| {level.get('level_state') or '–'} | {level.get('steps') or '–'} "
            f"| {level['budget']:g} | {seeds} "
            f"| {_cell(level['nested_mean_test_accuracy'], 4)} "
            f"| {_cell(level['alone_mean_test_accuracy'], 4)} "
            f"| {_cell(level['difference_points'], 2, sign='+')} "
            f"| {'–' if within is None else ('yes' if within else '**no**')} |"
        )
    lines += [
        "",
        "| protocol | sharing | seed | nested run | nested weight bytes | alone runs replaced "
        "| their weight bytes summed | nested / summed | smaller |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        replaced = ", ".join(f"{b}: `{label}`" for b, label in size["alone_runs"].items())
        replaced += "".join(f"; missing {m}" for m in size["missing"])
        smaller = size["smaller"]
        lines.append(
            f"| {size['protocol'] or '–'} | {size['sharing']} | "
            f"{'–' if size['seed'] is None else size['seed']} | `{size['run']}` | "
            f"{_bytes(size['nested_weight_bytes'])} | {replaced or '–'} | "
            f"{_bytes(size['alone_weight_bytes_sum'])} | {_fmt(size['ratio'])} | "
            f"{'–' if smaller is None else ('yes' if smaller else '**no**')} |"
        )
    return lines


def render_nested_runs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every level of every nested run next to the alone run(s) it is compared with."""
    lines = [
        "| nested run | protocol | seed | sharing | budget | nested | alone | alone runs "
        "| nested - alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        alone = ", ".join(f"`{label}`" for label in row["alone_runs"]) or "none"
        lines.append(
            f"| `{row['run']}` | {row['protocol'] or '–'} | "
            f"{'–' if row['seed'] is None else row['seed']} | {row['sharing']} | "
            f"{row['budget']:g} | {_fmt(row['nested_mean_test_accuracy'], 4)} | "
            f"{_fmt(row['alone_mean_test_accuracy'], 4)} | {alone} | "
            f"{_fmt(row['difference'], 4)} |"
        )
    return lines


def render_seed_sections(
    settings: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    finding_lines: Sequence[str],
    headline_lines: Sequence[str],
) -> list[str]:
    """The settings over seeds, the reference rows, the rule's findings and the headline."""
    return [
        "## Settings over seeds",
        "",
        SETTINGS_LEGEND,
        "",
        *render_settings(settings),
        "",
        *render_references(references),
        "",
        "## What differs (by the rule)",
        "",
        *([f"- {line}" for line in finding_lines] or ["- nothing to compare"]),
        "",
        "## Headline claim",
        "",
        *([f"- {line}" for line in headline_lines] or ["- no run at the claim's budget"]),
        "",
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    rows: list[Mapping[str, Any]] = report["rows"]
    lines = [
        "# Budget-aware multi-domain pruning: report",
        "",
        f"Created {report['created_at']} from: " + ", ".join(f"`{p}`" for p in report["inputs"]),
        "",
    ]
    if report.get("settings"):
        lines += [
            *render_seed_sections(
                report["settings"], report["references"], report["findings"], report["headline"]
            ),
            "## Every run",
            "",
        ]
    lines += [
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
    if report.get("nested"):
        lines += ["", *render_nested(report["nested_levels"], report["nested_sizes"])]
        lines += ["", *render_nested_runs(report["nested"])]
    plots = report["plots"]
    lines += ["", "## Figures", ""]
    for key, caption in (
        ("accuracy_vs_budget", "Mean test accuracy vs budget"),
        ("cost_vs_budget", "Params and MACs vs budget"),
        ("score_vs_params", "Accuracy and S-score vs params"),
    ):
        if plots.get(key):
            lines += [f"### {caption}", "", f"![{caption}]({plots[key]})", ""]
        else:
            lines += [f"### {caption}", "", "Not drawn: no run records both.", ""]
    if plots.get("nested_accuracy_vs_budget"):
        caption = "Nested levels vs models trained alone"
        lines += [f"### {caption}", "", f"![{caption}]({plots['nested_accuracy_vs_budget']})", ""]
    if plots.get("training_history"):
        caption = "Training history"
        lines += [f"### {caption}", "", f"![{caption}]({plots['training_history']})", ""]
    if plots["channel_usage"]:
        lines += ["### Channel usage (which channels each domain uses, which survive pruning)", ""]
        for row in rows:
            if row["channel_usage_plot"]:
                label = f"{row['model_name']}/{row['version']}"
                lines += [f"![channel usage {label}]({row['channel_usage_plot']})", ""]
    return "\n".join(lines).rstrip() + "\n"
