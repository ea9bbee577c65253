"""What the budget is and what it caps, checked before any data is loaded: ``BudgetConfig``
(budgets, per-domain budgets, metric, channel group, sharing loss, schedule) and
``budget_costs``, which resolves the group size, the latency table and the costs for an
architecture and refuses a budget below the floor. ``training.budget`` trains under it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from multidomain.arch import ArchSpec
from multidomain.artifact import LEVEL_STATES, LevelState
from multidomain.costs import CostMetric, DomainCost, linear_cost
from multidomain.groups import check_channel_group, resolve_channel_group
from multidomain.latency import LatencyTable
from training.sharing import SharingVariant, check_variant

__all__ = [
    "BUDGET_METRICS",
    "LEVEL_STATES",
    "BudgetConfig",
    "BudgetCosts",
    "BudgetMetric",
    "LevelState",
    "budget_costs",
]

BudgetMetric = Literal["params", "macs", "both", "latency"]
BUDGET_METRICS = ("params", "macs", "both", "latency")


def _check_fraction(value: float, what: str) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {value}")


@dataclass(frozen=True)
class BudgetConfig:
    budget: float = 0.5
    domain_budgets: tuple[tuple[str, float], ...] = ()  # (domain, budget) overriding ``budget``
    budget_metric: BudgetMetric = "both"
    channel_group: int | Literal["auto"] = "auto"
    latency_table: Path | None = None
    latency_batch: int | None = None  # batch size the latency budget caps (default: largest)
    sharing: SharingVariant = "union"
    sharing_weight: float = 5.0
    learnable_sharing_weight: bool = False
    steps: int = 300
    batch_size: int = 32
    lr_scores: float = 0.02
    lr_domain: float = 2e-3
    lr_shared: float = 2e-4  # only with unfreeze_shared
    penalty: float = 100.0
    anneal_fraction: float = 0.6
    score_init: float = 1.0
    unfreeze_shared: bool = False
    finetune_steps: int = 40
    seed: int = 0  # initialisation and batch order
    split_seed: int = 0  # the splits the domains were loaded with (checked against the backbone)
    history_every: int = 0  # steps per training-history row (0: about 40 rows)
    # nested levels (``--budgets``), largest first; empty: one budget. ``budget`` is the largest
    levels: tuple[float, ...] = ()
    # nested levels: each level trains its own BN affines and heads (private, switchable
    # BatchNorm) or all levels share the largest level's (shared); BN statistics are per level
    level_state: LevelState = "private"

    def __post_init__(self) -> None:
        if self.levels:
            for value in self.levels:
                _check_fraction(value, "every budget of --budgets")
            levels = tuple(sorted(set(self.levels), reverse=True))
            if len(levels) < 2 or len(levels) != len(self.levels):
                raise ValueError(
                    "--budgets needs at least two different budgets (one budget: --budget)"
                )
            if self.domain_budgets:
                raise ValueError("--budgets cannot be combined with a domain's own --budget")
            if self.learnable_sharing_weight:
                raise ValueError(
                    "--budgets trains with a fixed sharing weight: drop --learnable-sharing-weight"
                )
            object.__setattr__(self, "levels", levels)
            object.__setattr__(self, "budget", levels[0])
        if self.level_state not in LEVEL_STATES:
            raise ValueError(
                f"unknown level state {self.level_state!r}; choose one of {', '.join(LEVEL_STATES)}"
            )
        _check_fraction(self.budget, "budget")
        names = [name for name, _ in self.domain_budgets]
        for name, value in self.domain_budgets:
            _check_fraction(value, f"budget of domain {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"a domain's budget is given twice: {', '.join(names)}")
        if self.budget_metric not in BUDGET_METRICS:
            raise ValueError(
                f"unknown budget metric {self.budget_metric!r}; "
                f"choose one of {', '.join(BUDGET_METRICS)}"
            )
        if self.budget_metric == "latency" and self.latency_table is None:
            raise ValueError(
                "budget metric latency needs a latency table (--latency-table FILE, made by "
                "'mdprune profile')"
            )
        if self.channel_group != "auto":
            resolve_channel_group(self.channel_group)
        check_variant(self.sharing)
        if self.sharing_weight < 0:
            raise ValueError(f"sharing weight must be >= 0, got {self.sharing_weight}")
        if not 0 < self.anneal_fraction <= 1:
            raise ValueError(f"anneal fraction must be in (0, 1], got {self.anneal_fraction}")
        if not self.penalty > 0:
            raise ValueError(f"penalty must be > 0, got {self.penalty}")
        if self.steps < 1 or self.batch_size < 1 or self.finetune_steps < 0:
            raise ValueError("steps and batch size must be >= 1, fine-tune steps >= 0")
        for what, value in (
            ("score learning rate", self.lr_scores),
            ("domain learning rate", self.lr_domain),
            ("shared learning rate", self.lr_shared),
            ("initial score", self.score_init),
        ):
            if not value > 0:
                raise ValueError(f"{what} must be > 0, got {value}")
        if self.history_every < 0:
            raise ValueError(f"history interval must be >= 0, got {self.history_every}")

    @property
    def group(self) -> int:
        """The channel group size (``auto`` resolved for this machine)."""
        return resolve_channel_group(self.channel_group)

    def budget_for(self, domain: str) -> float:
        return dict(self.domain_budgets).get(domain, self.budget)

    def check_domains(self, names: Sequence[str]) -> None:
        """Every domain named in ``domain_budgets`` must be trained."""
        unknown = [name for name, _ in self.domain_budgets if name not in names]
        if unknown:
            raise ValueError(
                f"--budget names unknown domain {unknown[0]!r}; the domains are " + ", ".join(names)
            )


@dataclass(frozen=True)
class BudgetCosts:
    """What the budget caps, resolved for an architecture: the group size, the cost of every
    capped metric, the latency table if one was given (also used to record predictions)."""

    group: int
    costs: tuple[DomainCost, ...]
    table: LatencyTable | None

    def fractions(self, channels: Sequence[int]) -> dict[str, float]:
        return {cost.name: cost.fraction(channels) for cost in self.costs}


def budget_costs(arch: ArchSpec, config: BudgetConfig) -> BudgetCosts:
    """Resolve the group size, check it divides every width, load and check the latency table,
    and refuse budgets below the least a domain can cost (one group per block). Needs only the
    architecture: callers run it before loading any data."""
    group = config.group
    check_channel_group(arch, group)
    table = None
    if config.latency_table is not None:
        table = LatencyTable.load(config.latency_table)
        table.check(arch, group)
    costs: list[DomainCost] = []
    if config.budget_metric == "latency":
        assert table is not None
        costs.append(table.cost(config.latency_batch))
    else:
        metrics: tuple[CostMetric, ...] = (
            ("params", "macs") if config.budget_metric == "both" else (config.budget_metric,)
        )
        costs += [linear_cost(arch, m) for m in metrics]
    lowest = min([config.budget, *config.levels, *(v for _, v in config.domain_budgets)])
    floors = {cost.name: cost.floor(group) for cost in costs}
    worst = max(floors, key=lambda name: floors[name])
    if lowest < floors[worst]:
        raise ValueError(
            f"budget {lowest:g} is below the least a domain can cost with channel groups of "
            f"{group}: {floors[worst]:.4f} of the backbone's {worst} (the unswitchable stem and "
            "shortcuts plus one group per block)"
        )
    return BudgetCosts(group, tuple(costs), table)
