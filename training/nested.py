"""Nested budgets from one training run (``--budgets 1.0 0.75 0.5 0.25``).

Every domain has one score per group of ``g`` mid channels. The mask of level ``b`` drops the
domain's groups one at a time, the least score per unit of the binding cost first
(``nested_group_masks``), until every capped cost is at or below ``b`` (never a block's last
group). The drop order is the same for every level, so a lower level's kept set is contained in
a higher level's: the masks are nested by construction.

Training follows the sandwich rule of slimmable networks: each step runs every domain's batch
through the largest, the smallest and one random middle level (the same for every domain and
rank), with the levels' budgets annealed from 1 like the single budget (``budget_target``).
A level's mask is hard in the forward pass; its gradient reaches the scores through
``sigmoid(score - threshold)``, the threshold halfway between the highest dropped and the
lowest kept score above it, so cross-entropy ranks the groups. The sharing loss acts on the
largest level's masks, the only ones pruning depends on. Then, as after the single budget's
projection, ``finetune_steps`` steps with every level's final masks fixed train the BN affines
and heads only, every level at every step (``NestedStepNetwork.fixed_masks``).

Per-level state (``BudgetConfig.level_state``): with ``private`` (the default, the switchable
BatchNorm of slimmable networks, extended to the heads) every level below the largest trains its
own copy of each domain's BatchNorm affines and classifier head, initialised from the
backbone's; with ``shared`` all levels train the largest level's. The running statistics are
recalibrated per level after training (forward passes in train mode on training batches) and
kept per level either way.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

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
from training.data import DomainData, TrainBatches
from training.loop import ExtraLoss, train_steps
from training.prune import below_floor
from training.runtime import Runtime
from training.sharing import sharing_loss

__all__ = [
    "NestedLevel",
    "NestedStepNetwork",
    "level_state",
    "nested_group_masks",
    "sandwich_levels",
    "train_nested",
]


def nested_group_masks(
    scores: Sequence[Tensor], costs: Sequence[DomainCost], budgets: Sequence[float], group: int
) -> list[list[Tensor]]:
    """One domain's group masks (per block, bool) for every budget, largest budget first.

    From the full mask, groups are dropped one at a time in one order, and level ``b`` is the
    first mask whose every cost is at or below ``b``, so the levels are nested. The order is
    cost-aware: each drop takes the group with the lowest ``score - log(saving)``, ``saving``
    being what dropping a group of its block saves of the cost now highest (the one that binds
    every remaining level), i.e. the least score per unit of binding cost; never a block's last
    group. Within a block the order is by score."""
    masks = [torch.ones(s.numel(), dtype=torch.bool) for s in scores]
    values = [s.detach().double().cpu() for s in scores]
    pending = sorted(budgets, reverse=True)
    levels: list[list[Tensor]] = []
    while True:
        channels = [group * float(m.sum()) for m in masks]
        fractions = [cost.fraction(channels) for cost in costs]
        while pending and max(fractions) <= pending[0] + 1e-12:
            levels.append([m.clone() for m in masks])
            pending.pop(0)
        if not pending:
            return levels
        binding = costs[max(range(len(costs)), key=fractions.__getitem__)]
        best: tuple[float, int, int] | None = None
        for b, (mask, value) in enumerate(zip(masks, values, strict=True)):
            if int(mask.sum()) <= 1:
                continue
            fewer = list(channels)
            fewer[b] -= group
            saving = max(binding.fraction(channels) - binding.fraction(fewer), 1e-12)
            kept = torch.nonzero(mask).flatten()
            index = int(kept[int(value[kept].argmin())])
            key = float(value[index]) - math.log(saving)
            if best is None or key < best[0]:
                best = (key, b, index)
        if best is None:
            raise below_floor(pending[0], costs, group)
        masks[best[1]][best[2]] = False


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


def domain_parameter_names(model: ResNet26) -> list[str]:
    """The state-dict names of every domain's BatchNorm affines and head."""
    own = {id(p) for p in model.domain_parameters()}
    return [name for name, p in model.named_parameters() if id(p) in own]


class NestedStepNetwork(nn.Module):
    """What a nested training step runs: a domain's batch through each of the step's levels,
    logits stacked ``[levels, N, classes]``. ``switches`` are a submodule (their scores are
    trained); with ``private`` levels, ``level_parameters[j - 1]`` holds level ``j``'s own BN
    affines and heads (``domain_parameter_names`` order). ``step_levels`` (level indices) and
    ``step_budgets`` are set before each step."""

    def __init__(
        self,
        model: ResNet26,
        switches: ChannelSwitches,
        costs: Sequence[DomainCost],
        levels: int = 1,
        private: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.switches = switches
        self.costs = tuple(costs)
        self.parameter_names = domain_parameter_names(model)
        own = dict(model.named_parameters())
        self.level_parameters = nn.ModuleList(
            nn.ParameterList(
                nn.Parameter(own[name].detach().clone()) for name in self.parameter_names
            )
            for _ in range(levels - 1 if private else 0)
        )
        self.step_levels: list[int] = []
        self.step_budgets: list[float] = []
        #: when set, ``fixed_masks[j][k]``: level ``j``'s final per-channel masks of domain ``k``
        #: (per block), used instead of the scores' (which then train no more)
        self.fixed_masks: list[list[list[Tensor]]] | None = None

    def level_tensors(self, level: int) -> dict[str, Tensor]:
        """Level ``level``'s own BN affines and heads by state-dict name (empty: the model's)."""
        if level == 0 or not self.level_parameters:
            return {}
        own = self.level_parameters[level - 1]
        assert isinstance(own, nn.ParameterList)
        return dict(zip(self.parameter_names, own, strict=True))

    def level_masks(self, domain: int) -> list[list[Tensor]]:
        """Straight-through per-channel masks of ``domain`` at each of the step's budgets (the
        fixed masks of the step's levels, when set)."""
        if self.fixed_masks is not None:
            return [self.fixed_masks[j][domain] for j in self.step_levels]
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
        logits = []
        for level, masks in zip(self.step_levels, self.level_masks(domain), strict=True):
            own = self.level_tensors(level)
            if own:
                logits.append(functional_call(self.model, own, (images, domain, masks)))
            else:
                logits.append(self.model(images, domain, masks))
        return torch.stack(logits)


def _statistic_names(model: ResNet26) -> list[str]:
    return [
        name for name, _ in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    ]


def _state_tensors(model: ResNet26) -> dict[str, Tensor]:
    """The model's parameters and buffers by state-dict name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@torch.no_grad()
def _load_state(model: ResNet26, state: dict[str, Tensor]) -> None:
    tensors = _state_tensors(model)
    for name, value in state.items():
        tensors[name].copy_(value)


@contextmanager
def level_state(model: ResNet26, level: NestedLevel) -> Iterator[None]:
    """The model with ``level``'s state (BN statistics; affines and heads if private), the
    previous state restored after."""
    tensors = _state_tensors(model)
    saved = {name: tensors[name].detach().clone() for name in level.state}
    try:
        _load_state(model, level.state)
        yield
    finally:
        _load_state(model, saved)


def _finetune_levels(
    step_network: NestedStepNetwork,
    network: nn.Module,
    level_masks: Sequence[Sequence[Tensor]],
    domains: Sequence[DomainData],
    config: BudgetConfig,
    runtime: Runtime,
) -> None:
    """``config.finetune_steps`` steps of every level under its final masks (``level_masks[j]``,
    per block ``[domains, channels]``), training BN affines and heads only."""
    if config.finetune_steps == 0:
        return
    step_network.fixed_masks = [
        [[m[k].float().to(runtime.device) for m in masks] for k in range(len(domains))]
        for masks in level_masks
    ]
    step_network.step_levels = list(range(len(level_masks)))
    own = [*step_network.model.domain_parameters(), *step_network.level_parameters.parameters()]
    optimizer = torch.optim.Adam(own, lr=config.lr_domain)
    seeds = {k: config.seed + 99 + k for k in range(len(domains))}
    try:
        with TrainBatches(
            dict(enumerate(domains)), config.batch_size, seeds, **runtime.loader_options()
        ) as batches:
            train_steps(
                network,
                batches,
                optimizer,
                config.finetune_steps,
                "fine-tune every level",
                runtime=runtime,
            )
    finally:
        step_network.fixed_masks = None


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
    private = config.level_state == "private"
    step_network = NestedStepNetwork(model, switches, costs, len(budgets), private)
    step_network.to(runtime.device)
    groups[1]["params"] = [*groups[1]["params"], *step_network.level_parameters.parameters()]
    optimizer = torch.optim.Adam(groups)
    network = runtime.wrap(step_network)
    rng = random.Random(config.seed)

    def plan(step: int) -> None:
        chosen = sandwich_levels(len(budgets), rng)
        step_network.step_levels = chosen
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
    _finetune_levels(step_network, network, level_masks, domains, config, runtime)
    names = set(_statistic_names(model))
    own_names = set(step_network.parameter_names) if private else set()
    levels: list[NestedLevel] = []
    for j, budget in enumerate(budgets):
        masks = level_masks[j]

        def masks_for(k: int, masks: list[Tensor] = masks) -> list[Tensor]:
            return [m[k].float().to(runtime.device) for m in masks]

        # measured with the largest level's state first (``test_accuracy_shared_bn``)
        shared_bn = {} if j == 0 else evaluate(model, domains, "test", masks_for, runtime=runtime)
        _load_state(model, {n: t.detach() for n, t in step_network.level_tensors(j).items()})
        recalibrate_batchnorm(model, domains, masks_for, runtime=runtime)
        state = {
            n: t.detach().clone()
            for n, t in _state_tensors(model).items()
            if n in names or n in own_names
        }
        levels.append(NestedLevel(budget, masks, state, shared_bn))
        _load_state(model, levels[0].state)  # back to the largest level's
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
