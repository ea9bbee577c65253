"""Nested budgets from one training run (``--budgets 1.0 0.75 0.5 0.25``).

Every domain has one score per group of ``g`` mid channels. The mask of level ``b`` keeps the
domain's groups in order of score, dropping the lowest-scoring ones until every capped cost is
at or below ``b`` (``training.prune.project_to_budget``, never a block's last group). The drop
order is the same for every level, so a lower level's kept set is contained in a higher
level's: the masks are nested by construction.

Training follows the sandwich rule of slimmable networks: each step runs every domain's batch
through the largest, the smallest and one random middle level (the same for every domain and
rank), with the levels' budgets annealed from 1 like the single budget (``budget_target``).
A level's mask is hard in the forward pass; its gradient reaches the scores through
``sigmoid(score - threshold)``, the threshold halfway between the highest dropped and the
lowest kept score above it, so cross-entropy ranks the groups. The sharing loss acts on the
largest level's masks, the only ones pruning depends on.

BatchNorm: the affines are shared by the levels; the running statistics are recalibrated per
level after training (forward passes in train mode on training batches) and kept per level.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from multidomain.costs import DomainCost
from multidomain.groups import expand_groups
from multidomain.network import ChannelSwitches, ResNet26
from training.budget import (
    NestedLevel,
    TrainedModel,
    budget_target,
    prepare_training,
    training_batches,
)
from training.budget_config import BudgetConfig
from training.common import evaluate, recalibrate_batchnorm, seed_everything
from training.data import DomainData
from training.loop import ExtraLoss, train_steps
from training.prune import project_to_budget
from training.runtime import Runtime
from training.sharing import sharing_loss

__all__ = [
    "NestedLevel",
    "NestedStepNetwork",
    "level_statistics",
    "nested_group_masks",
    "sandwich_levels",
    "train_nested",
]


def nested_group_masks(
    scores: Sequence[Tensor], costs: Sequence[DomainCost], budgets: Sequence[float], group: int
) -> list[list[Tensor]]:
    """One domain's group masks (per block, bool) for every budget, largest budget first: each
    level drops the lowest-scoring groups of the level above until it fits its budget."""
    masks = [torch.ones(s.numel(), dtype=torch.bool) for s in scores]
    levels = []
    for budget in sorted(budgets, reverse=True):
        masks, _ = project_to_budget(scores, masks, costs, budget, group)
        levels.append(masks)
    return levels


def _straight_through(scores: Tensor, mask: Tensor) -> Tensor:
    """``mask`` (bool, per group) in the forward pass; ``sigmoid(score - threshold)``'s gradient
    in the backward pass, the threshold between the dropped and the kept scores."""
    hard = mask.to(scores.dtype)
    dropped = scores.detach()[~mask]
    if dropped.numel() == 0:
        return hard
    top = dropped.max()
    kept = scores.detach()[mask]
    above = kept[kept > top]
    threshold = (top + above.min()) / 2 if above.numel() else top
    soft = torch.sigmoid(scores - threshold)
    return hard + soft - soft.detach()


def sandwich_levels(count: int, rng: random.Random) -> list[int]:
    """The levels one step trains: the largest (0), the smallest and one random middle level."""
    chosen = [0, count - 1]
    if count > 2:
        chosen.insert(1, rng.randrange(1, count - 1))
    return chosen


class NestedStepNetwork(nn.Module):
    """What a nested training step runs: a domain's batch through each of the step's levels,
    logits stacked ``[levels, N, classes]``. ``switches`` are a submodule (their scores are
    trained); ``step_levels`` and ``step_budgets`` are set before each step."""

    def __init__(
        self,
        model: ResNet26,
        switches: ChannelSwitches,
        costs: Sequence[DomainCost],
    ) -> None:
        super().__init__()
        self.model = model
        self.switches = switches
        self.costs = tuple(costs)
        self.step_budgets: list[float] = []

    def level_masks(self, domain: int) -> list[list[Tensor]]:
        """Straight-through per-channel masks of ``domain`` at each of the step's budgets."""
        scores = [s[domain] for s in self.switches.scores]
        hard = nested_group_masks(
            [s.detach().cpu() for s in scores], self.costs, self.step_budgets, self.switches.group
        )
        return [
            [
                expand_groups(_straight_through(s, m.to(s.device)), self.switches.group)
                for s, m in zip(scores, level, strict=True)
            ]
            for level in hard
        ]

    def forward(self, images: Tensor, domain: int) -> Tensor:
        return torch.stack([self.model(images, domain, m) for m in self.level_masks(domain)])


def _statistic_names(model: ResNet26) -> list[str]:
    return [
        name for name, _ in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    ]


@contextmanager
def level_statistics(model: ResNet26, level: NestedLevel) -> Iterator[None]:
    """The model with ``level``'s BatchNorm statistics, the previous ones restored after."""
    buffers = dict(model.named_buffers())
    saved = {name: buffers[name].clone() for name in level.statistics}
    try:
        for name, value in level.statistics.items():
            buffers[name].copy_(value)
        yield
    finally:
        for name, value in saved.items():
            buffers[name].copy_(value)


def train_nested(
    domains: Sequence[DomainData],
    backbone_dir: Path,
    config: BudgetConfig,
    runtime: Runtime | None = None,
) -> TrainedModel:
    """Train nested levels (module docstring); the returned model holds the largest level's
    masks and statistics as ``masks`` and its BN buffers, every level in ``levels``."""
    runtime = runtime or Runtime()
    runtime.check_batch_size(config.batch_size)
    if not config.levels:
        raise ValueError("nested training needs --budgets")
    seed_everything(config.seed)
    domains = list(domains)
    setup = prepare_training(domains, backbone_dir, config, runtime)
    model, switches, groups = setup.model, setup.switches, setup.param_groups
    resolved, share_weights = setup.resolved, setup.share_weights
    costs, group = resolved.costs, resolved.group
    budgets = list(config.levels)
    optimizer = torch.optim.Adam(groups)
    step_network = NestedStepNetwork(model, switches, costs)
    network = runtime.wrap(step_network)
    rng = random.Random(config.seed)

    def plan(step: int) -> None:
        chosen = sandwich_levels(len(budgets), rng)
        step_network.step_budgets = [budget_target(config, step, budgets[j]) for j in chosen]

    def sharing(step: int) -> ExtraLoss:
        budget = budget_target(config, step, budgets[0])
        hard = [
            nested_group_masks(
                [s[k].detach().cpu() for s in switches.scores], costs, [budget], group
            )[0]
            for k in range(len(domains))
        ]
        largest = [
            torch.stack(
                [_straight_through(s[k], hard[k][b].to(s.device)) for k in range(len(hard))]
            )
            for b, s in enumerate(switches.scores)
        ]
        share = sharing_loss(config.sharing, largest, share_weights)
        return ExtraLoss(config.sharing_weight * share, {"share": float(share.detach())})

    started = time.perf_counter()
    plan(0)
    with training_batches(domains, config, runtime) as batches:
        history = train_steps(
            network,
            batches,
            optimizer,
            config.steps,
            f"nested budgets {' '.join(f'{b:g}' for b in budgets)} {config.sharing}",
            runtime=runtime,
            extra_loss=sharing if config.sharing != "none" else None,
            after_step=lambda step: plan(step + 1),
        )
    per_domain = [
        nested_group_masks([s[k].detach().cpu() for s in switches.scores], costs, budgets, group)
        for k in range(len(domains))
    ]
    level_masks = [
        [
            expand_groups(torch.stack([per_domain[k][j][b] for k in range(len(domains))]), group)
            for b in range(len(switches.scores))
        ]
        for j in range(len(budgets))
    ]
    names = set(_statistic_names(model))
    levels: list[NestedLevel] = []
    for j, budget in enumerate(budgets):
        masks = level_masks[j]

        def masks_for(k: int, masks: list[Tensor] = masks) -> list[Tensor]:
            return [m[k].float().to(runtime.device) for m in masks]

        shared_bn = {} if j == 0 else evaluate(model, domains, "test", masks_for, runtime=runtime)
        recalibrate_batchnorm(model, domains, masks_for, runtime=runtime)
        statistics = {n: b.detach().clone() for n, b in model.named_buffers() if n in names}
        levels.append(NestedLevel(budget, masks, statistics, shared_bn))
        # back to the largest level's statistics: the next level is measured with them first
        buffers = dict(model.named_buffers())
        for name, value in levels[0].statistics.items():
            buffers[name].copy_(value)
    top_group = [per_domain[k][0] for k in range(len(domains))]
    trained = TrainedModel(
        model,
        switches,
        [m.clone() for m in level_masks[0]],
        domains,
        config,
        resolved,
        Path(backbone_dir),
        time.perf_counter() - started,
        [0] * len(domains),
        [
            resolved.fractions([group * int(m.sum()) for m in top_group[k]])
            for k in range(len(domains))
        ],
        history,
        runtime,
        data=setup.data,
        backbone_data=dict(setup.seen),
        sharing_weight=config.sharing_weight,
        levels=levels,
    )
    return trained
