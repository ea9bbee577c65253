"""Nested runs (one artifact, several budget levels) against runs trained alone at one budget:
the nested-budget target: each level's mean test accuracy within ``TOLERANCE_POINTS`` of a model
trained alone at that budget (same seeds, same protocol), and one artifact smaller than the
separate artifacts summed.

A level is compared with the runs of one budget ("alone") of the same protocol, seed, sharing
variant and budget metric at the level's budget (none with a domain's own budget); several such
runs (artifact folders without a seed) count as their mean. Over seeds, per protocol, sharing
variant, budget metric and level: the nested accuracy, the alone accuracy (seeds with both) and
the per-seed difference, mean ± std (``reporting.seeds.spread``). Sizes: each nested artifact's
weight bytes against the summed weight bytes of the alone artifacts it replaces (one per level),
every tensor counted from its shape at 4 bytes a value (``reporting.counts.fp32_bytes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multidomain.stats import mean
from reporting.inputs import Run, sharing_key
from reporting.seeds import spread, spread_json

__all__ = ["TOLERANCE_POINTS", "nested_levels", "nested_rows", "nested_sizes"]

#: The nested-budget target: each level's mean test accuracy within this many points of alone
TOLERANCE_POINTS = 1.5

_Match = tuple[str | None, int | None, str, str | None]


def _match(run: Run) -> _Match:
    """What a level and the runs it is compared with share."""
    return (run.protocol, run.seed, run.sharing, run.budget_metric)


def _budget(value: float) -> float:
    return round(value, 9)


def _alone_runs(runs: Sequence[Run]) -> dict[_Match, dict[float, list[Run]]]:
    """The runs of one budget (every domain at it) by what they share and by budget."""
    groups: dict[_Match, dict[float, list[Run]]] = {}
    for run in runs:
        if run.nested or run.budget is None:
            continue
        if any(b is not None and b != run.budget for b in run.domain_budgets.values()):
            continue
        groups.setdefault(_match(run), {}).setdefault(_budget(run.budget), []).append(run)
    return groups


def nested_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Every level of every nested run next to the alone runs it is compared with."""
    alone = _alone_runs(runs)
    rows = []
    for run in runs:
        same = alone.get(_match(run), {})
        for level in run.levels:
            matched = same.get(_budget(level.budget), [])
            accuracy = mean(r.mean_test_accuracy for r in matched)
            nested = level.mean_test_accuracy
            rows.append(
                {
                    "run": run.label,
                    "protocol": run.protocol,
                    "seed": run.seed,
                    "sharing": run.sharing,
                    "budget_metric": run.budget_metric,
                    "level_state": run.level_state,
                    "steps": run.steps,
                    "budget": level.budget,
                    "nested_mean_test_accuracy": nested,
                    "nested_test_accuracy": level.test_accuracy,
                    "alone_runs": [r.label for r in matched],
                    "alone_mean_test_accuracy": accuracy,
                    "difference": None if nested is None or accuracy is None else nested - accuracy,
                }
            )
    return rows


def _as_json(values: Sequence[float | None], scale: float = 1.0) -> dict[str, Any] | None:
    return spread_json(spread(None if v is None else v * scale for v in values))


def nested_levels(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``nested_rows`` over seeds: per protocol, sharing variant, budget metric, level state,
    steps and level, the nested and alone mean test accuracy, the per-seed difference in points
    (mean, std, count) and whether its mean is within ``TOLERANCE_POINTS`` (``None``: nothing
    to compare)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (
            row["protocol"],
            row["sharing"],
            row["budget_metric"],
            row.get("level_state"),
            row.get("steps"),
            _budget(row["budget"]),
        )
        groups.setdefault(key, []).append(row)
    levels = []
    for (protocol, sharing, metric, state, steps, budget), group in sorted(
        groups.items(),
        key=lambda item: (
            item[0][0] or "",
            sharing_key(item[0][1]),
            item[0][2] or "",
            item[0][3] or "",
            item[0][4] or 0,
            -item[0][5],
        ),
    ):
        paired = [r for r in group if r["difference"] is not None]
        difference = _as_json([r["difference"] for r in paired], 100.0)
        levels.append(
            {
                "protocol": protocol,
                "sharing": sharing,
                "budget_metric": metric,
                "level_state": state,
                "steps": steps,
                "budget": budget,
                "seeds": [r["seed"] for r in group],
                "compared_seeds": [r["seed"] for r in paired],
                "nested_mean_test_accuracy": _as_json(
                    [r["nested_mean_test_accuracy"] for r in group]
                ),
                "alone_mean_test_accuracy": _as_json(
                    [r["alone_mean_test_accuracy"] for r in paired]
                ),
                "difference_points": difference,
                "within_tolerance": None
                if difference is None
                else abs(difference["mean"]) <= TOLERANCE_POINTS,
            }
        )
    return levels


def nested_sizes(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Each nested artifact's weight bytes against the alone artifacts it replaces summed (one
    alone run per level; ``None`` where a level has none, several, or one not counted)."""
    alone = _alone_runs(runs)
    sizes = []
    for run in runs:
        if not run.nested:
            continue
        same = alone.get(_match(run), {})
        replaced: dict[str, Run] = {}
        missing = []
        for level in run.levels:
            matched = same.get(_budget(level.budget), [])
            if len(matched) == 1 and matched[0].weight_bytes is not None:
                replaced[f"{level.budget:g}"] = matched[0]
            else:
                why = "weights not counted" if len(matched) == 1 else f"{len(matched)} runs"
                missing.append(f"budget {level.budget:g}: {why}")
        alone_bytes = {b: r.weight_bytes for b, r in replaced.items()}
        summed = None if missing else sum(b for b in alone_bytes.values() if b is not None)
        nested = run.weight_bytes
        sizes.append(
            {
                "run": run.label,
                "protocol": run.protocol,
                "seed": run.seed,
                "sharing": run.sharing,
                "budget_metric": run.budget_metric,
                "nested_weight_bytes": nested,
                "alone_runs": {b: r.label for b, r in replaced.items()},
                "alone_weight_bytes": alone_bytes,
                "alone_weight_bytes_sum": summed,
                "ratio": None if nested is None or not summed else nested / summed,
                "smaller": None if nested is None or summed is None else nested < summed,
                "missing": missing,
            }
        )
    return sizes
