"""Budget-aware multi-domain training over a frozen backbone, then projection onto the budget.

See docs/method.md for the formulation. In short, per step and for every domain ``d``:
``CE_d`` on one batch of its own data through its straight-through masks, then

    loss = mean_d CE_d + rho * sum_{d,m} relu(cost_m(d) - beta_t)^2 + gamma * L_share

where the target ``beta_t`` falls linearly from 1 to ``beta`` over the first part of training
(gradual pruning); after training, any domain still over ``beta`` is projected onto the budget
and briefly fine-tuned. ``training.export`` prunes and writes the artifact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.costs import CostMetric, LinearCost, linear_cost
from multidomain.network import ChannelSwitches, ResNet26, domain_tensor_name
from training.common import recalibrate_batchnorm, seed_everything
from training.data import DomainData, TrainBatches
from training.errors import RunError
from training.loop import ExtraLoss, StepNetwork, train_steps
from training.pretrain import load_backbone
from training.prune import project_to_budget
from training.runtime import Runtime
from training.sharing import SharingVariant, check_variant, sharing_loss

__all__ = [
    "BUDGET_METRICS",
    "BudgetConfig",
    "BudgetMetric",
    "TrainedModel",
    "budget_target",
    "build_from_backbone",
    "check_budget_reachable",
    "initialise_scores",
    "train_budget_aware",
]

BudgetMetric = Literal["params", "macs", "both"]
BUDGET_METRICS = ("params", "macs", "both")


@dataclass(frozen=True)
class BudgetConfig:
    budget: float = 0.5
    budget_metric: BudgetMetric = "both"
    sharing: SharingVariant = "union"
    sharing_weight: float = 5.0
    learnable_sharing_weight: bool = False
    steps: int = 300
    batch_size: int = 32
    lr_scores: float = 0.02
    lr_domain: float = 2e-3
    penalty: float = 100.0
    anneal_fraction: float = 0.6
    score_init: float = 1.0
    unfreeze_shared: bool = False
    finetune_steps: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.budget_metric not in BUDGET_METRICS:
            raise ValueError(
                f"unknown budget metric {self.budget_metric!r}; "
                f"choose one of {', '.join(BUDGET_METRICS)}"
            )
        check_variant(self.sharing)
        if self.sharing_weight < 0:
            raise ValueError(f"sharing weight must be >= 0, got {self.sharing_weight}")
        if not 0 < self.anneal_fraction <= 1 or self.penalty <= 0:
            raise ValueError("anneal fraction must be in (0, 1] and the penalty > 0")
        if self.steps < 1 or self.batch_size < 1 or self.finetune_steps < 0:
            raise ValueError("steps and batch size must be >= 1, fine-tune steps >= 0")

    @property
    def metrics(self) -> tuple[CostMetric, ...]:
        return ("params", "macs") if self.budget_metric == "both" else (self.budget_metric,)


@dataclass
class TrainedModel:
    model: ResNet26
    switches: ChannelSwitches
    masks: list[Tensor]  # per block, bool [domains, channels]
    domains: list[DomainData]
    config: BudgetConfig
    backbone_dir: Path
    wall_time_s: float
    projected_channels: list[int]
    history: list[dict[str, float]] = field(default_factory=list)
    runtime: Runtime = field(default_factory=Runtime)

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


def _stacked_costs(costs: Sequence[LinearCost], masks: Sequence[Tensor]) -> Tensor:
    """``[metrics, domains]`` cost fractions of straight-through masks (differentiable)."""
    rows = []
    for cost in costs:
        used = cost.fixed + sum(
            c * m.sum(dim=1) for c, m in zip(cost.per_channel, masks, strict=True)
        )
        rows.append(torch.as_tensor(used) / cost.full)
    return torch.stack(rows)


@torch.no_grad()
def initialise_scores(
    switches: ChannelSwitches, model: ResNet26, costs: Sequence[LinearCost], scale: float
) -> None:
    """Spread each domain's initial scores over ``scale * [0.25, 1.75]`` by the rank of the
    channel's importance per unit of cost, so that pruning proceeds gradually, cheapest
    importance first, instead of every channel crossing zero at the same step. A channel's
    importance for a domain is ``|gamma| * ||W_conv2[:, c]||`` (its BN scale in that domain
    times the size of its output weights)."""
    per_channel_cost = [
        sum(cost.per_channel[b] / cost.full for cost in costs) for b in range(len(model.blocks))
    ]
    for d in range(model.num_domains):
        ratios = []
        for b, block in enumerate(model.block_list()):
            bn1 = block.bn1[d]
            assert isinstance(bn1, nn.BatchNorm2d)
            gamma = bn1.weight.abs()
            out_norm = block.conv2.weight.flatten(start_dim=2).norm(dim=(0, 2))
            ratios.append(gamma * out_norm / per_channel_cost[b])
        flat = torch.cat(ratios)
        quantile = torch.empty_like(flat)
        quantile[flat.argsort()] = torch.linspace(0.0, 1.0, flat.numel())
        start = 0
        for b, ratio in enumerate(ratios):
            part = quantile[start : start + ratio.numel()]
            switches.scores[b][d] = scale * (0.25 + 1.5 * part)
            start += ratio.numel()


def budget_target(config: BudgetConfig, step: int) -> float:
    """Linear schedule from 1 at step 0 to ``beta`` at ``anneal_fraction`` of the steps."""
    progress = min(1.0, step / max(1.0, config.anneal_fraction * config.steps))
    return 1.0 - (1.0 - config.budget) * progress


def check_budget_reachable(config: BudgetConfig, arch: ArchSpec) -> None:
    """Refuse a budget below the least a domain of ``arch`` can cost (checked before any data
    is loaded)."""
    lowest = max(linear_cost(arch, m).min_fraction for m in config.metrics)
    if config.budget < lowest:
        raise ValueError(
            f"budget {config.budget} is below the least a domain can cost ({lowest:.4f}: "
            "the unswitchable stem and shortcuts plus one channel per block)"
        )


def train_budget_aware(
    domains: Sequence[DomainData],
    backbone_dir: Path,
    config: BudgetConfig,
    runtime: Runtime | None = None,
) -> TrainedModel:
    """Train, project and fine-tune (module docstring); in a distributed run every rank trains
    on its share of each global batch (``config.batch_size`` over all ranks) and ends with the
    same model."""
    runtime = runtime or Runtime()
    runtime.check_batch_size(config.batch_size)
    seed_everything(config.seed)
    domains = list(domains)
    model = runtime.place(build_from_backbone(domains, backbone_dir))
    arch = model.arch
    check_budget_reachable(config, arch)
    costs = [linear_cost(arch, m) for m in config.metrics]
    share_weights = linear_cost(arch, "params").per_channel
    switches = ChannelSwitches(len(domains), arch.full_mid_channels(), config.score_init)
    switches.to(runtime.device)
    initialise_scores(switches, model, costs, config.score_init)
    for p in model.shared_parameters():
        p.requires_grad_(config.unfreeze_shared)
    groups: list[dict[str, Any]] = [
        {"params": list(switches.parameters()), "lr": config.lr_scores},
        {"params": model.domain_parameters(), "lr": config.lr_domain},
    ]
    if config.unfreeze_shared:
        groups.append({"params": model.shared_parameters(), "lr": config.lr_domain * 0.1})
    log_gamma = nn.Parameter(
        torch.tensor(math.log(max(config.sharing_weight, 1e-6)), device=runtime.device)
    )
    if config.learnable_sharing_weight:
        groups.append({"params": [log_gamma], "lr": config.lr_scores})
    optimizer = torch.optim.Adam(groups)
    seeds = {k: config.seed + 7 * k for k in range(len(domains))}
    step_network = StepNetwork(model, switches.masks, switches)
    network = runtime.wrap(step_network)

    def budget_and_sharing(step: int) -> ExtraLoss:
        masks = switches.all_masks()
        domain_costs = _stacked_costs(costs, masks)
        target = budget_target(config, step)
        budget_term = config.penalty * torch.relu(domain_costs - target).pow(2).sum()
        share = sharing_loss(config.sharing, masks, share_weights)
        gamma = torch.exp(log_gamma) if config.learnable_sharing_weight else config.sharing_weight
        share_term = gamma * share
        if config.learnable_sharing_weight:
            # uncertainty weighting: gamma * L - log(gamma) keeps gamma from collapsing to 0
            share_term = share_term - log_gamma
        stats = {"share": float(share.detach()), "max_cost": float(domain_costs.detach().max())}
        return ExtraLoss(budget_term + share_term, stats)

    @torch.no_grad()
    def clamp_sharing_weight(step: int) -> None:
        if config.learnable_sharing_weight:
            log_gamma.clamp_(max=math.log(100.0))

    started = time.perf_counter()
    with TrainBatches(
        dict(enumerate(domains)), config.batch_size, seeds, **runtime.loader_options()
    ) as batches:
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
    hard = [m.cpu() for m in switches.hard_masks()]
    projected = []
    for k in range(len(domains)):
        own_masks, removed = project_to_budget(
            [s[k].detach().cpu() for s in switches.scores],
            [m[k] for m in hard],
            costs,
            config.budget,
        )
        for b, mask in enumerate(own_masks):
            hard[b][k] = mask
        projected.append(removed)
    trained = TrainedModel(
        model,
        switches,
        [m.clone() for m in hard],
        domains,
        config,
        Path(backbone_dir),
        time.perf_counter() - started,
        projected,
        history,
        runtime,
    )
    step_network.masks_for = trained.domain_masks  # the projected masks from here on
    _finetune_projected(trained, network)
    recalibrate_batchnorm(model, domains, trained.domain_masks, runtime=runtime)
    trained.wall_time_s = time.perf_counter() - started
    return trained


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
