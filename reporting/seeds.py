"""Runs of one setting over several seeds: mean ± std per figure, and the one rule by which the
report's text calls a difference real.

A setting is (protocol, budget, budget metric, per-domain budgets, sharing) of runs trained at
one budget (a nested run is not one of them). The spread of a figure is its sample standard
deviation over the setting's seeds. **Rule:** two settings differ in a figure only if their
means are further apart than the sum of their spreads; with one seed there is no spread and no
difference is called real. ``findings`` writes the comparisons the
grid is about with this rule, and ``headline`` checks the README's claim on the means.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reporting.inputs import Run, sharing_key

__all__ = [
    "HEADLINE",
    "Setting",
    "Spread",
    "compare",
    "findings",
    "headline",
    "settings_of",
    "spread",
    "spread_json",
]

#: The README's headline claim: at this budget, with sharing, everything serving all domains
#: within ``compact_params`` of the backbone's parameters, every domain within ``domain_macs``
#: of its MACs, mean accuracy within ``accuracy_drop`` of budget 1.0's
HEADLINE = {"budget": 0.5, "compact_params": 0.6, "domain_macs": 0.5, "accuracy_drop": 0.02}


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # None with one value
    n: int

    def text(self, digits: int = 3) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def spread_json(value: Spread | None) -> dict[str, Any] | None:
    """A spread as the report's JSON: ``{mean, std, n}`` (``None`` stays ``None``)."""
    return None if value is None else {"mean": value.mean, "std": value.std, "n": value.n}


def spread(values: Iterable[float | None]) -> Spread | None:
    """Mean and sample standard deviation of the values present (``None`` if none is)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Spread(statistics.fmean(present), std, len(present))


def compare(a: Spread, b: Spread) -> tuple[bool, str]:
    """Whether ``a`` and ``b`` differ by the rule, and why, in words."""
    gap = abs(a.mean - b.mean)
    if a.std is None or b.std is None:
        return False, f"difference {gap:.3f}, no spread (one seed): not called real"
    limit = a.std + b.std
    if gap > limit:
        return True, f"difference {gap:.3f} > spread {limit:.3f}: real"
    return False, f"difference {gap:.3f} <= spread {limit:.3f}: within the spread"


def _largest(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return max(present) if present else None


#: What a setting's row shows, per run
FIGURES: dict[str, Callable[[Run], float | None]] = {
    "mean_test_accuracy": lambda r: r.mean_test_accuracy,
    "compact_params_fraction": lambda r: r.compact_params_fraction,
    "max_domain_params_fraction": lambda r: _largest(r.params_fraction),
    "max_domain_macs_fraction": lambda r: _largest(r.macs_fraction),
    "s_score": lambda r: r.s_score,
    "s_per_params": lambda r: r.s_per_params,
    "s_per_macs": lambda r: r.s_per_macs,
}


@dataclass
class Setting:
    protocol: str | None
    budget: float | None
    budget_metric: str | None
    sharing: str
    own_budgets: tuple[tuple[str, float], ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def figure(self, name: str) -> Spread | None:
        return spread(FIGURES[name](r) for r in self.runs)

    def domain_accuracy(self, domain: str) -> Spread | None:
        return spread(r.test_accuracy.get(domain) for r in self.runs)

    @property
    def label(self) -> str:
        budget = "?" if self.budget is None else f"{self.budget:g}"
        own = "".join(f", {n} {b:g}" for n, b in self.own_budgets)
        where = f"{self.protocol}, " if self.protocol else ""
        return f"{where}budget {budget}{own} ({self.budget_metric or '?'}), {self.sharing}"


def settings_of(runs: Sequence[Run]) -> list[Setting]:
    """The runs of one budget grouped by setting, in the report's order (protocol, budget down,
    sharing); nested runs are left out (``reporting.nested`` compares them)."""
    groups: dict[tuple[object, ...], Setting] = {}
    for run in runs:
        if run.nested:
            continue
        own = tuple(
            sorted(
                (n, b) for n, b in run.domain_budgets.items() if b is not None and b != run.budget
            )
        )
        key = (run.protocol, run.budget, run.budget_metric, run.sharing, own)
        setting = groups.setdefault(
            key, Setting(run.protocol, run.budget, run.budget_metric, run.sharing, own)
        )
        setting.runs.append(run)
    return sorted(
        groups.values(),
        key=lambda s: (
            s.protocol or "",
            s.budget is None,
            -(s.budget or 0.0),
            sharing_key(s.sharing),
            s.budget_metric or "",
        ),
    )


def _find(
    settings: Sequence[Setting], like: Setting, budget: float | None, sharing: str
) -> Setting | None:
    for other in settings:
        if (
            other.protocol == like.protocol
            and other.budget_metric == like.budget_metric
            and other.own_budgets == like.own_budgets
            and other.budget == budget
            and other.sharing == sharing
        ):
            return other
    return None


def _line(what: str, name: str, a: Spread | None, b: Spread | None) -> str | None:
    if a is None or b is None:
        return None
    _, why = compare(a, b)
    return f"{what}: {name} {a.text()} vs {b.text()}: {why}"


def findings(settings: Sequence[Setting]) -> list[str]:
    """Each sharing variant against ``none`` at the same budget (accuracy, compact params,
    S-score) and each budget below 1 against budget 1.0 (accuracy), by the rule."""
    lines = []
    for setting in settings:
        if setting.sharing != "none":
            base = _find(settings, setting, setting.budget, "none")
            if base is not None:
                for figure, what in (
                    ("mean_test_accuracy", "mean accuracy"),
                    ("compact_params_fraction", "compact/backbone params"),
                    ("s_score", "S-score"),
                ):
                    text = _line(
                        f"{setting.label} vs none",
                        what,
                        setting.figure(figure),
                        base.figure(figure),
                    )
                    if text is not None:
                        lines.append(text)
        if setting.budget is not None and setting.budget < 1.0:
            full = _find(settings, setting, 1.0, setting.sharing)
            if full is not None:
                text = _line(
                    f"{setting.label} vs budget 1",
                    "mean accuracy",
                    setting.figure("mean_test_accuracy"),
                    full.figure("mean_test_accuracy"),
                )
                if text is not None:
                    lines.append(text)
    return lines


def headline(settings: Sequence[Setting]) -> list[str]:
    """Per protocol and sharing variant, whether ``HEADLINE`` holds on the means over seeds
    (and on the largest domain MACs of any seed)."""
    lines = []
    for setting in settings:
        if setting.budget != HEADLINE["budget"] or setting.sharing == "none":
            continue
        full = _find(settings, setting, 1.0, setting.sharing)
        params = setting.figure("compact_params_fraction")
        accuracy = setting.figure("mean_test_accuracy")
        macs = [FIGURES["max_domain_macs_fraction"](r) for r in setting.runs]
        base = None if full is None else full.figure("mean_test_accuracy")
        if params is None or accuracy is None or base is None or None in macs:
            lines.append(f"{setting.label}: not all figures recorded (a run at budget 1 is needed)")
            continue
        worst = max(m for m in macs if m is not None)
        drop = base.mean - accuracy.mean
        holds = (
            params.mean <= HEADLINE["compact_params"]
            and worst <= HEADLINE["domain_macs"]
            and drop <= HEADLINE["accuracy_drop"]
        )
        lines.append(
            f"{setting.label} ({accuracy.n} seeds): compact params {params.text()} "
            f"(claim <= {HEADLINE['compact_params']:g}), largest domain MACs {worst:.3f} "
            f"(claim <= {HEADLINE['domain_macs']:g}), mean accuracy {accuracy.text()} vs "
            f"{base.text()} at budget 1, drop {drop:.3f} (claim <= "
            f"{HEADLINE['accuracy_drop']:g}): {'holds' if holds else 'does NOT hold'}"
        )
    return lines
