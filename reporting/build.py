"""``build_report``: turn one or more runs into ``report.md`` + ``report.json`` + PNG plots.

An input is an artifact folder (holds ``manifest.json``), any folder searched recursively for
``manifest.json`` files (a model store, ``runs/grid``), a ``manifest.json`` file itself, or a
results JSON written by ``bench/budget_grid.py`` (its ``grid`` rows point at artifact folders;
where an artifact is gone the row's own numbers are used and its channel picture is skipped;
its ``backbone`` and ``reference_finetuned_alone`` become reference lines).

Only manifests are read (no weights, no hash check). Optional fields that a manifest lacks are
shown as missing and whatever cannot be plotted is skipped. Plots:

* ``accuracy_vs_budget.png``: mean test accuracy vs budget, one line per sharing variant;
* ``cost_vs_budget.png``: compact params / backbone params and domain MACs / backbone MACs
  (mean, bars min..max) vs budget, with the single-domain backbone (1.0) and the budget line;
* ``channel_usage_<model>_<version>.png``: per block, which backbone channels each domain uses
  and which survive pruning (all runs, or those at the default budget when there are many).

Every run is also checked against its budget: a domain whose ``params_fraction`` or
``macs_fraction`` (the ones its ``budget_metric`` caps) exceeds the budget is reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from multidomain.files import write_json, write_text
from reporting.channels import ChannelUsage, channel_usage
from reporting.checks import check_runs
from reporting.errors import ReportError
from reporting.inputs import Run, collect_runs
from reporting.plots import ACCURACY_PLOT, COST_PLOT, plot_accuracy, plot_channel_usage, plot_costs
from reporting.render import reference_row, render_markdown, run_row

__all__ = ["DEFAULT_BUDGET", "MAX_CHANNEL_PLOTS", "build_report"]

DEFAULT_BUDGET = 0.5
MAX_CHANNEL_PLOTS = 6


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def _choose_channel_runs(runs: Sequence[Run], limit: int) -> list[tuple[Run, ChannelUsage]]:
    candidates = []
    for run in runs:
        usage = channel_usage(run.manifest) if run.manifest is not None else None
        if usage is not None:
            candidates.append((run, usage))
    if len(candidates) <= limit:
        return candidates
    default = [
        c
        for c in candidates
        if c[0].budget is not None and abs(c[0].budget - DEFAULT_BUDGET) < 1e-9
    ]
    return (default or candidates)[:limit]


def build_report(
    inputs: Sequence[Path], out_dir: Path, max_channel_plots: int = MAX_CHANNEL_PLOTS
) -> dict[str, Any]:
    """Read the runs, write ``out_dir/report.{md,json}`` and the plots; returns the JSON."""
    if max_channel_plots < 0:
        raise ReportError(f"max channel plots must be >= 0, got {max_channel_plots}")
    runs, references = collect_runs(inputs)
    check_runs(runs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    plots: dict[str, Any] = {"accuracy_vs_budget": None, "cost_vs_budget": None}
    if plot_accuracy(runs, references, out_dir / ACCURACY_PLOT):
        plots["accuracy_vs_budget"] = ACCURACY_PLOT
    if plot_costs(runs, out_dir / COST_PLOT):
        plots["cost_vs_budget"] = COST_PLOT
    names: set[str] = set()
    channel_plots = []
    for run, usage in _choose_channel_runs(runs, max_channel_plots):
        stem = _file_stem(f"channel_usage_{run.model_name}_{run.version}")
        name, k = f"{stem}.png", 2
        while name in names:
            name, k = f"{stem}-{k}.png", k + 1
        names.add(name)
        plot_channel_usage(run, usage, out_dir / name)
        run.channel_plot = name
        channel_plots.append(name)
    plots["channel_usage"] = channel_plots

    report = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(p) for p in inputs],
        "rows": [run_row(r) for r in runs],
        "references": [reference_row(r) for r in references],
        "plots": plots,
        "budget_check": {
            status: sum(r.budget_status == status for r in runs)
            for status in ("ok", "over", "unchecked")
        },
    }
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", render_markdown(report))
    return report
