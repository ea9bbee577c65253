"""Budget-aware multi-domain training over a frozen backbone, then projection onto the budget.

See docs/method.md for the formulation. In short, per step and for every domain ``d``:
``CE_d`` on one batch of its own data through its straight-through masks, then

    loss = mean_d CE_d + rho * sum_{d,m} relu(cost_m(d) - beta_t)^2 + gamma * L_share

where the target ``beta_t(d)`` falls linearly from 1 to the domain's budget ``beta_d`` over the
first part of training (gradual pruning); after training, any domain still over its budget is
projected onto it and briefly fine-tuned. Switches, costs and the projection work in groups of
``g`` mid channels (``multidomain.groups``); the cost is parameters, MACs (``multidomain.costs``)
or the predicted latency of a measured table (``multidomain.latency``). ``training.export``
prunes and writes the artifact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.costs import DomainCost, linear_cost
from multidomain.groups import expand_groups
from multidomain.network import ChannelSwitches, ResNet26, domain_tensor_name
from training.budget_config import (
    BUDGET_METRICS,
    BudgetConfig,
    BudgetCosts,
    BudgetMetric,
    budget_costs,
)
from training.common import recalibrate_batchnorm, seed_everything
from training.data import DomainData, TrainBatches, check_same_splits, data_record
from training.errors import RunError
from training.history import StepTrace, compact_history, history_interval
from training.loop import ExtraLoss, StepNetwork, train_steps
from training.pretrain import backbone_record, load_backbone
from training.prune import project_to_budget
from training.runtime import Runtime
from training.sharing import sharing_loss

__all__ = [
    "BUDGET_METRICS",
    "BudgetConfig",
    "BudgetCosts",
    "BudgetMetric",
    "NestedLevel",
    "TrainedModel",
    "budget_costs",
    "budget_target",
    "build_from_backbone",
    "initialise_scores",
    "train_budget_aware",
]


@dataclass
class NestedLevel:
    """One level of a nested run (``training.nested``): its budget, its channel masks (per
    block, bool ``[domains, channels]``), its state by state-dict name (BatchNorm running
    statistics; with private level state also the BN affines and heads) and what it
    measured."""

    budget: float
    masks: list[Tensor]
    state: dict[str, Tensor]
    shared_bn_test: dict[str, float]  # test accuracy with the largest level's state


@dataclass
class TrainedModel:
    model: ResNet26
    switches: ChannelSwitches
    masks: list[Tensor]  # per block, bool [domains, channels]
    domains: list[DomainData]
    config: BudgetConfig
    costs: BudgetCosts
    backbone_dir: Path
    wall_time_s: float
    projected_channels: list[int]
    learned_costs: list[dict[str, float]]  # per domain, before the projection
    history: list[dict[str, float]] = field(default_factory=list)  # one row per step
    runtime: Runtime = field(default_factory=Runtime)
    data: dict[str, Any] = field(default_factory=dict)  # this run's data record
    backbone_data: dict[str, Any] = field(default_factory=dict)  # what the backbone saw
    sharing_weight: float = 0.0  # gamma at the end of training (learned, if learnable)
    projection: list[dict[str, list[list[int]]]] = field(default_factory=list)  # per domain
    compact_history: dict[str, Any] = field(default_factory=dict)  # ``training.history``
    levels: list[NestedLevel] = field(default_factory=list)  # nested runs: largest first

    @property
    def group(self) -> int:
        return self.costs.group

    def domain_masks(self, d: int) -> list[Tensor]:
        return [m[d].float().to(self.runtime.device) for m in self.masks]


def build_from_backbone(domains: Sequence[DomainData], backbone_dir: Path) -> ResNet26:
    """A multi-domain network with the backbone's shared weights; a domain the backbone was
    trained on keeps its BN and head, any other starts from the first source domain's BN."""
    record, weights = load_backbone(backbone_dir)
    try:
        arch = ArchSpec.from_dict(record["arch"])
    except (ArchitectureError, KeyError, TypeError) as exc:
        raise RunError(
            f"{backbone_dir}: unreadable architecture in the backbone record ({exc})"
        ) from None
    for data in domains:
        if data.image_size != arch.image_size:
            raise RunError(
                f"domain {data.name!r} has {data.image_size}px images but the backbone in "
                f"{backbone_dir} was built for {arch.image_size}px"
            )
    model = ResNet26(arch, [d.num_classes for d in domains])
    own = model.state_dict()
    source = list(record.get("domains", []))
    labels = record.get("labels", {})
    state: dict[str, Tensor] = {}
    for key, tensor in weights.items():
        if domain_tensor_name(key) is not None:
            continue
        if key not in own or own[key].shape != tensor.shape:
            raise RunError(
                f"{backbone_dir}: backbone tensor {key} does not fit architecture {arch.to_dict()}"
            )
        state[key] = tensor
    for k, data in enumerate(domains):
        src = source.index(data.name) if data.name in source else 0
        same_head = data.name in source and labels.get(data.name) == data.labels
        for key in own:
            name = domain_tensor_name(key)
            if name is not None and name.domain == k and (same_head or not name.is_head):
                state[key] = weights[name.for_domain(src)]
    model.load_state_dict(state, strict=False)
    return model


def _stacked_costs(
    costs: Sequence[DomainCost], group_masks: Sequence[Tensor], group: int
) -> Tensor:
    """``[metrics, domains]`` cost fractions of straight-through group masks (differentiable)."""
    channels = [group * m.sum(dim=1) for m in group_masks]
    return torch.stack([cost.soft_fraction(channels) for cost in costs])


def _group_cost(costs: Sequence[DomainCost], arch: ArchSpec, group: int) -> list[float]:
    """What dropping one group from an otherwise full block saves, per block, summed over the
    costs (a cost-per-group for ranking)."""
    full = arch.full_mid_channels()
    saving = []
    for b in range(len(full)):
        fewer = list(full)
        fewer[b] -= group
        saving.append(sum(c.fraction(full) - c.fraction(fewer) for c in costs))
    return saving


@torch.no_grad()
def initialise_scores(
    switches: ChannelSwitches, model: ResNet26, costs: Sequence[DomainCost], scale: float
) -> None:
    """Spread each domain's initial scores over ``scale * [0.25, 1.75]`` by the rank of each
    group's importance per unit of cost, so that pruning proceeds gradually, cheapest
    importance first, instead of every group crossing zero at the same step. A channel's
    importance for a domain is ``|gamma| * ||W_conv2[:, c]||`` (its BN scale in that domain
    times the size of its output weights); a group's is the sum over its channels."""
    group = switches.group
    per_group_cost = [max(c, 1e-12) for c in _group_cost(costs, model.arch, group)]
    for d in range(model.num_domains):
        ratios = []
        for b, block in enumerate(model.block_list()):
            bn1 = block.bn1[d]
            assert isinstance(bn1, nn.BatchNorm2d)
            gamma = bn1.weight.abs()
            out_norm = block.conv2.weight.flatten(start_dim=2).norm(dim=(0, 2))
            importance = (gamma * out_norm).view(-1, group).sum(dim=1)
            ratios.append(importance / per_group_cost[b])
        flat = torch.cat(ratios)
        quantile = torch.empty_like(flat)
        quantile[flat.argsort()] = torch.linspace(0.0, 1.0, flat.numel())
        start = 0
        for b, ratio in enumerate(ratios):
            part = quantile[start : start + ratio.numel()]
            switches.scores[b][d] = scale * (0.25 + 1.5 * part)
            start += ratio.numel()


def budget_target(config: BudgetConfig, step: int, budget: float | None = None) -> float:
    """Linear schedule from 1 at step 0 to ``budget`` (default: the config's) at
    ``anneal_fraction`` of the steps."""
    budget = config.budget if budget is None else budget
    progress = min(1.0, step / max(1.0, config.anneal_fraction * config.steps))
    return 1.0 - (1.0 - budget) * progress


@dataclass
class TrainingSetup:
    """What budget-aware training (one budget or nested levels) starts from: the model built
    from the backbone, its resolved costs, the switches with their initial scores, the optimiser's
    parameter groups and each channel group's parameter weight for the sharing loss."""

    model: ResNet26
    resolved: BudgetCosts
    switches: ChannelSwitches
    param_groups: list[dict[str, Any]]
    share_weights: list[float]
    data: dict[str, Any]  # this run's data record
    seen: dict[str, Any]  # the backbone's data record


def prepare_training(
    domains: Sequence[DomainData], backbone_dir: Path, config: BudgetConfig, runtime: Runtime
) -> TrainingSetup:
    """Refuse a backbone pre-trained on other splits (``check_same_splits``), build the model
    from it, place it, initialise the switches and freeze (or not) the shared weights; the
    optimiser groups: scores, domain parameters, shared ones if unfrozen."""
    seen: dict[str, Any] = backbone_record(backbone_dir).get("data") or {}
    data = data_record(domains, config.split_seed)
    check_same_splits(seen, data, Path(backbone_dir))
    model = runtime.place(build_from_backbone(domains, backbone_dir))
    arch = model.arch
    resolved = budget_costs(arch, config)
    share_weights = [resolved.group * w for w in linear_cost(arch, "params").per_channel]
    switches = ChannelSwitches(
        len(domains), arch.full_mid_channels(), config.score_init, resolved.group
    )
    switches.to(runtime.device)
    initialise_scores(switches, model, resolved.costs, config.score_init)
    for p in model.shared_parameters():
        p.requires_grad_(config.unfreeze_shared)
    groups: list[dict[str, Any]] = [
        {"params": list(switches.parameters()), "lr": config.lr_scores},
        {"params": model.domain_parameters(), "lr": config.lr_domain},
    ]
    if config.unfreeze_shared:
        groups.append({"params": model.shared_parameters(), "lr": config.lr_shared})
    return TrainingSetup(model, resolved, switches, groups, share_weights, data, seen)


def training_batches(
    domains: Sequence[DomainData], config: BudgetConfig, runtime: Runtime
) -> TrainBatches:
    """Every domain's training batches for budget-aware training, each domain's order seeded
    from the training seed."""
    seeds = {k: config.seed + 7 * k for k in range(len(domains))}
    return TrainBatches(
        dict(enumerate(domains)), config.batch_size, seeds, **runtime.loader_options()
    )


def train_budget_aware(
    domains: Sequence[DomainData],
    backbone_dir: Path,
    config: BudgetConfig,
    runtime: Runtime | None = None,
) -> TrainedModel:
    """Train, project and fine-tune (module docstring); in a distributed run every rank trains
    on its share of each global batch (``config.batch_size`` over all ranks) and ends with the
    same model. Refuses (``DataError``) a backbone pre-trained on other splits of a domain it
    shares with ``domains`` (``check_same_splits``)."""
    runtime = runtime or Runtime()
    runtime.check_batch_size(config.batch_size)
    seed_everything(config.seed)
    domains = list(domains)
    names = [d.name for d in domains]
    config.check_domains(names)
    setup = prepare_training(domains, backbone_dir, config, runtime)
    seen, data = setup.seen, setup.data
    model, switches, groups = setup.model, setup.switches, setup.param_groups
    resolved, share_weights = setup.resolved, setup.share_weights
    costs, group = resolved.costs, resolved.group
    budgets = [config.budget_for(name) for name in names]
    log_gamma = nn.Parameter(
        torch.tensor(math.log(max(config.sharing_weight, 1e-6)), device=runtime.device)
    )
    if config.learnable_sharing_weight:
        groups.append({"params": [log_gamma], "lr": config.lr_scores})
    optimizer = torch.optim.Adam(groups)
    step_network = StepNetwork(model, switches.masks, switches)
    network = runtime.wrap(step_network)
    traces: list[StepTrace] = []

    def sharing_weight() -> float:
        """gamma now: learned (``exp(log_gamma)``) or fixed."""
        if config.learnable_sharing_weight:
            return float(log_gamma.detach().exp())
        return config.sharing_weight

    def budget_and_sharing(step: int) -> ExtraLoss:
        masks = switches.group_masks()
        domain_costs = _stacked_costs(costs, masks, group)
        target = torch.tensor(
            [budget_target(config, step, b) for b in budgets], device=domain_costs.device
        )
        budget_term = config.penalty * torch.relu(domain_costs - target).pow(2).sum()
        share = sharing_loss(config.sharing, masks, share_weights)
        gamma = torch.exp(log_gamma) if config.learnable_sharing_weight else config.sharing_weight
        share_term = gamma * share
        if config.learnable_sharing_weight:
            # uncertainty weighting: gamma * L - log(gamma) keeps gamma from collapsing to 0
            share_term = share_term - log_gamma
        costs_now = domain_costs.detach().cpu()
        traces.append(
            StepTrace(
                costs_now.tolist(),
                target.tolist(),
                float(share.detach()),
                sharing_weight(),
                float(budget_term.detach()),
            )
        )
        stats = {"share": traces[-1].sharing_loss, "max_cost": float(costs_now.max())}
        return ExtraLoss(budget_term + share_term, stats)

    @torch.no_grad()
    def clamp_sharing_weight(step: int) -> None:
        if config.learnable_sharing_weight:
            log_gamma.clamp_(max=math.log(100.0))

    started = time.perf_counter()
    with training_batches(domains, config, runtime) as batches:
        history = train_steps(
            network,
            batches,
            optimizer,
            config.steps,
            f"budget {config.budget} {config.sharing}",
            runtime=runtime,
            extra_loss=budget_and_sharing,
            after_step=clamp_sharing_weight,
        )
    hard = [m.cpu() for m in switches.hard_group_masks()]
    learned_hard = [m.clone() for m in hard]
    learned, projected = [], []
    for k in range(len(domains)):
        learned.append(resolved.fractions([group * int(m[k].sum()) for m in hard]))
        own_masks, removed = project_to_budget(
            [s[k].detach().cpu() for s in switches.scores],
            [m[k] for m in hard],
            costs,
            budgets[k],
            group,
        )
        for b, mask in enumerate(own_masks):
            hard[b][k] = mask
        projected.append(removed * group)
    trained = TrainedModel(
        model,
        switches,
        [expand_groups(m, group).clone() for m in hard],
        domains,
        config,
        resolved,
        Path(backbone_dir),
        time.perf_counter() - started,
        projected,
        learned,
        history,
        runtime,
        data,
        dict(seen),
        float(log_gamma.detach().exp())
        if config.learnable_sharing_weight
        else config.sharing_weight,
        [_projection_changes(learned_hard, hard, k) for k in range(len(domains))],
        compact_history(
            history,
            traces,
            names,
            [cost.name for cost in costs],
            history_interval(config.steps, config.history_every),
        ),
    )
    step_network.masks_for = trained.domain_masks  # the projected masks from here on
    _finetune_projected(trained, network)
    recalibrate_batchnorm(model, domains, trained.domain_masks, seed=config.seed, runtime=runtime)
    trained.wall_time_s = time.perf_counter() - started
    return trained


def _projection_changes(
    before: Sequence[Tensor], after: Sequence[Tensor], k: int
) -> dict[str, list[list[int]]]:
    """Per block, the group indices the projection switched off (``removed``) and back on
    (``restored``, a block's best group when training had left it none) for domain ``k``."""
    pairs = list(zip(before, after, strict=True))
    return {
        "removed": [torch.nonzero(b[k] & ~a[k]).flatten().tolist() for b, a in pairs],
        "restored": [torch.nonzero(a[k] & ~b[k]).flatten().tolist() for b, a in pairs],
    }


def _finetune_projected(trained: TrainedModel, network: nn.Module) -> None:
    """Briefly retrain BN and head of every domain whose mask the projection changed;
    ``network`` runs the model under the projected masks."""
    todo = [k for k, removed in enumerate(trained.projected_channels) if removed]
    if not todo or trained.config.finetune_steps == 0:
        return
    config, runtime = trained.config, trained.runtime
    optimizer = torch.optim.Adam(trained.model.domain_parameters(), lr=config.lr_domain)
    for k in todo:
        domain = {k: trained.domains[k]}
        seeds = {k: config.seed + 99 + k}
        with TrainBatches(domain, config.batch_size, seeds, **runtime.loader_options()) as batches:
            train_steps(
                network,
                batches,
                optimizer,
                config.finetune_steps,
                f"fine-tune {trained.domains[k].name}",
                runtime=runtime,
            )
