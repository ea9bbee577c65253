"""``build_report``: turn one or more runs into ``report.md`` + ``report.json`` + PNG plots.

An input is an artifact folder (holds ``manifest.json``), any folder searched recursively for
``manifest.json`` files (a model store, ``runs/grid``), a ``manifest.json`` file itself, or a
results JSON written by ``bench/budget_grid.py`` (its ``grid`` rows point at artifact folders;
where an artifact is gone the row's copy of its manifest and of its weights' tensor shapes are
used; its protocols' backbones and ``reference_finetuned_alone`` become reference rows).

Manifests and the safetensors headers of the weights are read (no tensor data, no hash
check). Optional fields that a manifest lacks are shown as missing and whatever cannot be
plotted is skipped. Plots:

* ``accuracy_vs_budget.png``: mean test accuracy vs budget, one line per sharing variant;
* ``cost_vs_budget.png``: compact params / backbone params and domain MACs / backbone MACs
  (mean, bars min..max) vs budget, with the single-domain backbone (1.0) and the budget line;
* ``score_vs_params.png``: accuracy and S-score against compact params (mean ± std over seeds);
* ``channel_usage_<model>_<version>.png``: per block, which backbone channels each domain uses
  and which survive pruning (all runs, or those at the default budget when there are many);
* ``nested_accuracy_vs_budget.png`` (when a run is nested, ``mdprune train --budgets`` or
  ``bench/budget_grid.py --nested``): the nested levels next to the runs trained alone at one
  budget of the same protocol, seeds and sharing (mean ± std over seeds), also as tables with
  the artifacts' sizes (``reporting.nested``). Nested runs are listed with every run but kept
  out of the settings over seeds, the other plots and the headline;
* ``training_history.png`` (when manifests record ``training.history``): cross-entropy, the
  sharing term and the largest domain cost against its annealed target over the training steps,
  per sharing variant at the default budget (mean and std over seeds).

Every ratio is counted from the weights' tensor shapes at report time (``counts``), never read
from the manifest (a manifest that disagrees with its weights is named in the warnings); the
S-score and efficiency come from ``scores``, the mean ± std over seeds and the rule that calls a
difference real from ``seeds``. Every run is also checked against its budget: a domain whose
counted params or MACs fraction (the ones its ``budget_metric`` caps) exceeds the budget is
reported.

What the report could not use (an artifact folder not found, a field not recorded) is named in
its warnings: returned, passed to ``warn`` and written into both files. A report already in
the output folder is not replaced by one that shows less of the same runs (fewer values or
channel pictures) unless ``replace_fuller``; pictures of the previous report that this one does
not draw are removed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from multidomain.files import read_json, write_json, write_text
from reporting.channels import ChannelUsage, channel_usage
from reporting.checks import check_runs
from reporting.errors import ReportError
from reporting.inputs import Run, collect_runs
from reporting.nested import nested_levels, nested_rows, nested_sizes
from reporting.plots import (
    ACCURACY_PLOT,
    COST_PLOT,
    HISTORY_PLOT,
    NESTED_PLOT,
    SCORE_PLOT,
    plot_accuracy,
    plot_channel_usage,
    plot_costs,
    plot_history,
    plot_nested,
    plot_scores,
)
from reporting.render import reference_row, render_markdown, run_row, setting_row
from reporting.scores import score_runs
from reporting.seeds import findings, headline, settings_of

__all__ = ["DEFAULT_BUDGET", "MAX_CHANNEL_PLOTS", "build_report", "missing_fields"]

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


def missing_fields(run: Run) -> list[str]:
    """What the report shows for ``run`` but its source does not record."""
    missing = [
        name
        for name, value in (
            ("budget", run.budget),
            ("budget_metric", run.budget_metric),
            ("sharing", None if run.sharing == "?" else run.sharing),
            ("sharing weight", 0.0 if run.sharing == "none" else run.sharing_weight),
            ("training wall time", run.wall_time_s),
        )
        if value is None
    ]
    if run.counted is None:
        missing.append("weights (no ratio counted)")
    for name, values in (("test_accuracy", run.test_accuracy),):
        lacking = [d for d in run.domains if values.get(d) is None]
        if lacking:
            missing.append(f"{name} of {', '.join(lacking)}")
    if run.manifest is None or channel_usage(run.manifest) is None:
        missing.append("channel lists")
    return missing


def run_warnings(runs: Sequence[Run]) -> list[str]:
    """One line per run whose source lacks something the report shows."""
    warnings = []
    for run in runs:
        missing = missing_fields(run)
        lacking = f"; not recorded: {', '.join(missing)}" if missing else ""
        lacking += "".join(f"; {note}" for note in run.count_notes)
        if run.note is not None:
            warnings.append(f"{run.label}: {run.note}{lacking}")
        elif missing or run.count_notes:
            warnings.append(f"{run.label} ({run.source}){lacking}")
    return warnings


#: Row fields compared with a previous report (the rest is derived or bookkeeping)
_VALUE_FIELDS = (
    "budget",
    "budget_metric",
    "sharing_weight",
    "learnable_sharing_weight",
    "mean_test_accuracy",
    "test_accuracy",
    "compact_params_fraction",
    "domain_params_fraction",
    "domain_macs_fraction",
    "wall_time_s",
)


def _lost(previous: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """What the previous report showed of the same runs that ``rows`` would not."""
    # a run is its label, protocol and seed: grids of two protocols both hold a
    # ``grid/s0-b1-union``, read from a manifest or from a grid row alike
    old_rows = {
        (f"{r.get('model_name')}/{r.get('version')}", r.get("protocol"), r.get("seed")): r
        for r in previous.get("rows", [])
        if isinstance(r, Mapping)
    }
    lost: Counter[str] = Counter()
    for row in rows:
        label = f"{row['model_name']}/{row['version']}"
        old = old_rows.get((label, row.get("protocol"), row.get("seed")))
        if old is None:
            continue
        if old.get("channel_usage_plot") and not row["channel_usage_plot"]:
            lost["channel-usage pictures"] += 1
        for name in _VALUE_FIELDS:
            before, after = old.get(name), row[name]
            if isinstance(before, Mapping):
                after = after if isinstance(after, Mapping) else {}
                lost[name] += sum(v is not None and after.get(k) is None for k, v in before.items())
            elif before is not None and after is None:
                lost[name] += 1
    return +lost


def _previous_report(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "report.json"
    if not path.is_file():
        return None
    try:
        previous = read_json(path, ReportError)
    except ReportError:
        return None  # unreadable: nothing to keep
    return previous if isinstance(previous, dict) else None


def _plot_files(report: Mapping[str, Any]) -> set[str]:
    plots = report.get("plots")
    if not isinstance(plots, Mapping):
        return set()
    names = [
        plots.get(k)
        for k in (
            "accuracy_vs_budget",
            "cost_vs_budget",
            "score_vs_params",
            "nested_accuracy_vs_budget",
            "training_history",
        )
    ]
    channel = plots.get("channel_usage")
    names += channel if isinstance(channel, list) else []
    return {n for n in names if isinstance(n, str) and n.endswith(".png") and Path(n).name == n}


def build_report(
    inputs: Sequence[Path],
    out_dir: Path,
    max_channel_plots: int = MAX_CHANNEL_PLOTS,
    replace_fuller: bool = False,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read the runs, write ``out_dir/report.{md,json}`` and the plots; returns the JSON.

    Raises ``ReportError`` (writing nothing) if ``out_dir`` holds a report that shows more of
    the same runs, unless ``replace_fuller``."""
    if max_channel_plots < 0:
        raise ReportError(f"max channel plots must be >= 0, got {max_channel_plots}")
    runs, references = collect_runs(inputs)
    score_runs(runs, references)
    check_runs(runs)
    warnings = run_warnings(runs)
    for line in warnings:
        if warn is not None:
            warn(line)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"{out_dir}: exists and is not a folder")

    names: set[str] = set()
    channel_runs = _choose_channel_runs(runs, max_channel_plots)
    for run, _ in channel_runs:
        stem = _file_stem(f"channel_usage_{run.model_name}_{run.version}")
        name, k = f"{stem}.png", 2
        while name in names:
            name, k = f"{stem}-{k}.png", k + 1
        names.add(name)
        run.channel_plot = name
    rows = [run_row(r) for r in runs]
    settings = settings_of(runs)
    by_seed = any(r.seed is not None for r in runs)
    domains = list(dict.fromkeys(d for r in runs for d in r.domains))
    previous = _previous_report(out_dir)
    lost = _lost(previous, rows) if previous is not None else Counter()
    if lost and not replace_fuller:
        what = ", ".join(f"{name} {count}" for name, count in sorted(lost.items()))
        raise ReportError(
            f"{out_dir / 'report.json'} shows more of these runs than this report would "
            f"({what}; see the warnings): kept. --force replaces it, --out writes elsewhere"
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    plots: dict[str, Any] = {"accuracy_vs_budget": None, "cost_vs_budget": None}
    if plot_accuracy(runs, references, out_dir / ACCURACY_PLOT):
        plots["accuracy_vs_budget"] = ACCURACY_PLOT
    if plot_costs(runs, out_dir / COST_PLOT):
        plots["cost_vs_budget"] = COST_PLOT
    nested = nested_rows(runs)
    levels = nested_levels(nested)
    if plot_nested(levels, out_dir / NESTED_PLOT):
        plots["nested_accuracy_vs_budget"] = NESTED_PLOT
    plots["score_vs_params"] = SCORE_PLOT if plot_scores(runs, out_dir / SCORE_PLOT) else None
    history = plot_history(runs, DEFAULT_BUDGET, out_dir / HISTORY_PLOT)
    plots["training_history"] = HISTORY_PLOT if history else None
    for run, usage in channel_runs:
        assert run.channel_plot is not None
        plot_channel_usage(run, usage, out_dir / run.channel_plot)
    plots["channel_usage"] = [run.channel_plot for run, _ in channel_runs]

    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": [str(p) for p in inputs],
        "rows": rows,
        "references": [reference_row(r) for r in references],
        "settings": [setting_row(s, domains) for s in settings] if by_seed else [],
        "findings": findings(settings) if by_seed else [],
        "headline": headline(settings) if by_seed else [],
        "plots": plots,
        "nested": nested,
        "nested_levels": levels,
        "nested_sizes": nested_sizes(runs),
        "budget_check": {
            status: sum(r.budget_status == status for r in runs)
            for status in ("ok", "over", "unchecked")
        },
        "warnings": warnings,
    }
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", render_markdown(report))
    if previous is not None:
        for stale in sorted(_plot_files(previous) - _plot_files(report)):
            (out_dir / stale).unlink(missing_ok=True)
    return report
