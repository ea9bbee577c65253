"""The report's PNG plots (matplotlib, Agg backend, imported only when drawing):

* ``accuracy_vs_budget.png``: mean test accuracy vs budget, one line per sharing variant;
* ``cost_vs_budget.png``: compact params / backbone params and domain MACs / backbone MACs
  (mean, bars min..max) vs budget, with the single-domain backbone (1.0) and the budget line;
* ``score_vs_params.png``: mean accuracy and S-score against compact params (the Pareto view);
* ``channel_usage_<model>_<version>.png``: per block, which backbone channels each domain uses
  and which survive pruning;
* ``nested_accuracy_vs_budget.png``: nested levels next to the runs trained alone at one budget;
* ``training_history.png``: budget-aware training over its steps (``training.history`` of the
  manifests): cross-entropy, the sharing term, and the largest domain cost in every capped
  metric next to the annealed target, per sharing variant at one budget.

Several runs of one setting (seeds) are drawn as their mean with std error bars. Every plot but
``plot_nested`` (and the channel usage) shows runs of one budget only.

Whatever a run lacks is skipped; a plot with nothing to draw is not written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidomain.files import atomic_path
from reporting.channels import ChannelUsage
from reporting.inputs import Reference, Run, as_mapping, sharing_key
from reporting.seeds import Spread, spread

__all__ = [
    "ACCURACY_PLOT",
    "COST_PLOT",
    "HISTORY_PLOT",
    "NESTED_PLOT",
    "SCORE_PLOT",
    "plot_accuracy",
    "plot_channel_usage",
    "plot_costs",
    "plot_history",
    "plot_nested",
    "plot_scores",
]

ACCURACY_PLOT = "accuracy_vs_budget.png"
NESTED_PLOT = "nested_accuracy_vs_budget.png"
COST_PLOT = "cost_vs_budget.png"
SCORE_PLOT = "score_vs_params.png"
HISTORY_PLOT = "training_history.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
GREY_DARK, GREY_MID, GREY_LIGHT = "#333333", "#4d4d4d", "#808080"


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _save(figure: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _variant(run: Run) -> str:
    """A line of the plots: the sharing variant, and the protocol when the run has one."""
    return run.sharing if run.protocol is None else f"{run.protocol}: {run.sharing}"


def _by_sharing(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.protocol or "", sharing_key(r.sharing))):
        groups.setdefault(_variant(run), []).append(run)
    return {k: sorted(v, key=lambda r: r.budget or 0.0) for k, v in groups.items()}


def _over_seeds(
    group: Sequence[Run], value: Callable[[Run], float | None]
) -> list[tuple[float, Spread]]:
    """Per budget of ``group``: the value's mean and spread over the runs (seeds)."""
    budgets = sorted({r.budget for r in group if r.budget is not None})
    points = []
    for budget in budgets:
        found = spread(value(r) for r in group if r.budget == budget)
        if found is not None:
            points.append((budget, found))
    return points


def _errorbar(
    axes: Any, xs: list[float], points: Sequence[Spread], style: _Style, label: str
) -> None:
    axes.errorbar(
        xs,
        [p.mean for p in points],
        yerr=[p.std or 0.0 for p in points],
        marker=style.marker,
        color=style.color,
        capsize=3,
        label=label,
    )


@dataclass(frozen=True)
class _Style:
    marker: str
    color: str
    offset: float  # small x shift so that equal points of different variants stay visible


def _styles(runs: Sequence[Run], dodge: float = 0.006) -> dict[str, _Style]:
    """One marker, colour and x offset per sharing variant, the same in every plot."""
    variants = list(_by_sharing(runs))
    middle = (len(variants) - 1) / 2
    return {
        s: _Style(MARKERS[k % len(MARKERS)], f"C{k % 10}", (k - middle) * dodge)
        for k, s in enumerate(variants)
    }


def _budget_axis(axes: Any, runs: Sequence[Run]) -> None:
    budgets = sorted({r.budget for r in runs if r.budget is not None})
    axes.set_xlabel("budget β (each domain's cost cap, fraction of the backbone)")
    if budgets:
        axes.set_xticks(budgets)
    axes.set_xlim(min([0.0, *budgets]) - 0.02, max([1.0, *budgets]) + 0.05)
    axes.grid(True, alpha=0.3)


def _one_budget(runs: Sequence[Run]) -> list[Run]:
    """The runs trained at one budget: a nested run's levels are ``plot_nested``'s."""
    return [r for r in runs if not r.nested]


def plot_accuracy(runs: Sequence[Run], references: Sequence[Reference], path: Path) -> bool:
    """Mean test accuracy vs budget per sharing variant; ``False`` (no file) if no run has both."""
    runs = _one_budget(runs)
    points = [r for r in runs if r.budget is not None and r.mean_test_accuracy is not None]
    if not points:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 5.0), layout="constrained")
    axes = figure.add_subplot()
    styles = _styles(runs)
    for sharing, group in _by_sharing(points).items():
        style = styles[sharing]
        means = _over_seeds(group, lambda r: r.mean_test_accuracy)
        _errorbar(
            axes,
            [b + style.offset for b, _ in means],
            [p for _, p in means],
            style,
            f"sharing: {sharing}",
        )
    lines = ("--", ":", "-.")
    labels: dict[str, list[float]] = {}
    for reference in references:
        if reference.mean_test_accuracy is not None:
            where = f"{reference.protocol}: " if reference.protocol else ""
            labels.setdefault(where + reference.label, []).append(reference.mean_test_accuracy)
    for k, (label, values) in enumerate(labels.items()):
        level = sum(values) / len(values)
        axes.axhline(
            level, color=GREY_MID, linestyle=lines[k % len(lines)], label=f"{label} ({level:.3f})"
        )
    _budget_axis(axes, points)
    axes.set_ylabel("mean test accuracy (over domains; bars: std over seeds)")
    axes.set_title("Accuracy vs budget")
    figure.legend(loc="outside right upper", fontsize="small")
    _save(figure, path)
    return True


def plot_nested(levels: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Mean test accuracy vs budget of the nested levels (``reporting.nested.nested_levels``)
    next to the runs trained alone at one budget of the same protocol, sharing variant and
    seeds, one pair of lines per protocol and sharing variant; bars: std over seeds. ``False``
    (no file) without a nested level."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for level in levels:
        where = f"{level['protocol']}: " if level.get("protocol") else ""
        groups.setdefault(f"{where}{level['sharing']}", []).append(level)
    if not groups:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 5.0), layout="constrained")
    axes = figure.add_subplot()
    for k, (variant, group) in enumerate(groups.items()):
        ordered = sorted(group, key=lambda level: level["budget"])
        for field, marker, line, what in (
            ("nested_mean_test_accuracy", MARKERS[k % len(MARKERS)], "-", "nested levels"),
            ("alone_mean_test_accuracy", "x", "--", "trained alone per budget"),
        ):
            points = [(level["budget"], level[field]) for level in ordered if level[field]]
            if not points:
                continue
            axes.errorbar(
                [b for b, _ in points],
                [p["mean"] for _, p in points],
                yerr=[p["std"] or 0.0 for _, p in points],
                marker=marker,
                linestyle=line,
                color=f"C{k % 10}",
                capsize=3,
                label=f"{what} ({variant}, seeds: {max(p['n'] for _, p in points)})",
            )
    budgets = sorted({level["budget"] for level in levels})
    axes.set_xlabel("budget β (each domain's cost cap, fraction of the backbone)")
    axes.set_xticks(budgets)
    axes.grid(True, alpha=0.3)
    axes.set_ylabel("mean test accuracy (over domains; bars: std over seeds)")
    axes.set_title("Nested levels vs models trained alone")
    figure.legend(loc="outside right upper", fontsize="small")
    _save(figure, path)
    return True


def _history(run: Run) -> Mapping[str, Any]:
    """The run's recorded training history (columns, ``training.history``), empty if none."""
    training = as_mapping((run.manifest or {}).get("training"))
    history = as_mapping(training.get("history"))
    return history if isinstance(history.get("step"), list) and history["step"] else {}


def _largest_per_step(columns: Mapping[str, Any]) -> list[float] | None:
    """Per step, the largest of the per-domain columns (``{domain: [...]}``)."""
    lists = [v for v in columns.values() if isinstance(v, list)]
    if not lists or len({len(v) for v in lists}) != 1:
        return None
    return [max(values) for values in zip(*lists, strict=True)]


def _history_curves(run: Run) -> dict[str, list[float]]:
    """The curves the history plot draws for one run: ``ce``, ``sharing_loss``, ``target``
    (largest over domains) and ``cost:<metric>`` (largest over domains), each one value per
    recorded step; a curve whose length differs from the steps' is left out."""
    history = _history(run)
    steps = len(history.get("step", []))
    curves: dict[str, list[float]] = {}
    for key in ("ce", "sharing_loss"):
        values = history.get(key)
        if isinstance(values, list) and len(values) == steps:
            curves[key] = [float(v) for v in values]
    target = _largest_per_step(as_mapping(history.get("target")))
    if target is not None and len(target) == steps:
        curves["target"] = target
    for metric, columns in as_mapping(history.get("cost")).items():
        largest = _largest_per_step(as_mapping(columns))
        if largest is not None and len(largest) == steps:
            curves[f"cost:{metric}"] = largest
    return curves


def _mean_band(
    axes: Any,
    steps: Sequence[float],
    series: Sequence[Sequence[float]],
    color: str,
    style: str,
    label: str,
) -> None:
    """The mean of ``series`` (one list per seed) over ``steps``, with a band of one std when
    there are several."""
    if not series:
        return
    points = [spread(values) for values in zip(*series, strict=True)]
    means = [p.mean if p is not None else math.nan for p in points]
    axes.plot(steps, means, color=color, linestyle=style, label=label)
    if len(series) > 1:
        stds = [(p.std or 0.0) if p is not None else 0.0 for p in points]
        low = [m - d for m, d in zip(means, stds, strict=True)]
        high = [m + d for m, d in zip(means, stds, strict=True)]
        axes.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)


def plot_history(runs: Sequence[Run], budget: float, path: Path) -> bool:
    """Budget-aware training over its steps, one line per sharing variant (and protocol) of
    the one-budget runs at ``budget`` (or, if none records a history there, at every budget,
    labelled with it); several seeds of a line: their mean, a band of one std. ``False`` (no
    file) when no run records a history."""
    recorded = [r for r in _one_budget(runs) if r.budget is not None and _history(r)]
    chosen = [r for r in recorded if abs((r.budget or 0.0) - budget) < 1e-9] or recorded
    if not chosen:
        return False
    one_budget = len({r.budget for r in chosen}) == 1
    lines: dict[str, list[Run]] = {}
    for variant, group in _by_sharing(chosen).items():
        for run in group:
            label = variant if one_budget else f"{variant}, β={run.budget:g}"
            lines.setdefault(label, []).append(run)
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13.0, 4.2), layout="constrained")
    ce_axes, sharing_axes, cost_axes = figure.subplots(1, 3)
    dashes = ("-", ":", "-.")
    for k, (label, group) in enumerate(lines.items()):
        steps = _history(group[0])["step"]
        curves = [_history_curves(r) for r in group if _history(r)["step"] == steps]
        color = f"C{k % 10}"
        seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
        panels = [(ce_axes, "ce", "-", color, f"{label}{seeds}")]
        panels.append((sharing_axes, "sharing_loss", "-", color, f"{label}{seeds}"))
        metrics = sorted({key for c in curves for key in c if key.startswith("cost:")})
        for m, key in enumerate(metrics):
            name = f"{label}{seeds}: {key.removeprefix('cost:')}"
            panels.append((cost_axes, key, dashes[m % len(dashes)], color, name))
        panels.append((cost_axes, "target", "--", GREY_LIGHT, f"{label}: target"))
        for axes, key, style, tint, name in panels:
            series = [c[key] for c in curves if key in c]
            _mean_band(axes, steps, series, tint, style, name)
    ce_axes.set_ylabel("training cross-entropy (mean over domains)")
    sharing_axes.set_ylabel("sharing term (before its weight)")
    cost_axes.set_ylabel("largest domain cost (fraction of the backbone)")
    for axes in (ce_axes, sharing_axes, cost_axes):
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
    where = f"budget {budget:g}" if one_budget else "every budget"
    figure.suptitle(f"Budget-aware training ({where}; band: std over seeds)")
    cost_axes.legend(fontsize="x-small")
    ce_axes.legend(fontsize="x-small")
    _save(figure, path)
    return True


def _reference_lines(axes: Any, runs: Sequence[Run]) -> None:
    top = max([1.0, *(r.budget for r in runs if r.budget is not None)]) + 0.05
    axes.axhline(1.0, color=GREY_DARK, linestyle="--", label="single-domain backbone")
    axes.plot([0.0, top], [0.0, top], color=GREY_LIGHT, linestyle=":", label="budget (y = β)")


def plot_costs(runs: Sequence[Run], path: Path) -> bool:
    """Compact params and domain MACs (over the backbone) vs budget; ``False`` if no data."""
    runs = _one_budget(runs)
    params = [r for r in runs if r.budget is not None and r.compact_params_fraction is not None]
    macs = [
        r
        for r in runs
        if r.budget is not None and any(v is not None for v in r.macs_fraction.values())
    ]
    if not params and not macs:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13.0, 5.0), layout="constrained")
    left, right = figure.subplots(1, 2, sharex=True)
    styles = _styles(runs)
    for sharing, group in _by_sharing(params).items():
        style = styles[sharing]
        means = _over_seeds(group, lambda r: r.compact_params_fraction)
        _errorbar(
            left,
            [b + style.offset for b, _ in means],
            [p for _, p in means],
            style,
            f"sharing: {sharing}",
        )
    for sharing, group in _by_sharing(macs).items():
        style = styles[sharing]
        xs, ys, low, high = [], [], [], []
        for budget in sorted({r.budget for r in group if r.budget is not None}):
            values = [
                v
                for r in group
                if r.budget == budget
                for v in r.macs_fraction.values()
                if v is not None
            ]
            if not values:
                continue
            average = sum(values) / len(values)
            xs.append(budget + style.offset)
            ys.append(average)
            low.append(max(0.0, average - min(values)))  # >= 0 despite rounding
            high.append(max(0.0, max(values) - average))
        right.errorbar(
            xs,
            ys,
            yerr=[low, high],
            marker=style.marker,
            color=style.color,
            capsize=3,
            label=f"sharing: {sharing}",
        )
    for axes, title, ylabel, shown in (
        (
            left,
            "Everything needed to serve all domains (bars: std over seeds)",
            "compact params / backbone params",
            params,
        ),
        (
            right,
            "Each domain's compute (mean, bars: min..max over domains and seeds)",
            "domain MACs / backbone MACs",
            macs,
        ),
    ):
        _reference_lines(axes, runs)
        _budget_axis(axes, runs)
        axes.set_title(title, fontsize="medium")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0.0)
        if not shown:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center")
        axes.legend(loc="upper left", fontsize="small")
    figure.suptitle("Cost vs budget (single-domain backbone = 1)")
    _save(figure, path)
    return True


def plot_scores(runs: Sequence[Run], path: Path) -> bool:
    """Accuracy and S-score against compact params (all domains served), mean ± std over seeds
    per setting, one line per sharing variant (the Pareto view); ``False`` if no run has both."""
    runs = _one_budget(runs)
    points = [r for r in runs if r.compact_params_fraction is not None and r.budget is not None]
    if not points:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13.0, 5.0), layout="constrained")
    left, right = figure.subplots(1, 2, sharex=True)
    styles = _styles(runs)
    drawn = 0
    for axes, value, ylabel in (
        (left, lambda r: r.mean_test_accuracy, "mean test accuracy"),
        (right, lambda r: r.s_score, "Visual Decathlon S-score"),
    ):
        for sharing, group in _by_sharing(points).items():
            style = styles[sharing]
            xs = _over_seeds(group, lambda r: r.compact_params_fraction)
            ys = dict(_over_seeds(group, value))
            pairs = [(x, ys[b]) for b, x in xs if b in ys]
            if not pairs:
                continue
            drawn += 1
            axes.errorbar(
                [x.mean for x, _ in pairs],
                [y.mean for _, y in pairs],
                xerr=[x.std or 0.0 for x, _ in pairs],
                yerr=[y.std or 0.0 for _, y in pairs],
                marker=style.marker,
                color=style.color,
                capsize=3,
                label=f"sharing: {sharing}",
            )
        axes.set_xlabel("compact params / backbone params (all domains served)")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower right", fontsize="small")
        else:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center")
    if not drawn:
        return False
    figure.suptitle("Accuracy and S-score against parameters (mean ± std over seeds)")
    _save(figure, path)
    return True


def _run_title(run: Run) -> str:
    budget = "?" if run.budget is None else f"{run.budget:g}"
    weight = ""
    if run.sharing_weight is not None and run.sharing != "none":
        weight = f", γ = {run.sharing_weight:g}{' (learnable)' if run.learnable_weight else ''}"
    metric = f" ({run.budget_metric})" if run.budget_metric else ""
    return f"{run.label}: budget {budget}{metric}, sharing {run.sharing}{weight}"


def plot_channel_usage(run: Run, usage: ChannelUsage, path: Path) -> None:
    """One subplot per block: rows = domains + "kept after pruning", columns = channels."""
    _agg()
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = ["#d0d0d0", "#ffffff", "#1f77b4", "#2ca02c"]  # pruned, unused, used, kept
    cmap = ListedColormap(colours)
    n_blocks = len(usage.widths)
    blocks_per_stage = as_mapping(as_mapping(run.manifest).get("architecture")).get(
        "blocks_per_stage"
    )
    ncols = (
        blocks_per_stage
        if isinstance(blocks_per_stage, int) and 1 <= blocks_per_stage <= 6
        else min(4, n_blocks)
    )
    nrows = math.ceil(n_blocks / ncols)
    row_names = [*run.domains, "kept after pruning"]
    height = max(1.6, 0.28 * len(row_names) + 0.9)
    figure = Figure(figsize=(4.0 * ncols + 1.2, height * nrows + 1.3), layout="constrained")
    grid = figure.subplots(nrows, ncols, squeeze=False)
    for b in range(nrows * ncols):
        axes = grid[b // ncols][b % ncols]
        if b >= n_blocks:
            axes.set_visible(False)
            continue
        width = usage.widths[b]
        image = np.ones((len(row_names), width), dtype=float)
        for c in range(width):
            if c not in usage.kept[b]:
                image[:, c] = 0.0
            else:
                image[-1, c] = 3.0
        for d, used in enumerate(usage.used):
            for c in used[b]:
                if c < width:
                    image[d, c] = 2.0
        axes.imshow(image, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto", interpolation="none")
        axes.axhline(len(run.domains) - 0.5, color="black", linewidth=0.8)
        total = usage.backbone_widths[b] if usage.backbone_widths else "?"
        axes.set_title(f"block {b}: {len(usage.kept[b])}/{total} kept", fontsize="small")
        axes.set_yticks(range(len(row_names)))
        axes.set_yticklabels(row_names if b % ncols == 0 else [], fontsize="x-small")
        axes.tick_params(axis="x", labelsize="x-small")
        if b >= n_blocks - ncols:
            axes.set_xlabel(
                "backbone channel" if usage.backbone_positions else "compact channel",
                fontsize="x-small",
            )
    handles = [
        Patch(facecolor=colours[2], edgecolor=GREY_LIGHT, label="used by the domain"),
        Patch(facecolor=colours[1], edgecolor=GREY_LIGHT, label="kept, not used by the domain"),
        Patch(facecolor=colours[3], edgecolor=GREY_LIGHT, label="kept after pruning (union)"),
    ]
    if usage.backbone_positions:
        handles.append(Patch(facecolor=colours[0], edgecolor=GREY_LIGHT, label="pruned"))
    title = f"Channel usage per block — {_run_title(run)}"
    if not usage.backbone_positions:
        title += "\n(columns are compact channels: the manifest has no compact_channel_origin)"
    figure.suptitle(title, fontsize="medium")
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    _save(figure, path)
