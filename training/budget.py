"""Budget-aware multi-domain training over a frozen backbone, projection, pruning and export.

See docs/method.md for the formulation. In short, per step and for every domain ``d``:
``CE_d`` on one batch of its own data through its straight-through masks, then

    loss = mean_d CE_d + rho * sum_{d,m} relu(cost_m(d) - beta_t)^2 + gamma * L_share

where the target ``beta_t`` falls linearly from 1 to ``beta`` over the first part of training
(gradual pruning), and export projects any domain still over ``beta`` onto the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.artifact import check_name, subnet_state_dict, write_artifact
from multidomain.costs import (
    CostMetric,
    LinearCost,
    backbone_totals,
    compact_totals,
    linear_cost,
    subnet_totals,
)
from multidomain.network import ChannelSwitches, ResNet26
from multidomain.preprocess import normalize_batch
from training.common import (
    DomainFeeder,
    command_line,
    console,
    evaluate,
    mean,
    recalibrate_batchnorm,
    seed_everything,
    training_progress,
)
from training.data import DomainData, iterate_eval
from training.pretrain import RunError, load_backbone
from training.prune import CompactParts, project_to_budget, prune_to_compact
from training.sharing import SharingVariant, check_variant, sharing_loss

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

    def domain_masks(self, d: int) -> list[Tensor]:
        return [m[d].float() for m in self.masks]


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
        if key.startswith("heads.") or ".bn" in key:
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
            parts = key.split(".")
            if ".bn" in key and parts[-2].isdigit() and int(parts[-2]) == k:
                parts[-2] = str(src)
                state[key] = weights[".".join(parts)]
            elif key.startswith(f"heads.{k}.") and same_head:
                state[key] = weights[f"heads.{src}.{parts[-1]}"]
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


def train_budget_aware(
    domains: Sequence[DomainData], backbone_dir: Path, config: BudgetConfig
) -> TrainedModel:
    seed_everything(config.seed)
    domains = list(domains)
    model = build_from_backbone(domains, backbone_dir)
    arch = model.arch
    costs = [linear_cost(arch, m) for m in config.metrics]
    lowest = max(c.min_fraction for c in costs)
    if config.budget < lowest:
        raise ValueError(
            f"budget {config.budget} is below the least a domain can cost ({lowest:.4f}: "
            "the unswitchable stem and shortcuts plus one channel per block)"
        )
    share_weights = linear_cost(arch, "params").per_channel
    switches = ChannelSwitches(len(domains), arch.full_mid_channels(), config.score_init)
    initialise_scores(switches, model, costs, config.score_init)
    for p in model.shared_parameters():
        p.requires_grad_(config.unfreeze_shared)
    groups: list[dict[str, Any]] = [
        {"params": list(switches.parameters()), "lr": config.lr_scores},
        {"params": model.domain_parameters(), "lr": config.lr_domain},
    ]
    if config.unfreeze_shared:
        groups.append({"params": model.shared_parameters(), "lr": config.lr_domain * 0.1})
    log_gamma = nn.Parameter(torch.tensor(math.log(max(config.sharing_weight, 1e-6))))
    if config.learnable_sharing_weight:
        groups.append({"params": [log_gamma], "lr": config.lr_scores})
    optimizer = torch.optim.Adam(groups)
    feeders = [
        DomainFeeder(d, config.batch_size, config.seed + 7 * k) for k, d in enumerate(domains)
    ]
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    model.train()
    started = time.perf_counter()
    with training_progress() as progress:
        task = progress.add_task(
            f"budget {config.budget} {config.sharing}", total=config.steps, stats=""
        )
        for step in range(config.steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            ce_sum, correct, count = 0.0, 0, 0
            for k, feeder in enumerate(feeders):
                images, targets = feeder.next()
                logits = model(images, k, switches.masks(k))
                ce = loss_fn(logits, targets) / len(feeders)
                ce.backward()
                ce_sum += ce.item()
                correct += int((logits.argmax(1) == targets).sum())
                count += int(targets.numel())
            masks = switches.all_masks()
            domain_costs = _stacked_costs(costs, masks)
            target = budget_target(config, step)
            budget_term = config.penalty * torch.relu(domain_costs - target).pow(2).sum()
            share = sharing_loss(config.sharing, masks, share_weights)
            gamma = (
                torch.exp(log_gamma) if config.learnable_sharing_weight else config.sharing_weight
            )
            share_term = gamma * share
            if config.learnable_sharing_weight:
                # uncertainty weighting: gamma * L - log(gamma) keeps gamma from collapsing to 0
                share_term = share_term - log_gamma
            (budget_term + share_term).backward()
            optimizer.step()
            with torch.no_grad():
                if config.learnable_sharing_weight:
                    log_gamma.clamp_(max=math.log(100.0))
            worst = float(domain_costs.detach().max())
            share_value = float(share.detach())
            history.append(
                {
                    "step": step,
                    "ce": ce_sum,
                    "share": share_value,
                    "max_cost": worst,
                    "acc": correct / count,
                }
            )
            progress.update(
                task,
                advance=1,
                stats=(
                    f"ce {ce_sum:.3f} acc {correct / count:.3f} max cost {worst:.3f} "
                    f"share {share_value:.3f} "
                    f"{count / max(time.perf_counter() - t0, 1e-9):,.0f} img/s"
                ),
            )
    hard = switches.hard_masks()
    projected = []
    for k in range(len(domains)):
        own_masks, removed = project_to_budget(
            [s[k].detach() for s in switches.scores], [m[k] for m in hard], costs, config.budget
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
    )
    _finetune_projected(trained)
    recalibrate_batchnorm(model, domains, trained.domain_masks)
    trained.wall_time_s = time.perf_counter() - started
    return trained


def _finetune_projected(trained: TrainedModel) -> None:
    """Briefly retrain BN and head of every domain whose mask the projection changed."""
    todo = [k for k, removed in enumerate(trained.projected_channels) if removed]
    if not todo or trained.config.finetune_steps == 0:
        return
    model = trained.model
    optimizer = torch.optim.Adam(model.domain_parameters(), lr=trained.config.lr_domain)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for k in todo:
        feeder = DomainFeeder(
            trained.domains[k], trained.config.batch_size, trained.config.seed + 99 + k
        )
        masks = trained.domain_masks(k)
        for _ in range(trained.config.finetune_steps):
            images, targets = feeder.next()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images, k, masks), targets).backward()
            optimizer.step()


@torch.inference_mode()
def compact_logit_difference(
    trained: TrainedModel, parts: CompactParts, split: str = "test"
) -> dict[str, float]:
    """Max |logit difference| between each domain's compact subnetwork and the masked model."""
    model = trained.model.eval()
    diffs = {}
    for k, data in enumerate(trained.domains):
        subnet = ResNet26(model.arch, [data.num_classes], [len(c) for c in parts.channels[k]])
        subnet.load_state_dict(
            subnet_state_dict(parts.domain_tensors[k], parts.shared, parts.channels[k])
        )
        subnet.eval()
        worst = 0.0
        for images, _ in iterate_eval(data, split, 256):
            x = normalize_batch(images, data.mean, data.std)
            delta = (subnet(x) - model(x, k, trained.domain_masks(k))).abs().max()
            worst = max(worst, float(delta))
        diffs[data.name] = worst
    return diffs


def artifact_target(model_store: Path, model_name: str, version: str | None) -> Path:
    """``model_store/<name>/<version>`` (version defaults to a UTC timestamp); refuses an
    existing folder so that a finished artifact is never overwritten."""
    check_name("model name", model_name)
    version = check_name("version", version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    target = Path(model_store) / model_name / version
    if target.exists():
        raise RunError(f"{target} already exists; choose another version")
    return target


def export_artifact(
    trained: TrainedModel,
    model_store: Path,
    model_name: str,
    version: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate, prune and write ``model_store/<name>/<version>``; returns path and manifest."""
    target = artifact_target(model_store, model_name, version)
    version = target.name
    model, arch, domains = trained.model, trained.model.arch, trained.domains
    val = evaluate(model, domains, "val", trained.domain_masks)
    test = evaluate(model, domains, "test", trained.domain_masks)
    parts = prune_to_compact(model, trained.masks)
    logit_diff = compact_logit_difference(trained, parts)
    backbone = backbone_totals(arch)
    compact = compact_totals(
        arch,
        parts.union_mid_channels,
        [[len(c) for c in ch] for ch in parts.channels],
        [d.num_classes for d in domains],
    )
    entries = []
    for k, data in enumerate(domains):
        mids = [len(c) for c in parts.channels[k]]
        own = subnet_totals(arch, mids, data.num_classes)
        part = subnet_totals(arch, mids)
        entries.append(
            {
                "name": data.name,
                "labels": data.labels,
                "channels": parts.channels[k],
                "image_size": arch.image_size,
                "mean": list(data.mean),
                "std": list(data.std),
                "mid_channels": mids,
                "params": own.params,
                "macs": own.macs,
                "params_fraction": part.params / backbone.params,
                "macs_fraction": part.macs / backbone.macs,
                "projected_channels": trained.projected_channels[k],
                "val_accuracy": val[data.name],
                "test_accuracy": test[data.name],
                "max_compact_logit_diff": logit_diff[data.name],
            }
        )
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "architecture": arch.to_dict(),
        "compact_mid_channels": parts.union_mid_channels,
        "compact_channel_origin": parts.union_origin,
        "budget": trained.config.budget,
        "budget_metric": trained.config.budget_metric,
        "sharing": {
            "variant": trained.config.sharing,
            "weight": trained.config.sharing_weight,
            "learnable_weight": trained.config.learnable_sharing_weight,
        },
        "backbone": {
            "params": backbone.params,
            "macs": backbone.macs,
            "run": str(trained.backbone_dir),
        },
        "compact": {"params": compact.params, "params_fraction": compact.params / backbone.params},
        "mean_val_accuracy": mean(val),
        "mean_test_accuracy": mean(test),
        "training": {
            "config": asdict(trained.config),
            "wall_time_s": round(trained.wall_time_s, 2),
        },
        "domains": entries,
    }
    write_artifact(target, manifest, parts.shared, parts.domain_tensors)
    console.print(
        f"exported {target}: compact params {compact.params:,} = "
        f"{compact.params / backbone.params:.3f} x backbone; mean test accuracy {mean(test):.4f}"
    )
    return target, manifest
