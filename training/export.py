"""Export: evaluate a trained model, prune the channels no domain uses and write the artifact
(``model_store/<name>/<version>``, via ``multidomain.artifact.write_artifact``).

Like timm's ``clean_checkpoint``, this reduces training state to what serving needs: no switch
scores, no optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidomain.arch import ArchSpec
from multidomain.artifact import check_name, subnet_state_dict, write_artifact
from multidomain.costs import backbone_totals, compact_totals, subnet_totals
from multidomain.fold import (
    DomainFold,
    channels_last_weights,
    fold_network,
    fold_weights,
)
from multidomain.groups import cpu_capability
from multidomain.latency import time_networks
from multidomain.network import ResNet26
from multidomain.preprocess import normalize_batch
from multidomain.serving import ServingSettings
from multidomain.stats import mean
from training.budget import NestedLevel, TrainedModel
from training.common import command_line, console, evaluate
from training.data import iterate_eval
from training.errors import RunError
from training.nested import level_state
from training.protocol import protocol_of
from training.prune import CompactParts, prune_to_compact

__all__ = [
    "TimingConfig",
    "artifact_target",
    "compact_logit_difference",
    "export_artifact",
    "measure_latency",
]


@torch.inference_mode()
def compact_logit_difference(
    trained: TrainedModel,
    parts: CompactParts,
    split: str = "test",
    masks_for: Callable[[int], list[Tensor]] | None = None,
) -> dict[str, float]:
    """Max |logit difference| between each domain's compact subnetwork and the masked model
    (under ``masks_for``, default the trained masks)."""
    masks_for = masks_for or trained.domain_masks
    model, device = trained.model.eval(), trained.runtime.device
    diffs = {}
    for k, data in enumerate(trained.domains):
        subnet = ResNet26(model.arch, [data.num_classes], [len(c) for c in parts.channels[k]])
        subnet.load_state_dict(
            subnet_state_dict(parts.domain_tensors[k], parts.shared, parts.channels[k])
        )
        subnet.to(device).eval()
        worst = 0.0
        with trained.runtime.full_precision():
            for images, _ in iterate_eval(data, split, 256):
                x = normalize_batch(images.to(device), data.mean, data.std)
                delta = (subnet(x) - model(x, k, masks_for(k))).abs().max()
                worst = max(worst, float(delta))
        diffs[data.name] = worst
    return diffs


def artifact_target(model_store: Path, model_name: str, version: str | None) -> Path:
    """``model_store/<name>/<version>`` (version defaults to a UTC timestamp); refuses an
    existing folder so that a finished artifact is never overwritten."""
    check_name("model name", model_name)
    version = check_name("version", version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
    target = Path(model_store) / model_name / version
    if target.exists():
        raise RunError(f"{target} already exists; choose another version")
    return target


@dataclass(frozen=True)
class TimingConfig:
    """How the export measures every domain's served forward time against the unpruned
    backbone's: batch sizes, alternating repeats (median), torch threads (default: the
    servers', ``MDP_TORCH_THREADS``)."""

    batch_sizes: tuple[int, ...] = (1, 32)
    repeats: int = 20
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.repeats < 1:
            raise ValueError("timing batch sizes and repeats must be >= 1")

    @property
    def torch_threads(self) -> int:
        return ServingSettings.load(None).torch_threads if self.threads is None else self.threads


def measure_latency(
    trained: TrainedModel, parts: CompactParts, timing: TimingConfig
) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """Every domain's served network (folded from the compact parts, as the servers fold it)
    timed alternately with the unpruned backbone's; the backbone's ms per batch size and per
    domain its measured (and, with a latency table, predicted) times and fractions."""
    arch = trained.model.arch
    shared = channels_last_weights(parts.shared)
    first = trained.domains[0]
    networks: dict[str, Callable[[Tensor], object]] = {
        _BACKBONE: fold_network(trained.model, first.mean, first.std, 0)
    }
    for k, data in enumerate(trained.domains):
        fold = DomainFold.from_tensors(
            arch, parts.domain_tensors[k], parts.channels[k], data.mean, data.std
        )
        networks[data.name] = fold_weights(arch, shared, fold)
    times = time_networks(
        networks, arch.image_size, timing.batch_sizes, timing.repeats, timing.torch_threads
    )
    table = trained.costs.table
    backbone_ms = {b: t[_BACKBONE] for b, t in times.items()}
    entries = []
    for k, data in enumerate(trained.domains):
        mids = [len(c) for c in parts.channels[k]]
        entry: dict[str, Any] = {
            "measured_ms": {str(b): round(t[data.name], 4) for b, t in times.items()},
            "measured_fraction": {
                str(b): round(t[data.name] / backbone_ms[b], 4) for b, t in times.items()
            },
        }
        if table is not None:
            entry["predicted_fraction"] = {
                str(b): round(table.predicted_ms(b, mids) / table.backbone_ms[b], 4)
                for b in table.batch_sizes
            }
        entries.append(entry)
    return backbone_ms, entries


_BACKBONE = "\0backbone"


def export_artifact(
    trained: TrainedModel,
    model_store: Path,
    model_name: str,
    version: str | None = None,
    timing: TimingConfig | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate, prune, time and write ``model_store/<name>/<version>``; returns path and
    manifest. Every domain must hold its budget (checked again here, exactly). In a distributed
    run every rank evaluates its share; only rank 0 prunes, times and writes (the others return
    an empty manifest)."""
    timing = timing or TimingConfig()
    target = artifact_target(model_store, model_name, version)
    version = target.name
    model, arch, domains = trained.model, trained.model.arch, trained.domains
    config, resolved = trained.config, trained.costs
    runtime = trained.runtime
    val = evaluate(model, domains, "val", trained.domain_masks, runtime=runtime)
    test = evaluate(model, domains, "test", trained.domain_masks, runtime=runtime)
    level_accuracies = [_level_accuracies(trained, level) for level in trained.levels]
    if not runtime.is_main:
        return target, {}
    mean_test = mean(test.values())
    parts = prune_to_compact(model, trained.masks)
    logit_diff = compact_logit_difference(trained, parts)
    backbone = backbone_totals(arch)
    compact = compact_totals(
        arch,
        parts.union_mid_channels,
        [[len(c) for c in ch] for ch in parts.channels],
        [d.num_classes for d in domains],
    )
    console.print("timing every domain's served network against the backbone's")
    backbone_ms, latency = measure_latency(trained, parts, timing)
    seen = dict(trained.backbone_data.get("domains", {}))
    entries = []
    for k, data in enumerate(domains):
        mids = [len(c) for c in parts.channels[k]]
        budget = config.budget_for(data.name)
        capped = resolved.fractions(mids)
        over = {name: value for name, value in capped.items() if value > budget + 1e-9}
        if over or any(m % resolved.group for m in mids):
            raise RunError(f"domain {data.name!r} does not hold its budget {budget}: {over}")
        entries.append(
            {
                "name": data.name,
                "labels": data.labels,
                "channels": parts.channels[k],
                "image_size": arch.image_size,
                "mean": list(data.mean),
                "std": list(data.std),
                "mid_channels": mids,
                "budget": budget,
                "budget_costs": capped,
                "learned_costs": trained.learned_costs[k],
                # nested runs project per level inside training: no single projection to record
                "projection": trained.projection[k] if trained.projection else None,
                **cost_fields(arch, mids, data.num_classes),
                "latency": latency[k],
                "projected_channels": trained.projected_channels[k],
                "val_accuracy": val[data.name],
                "test_accuracy": test[data.name],
                "max_compact_logit_diff": logit_diff[data.name],
                "data_digest": trained.data["domains"][data.name],
                "seen_by_backbone": data.name in seen,
                **(
                    {"test_split": data.provenance["test_split"]}
                    if "test_split" in data.provenance
                    else {}
                ),
            }
        )
    table = resolved.table
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "architecture": arch.to_dict(),
        "channel_group": resolved.group,
        "cpu_capability": cpu_capability(),
        "compact_mid_channels": parts.union_mid_channels,
        "compact_channel_origin": parts.union_origin,
        "budget": config.budget,
        "budget_metric": config.budget_metric,
        "budget_caps": [cost.name for cost in resolved.costs],
        "sharing": {
            "variant": config.sharing,
            "weight": trained.sharing_weight,
            "initial_weight": config.sharing_weight,
            "learnable_weight": config.learnable_sharing_weight,
        },
        "protocol": protocol_of(seen, [d.name for d in domains]),
        "data": trained.data,
        "backbone": {
            "params": backbone.params,
            "macs": backbone.macs,
            "run": str(trained.backbone_dir),
            "domains": sorted(seen),
            "data": trained.backbone_data,
        },
        "compact": {"params": compact.params, "params_fraction": compact.params / backbone.params},
        "latency": {
            "backbone_ms": {str(b): round(v, 4) for b, v in backbone_ms.items()},
            "torch_threads": timing.torch_threads,
            "repeats": timing.repeats,
            "table": None
            if table is None
            else {
                "path": str(config.latency_table),
                "torch_threads": table.torch_threads,
                "batch_sizes": list(table.batch_sizes),
            },
        },
        "mean_val_accuracy": mean(val.values()),
        "mean_test_accuracy": mean_test,
        "training": {
            "config": _jsonable(asdict(config)),
            "wall_time_s": round(trained.wall_time_s, 2),
            "world_size": runtime.world_size,
            "device": runtime.device.type,
            "history": trained.compact_history,
        },
        "domains": entries,
    }
    level_tensors: list[list[dict[str, Tensor]]] = []
    if trained.levels:
        level_entries, level_tensors, level_means = _nested_levels(
            trained, parts, timing, level_accuracies
        )
        for entry, levels in zip(entries, level_entries, strict=True):
            entry["levels"] = levels
        manifest["budgets"] = [level.budget for level in trained.levels]
        manifest["level_state"] = config.level_state
        manifest["levels"] = level_means
    write_artifact(target, manifest, parts.shared, parts.domain_tensors, level_tensors)
    largest = str(max(timing.batch_sizes))
    slowest = max(e["measured_fraction"][largest] for e in latency)
    console.print(
        f"exported {target}: compact params {compact.params:,} = "
        f"{compact.params / backbone.params:.3f} x backbone; mean test accuracy {mean_test:.4f}; "
        f"slowest domain {slowest:.3f} x the backbone's time at batch {largest}"
    )
    return target, manifest


def cost_fields(arch: ArchSpec, mids: Sequence[int], num_classes: int) -> dict[str, Any]:
    """A subnetwork's manifest costs: ``params`` and ``macs`` are what the budget caps (the
    head is outside it, given as ``head_params`` / ``head_macs``), the fractions are over the
    single-domain backbone's."""
    backbone = backbone_totals(arch)
    part = subnet_totals(arch, mids)
    whole = subnet_totals(arch, mids, num_classes)
    return {
        "params": part.params,
        "macs": part.macs,
        "head_params": whole.params - part.params,
        "head_macs": whole.macs - part.macs,
        "params_fraction": part.params / backbone.params,
        "macs_fraction": part.macs / backbone.macs,
    }


def _level_masks(trained: TrainedModel, level: NestedLevel) -> Callable[[int], list[Tensor]]:
    """Domain ``k``'s masks at ``level``, on the training device."""

    def masks_for(k: int) -> list[Tensor]:
        return [m[k].float().to(trained.runtime.device) for m in level.masks]

    return masks_for


def _level_accuracies(
    trained: TrainedModel, level: NestedLevel
) -> tuple[dict[str, float], dict[str, float]]:
    """Validation and test accuracy per domain at ``level`` (its masks and BatchNorm
    statistics). In a distributed run every rank evaluates its share: call it on every rank."""
    model, domains, runtime = trained.model, trained.domains, trained.runtime
    masks_for = _level_masks(trained, level)
    with level_state(model, level):
        val = evaluate(model, domains, "val", masks_for, runtime=runtime)
        test = evaluate(model, domains, "test", masks_for, runtime=runtime)
    return val, test


def _nested_levels(
    trained: TrainedModel,
    parts: CompactParts,
    timing: TimingConfig,
    accuracies: Sequence[tuple[dict[str, float], dict[str, float]]],
) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Tensor]]], list[dict[str, Any]]]:
    """Every nested level of every domain: its manifest entry (channels into the compact union,
    costs checked against the level's budget, params, MACs, measured time, ``accuracies``
    (``_level_accuracies``, per level), compact logits against the masked model's), the
    BatchNorm tensors (and with private level state the heads) of every level but the largest
    (whose are the domain's own), and each
    level's mean accuracy. Rank 0 only."""
    model, arch, domains = trained.model, trained.model.arch, trained.domains
    resolved = trained.costs
    private = trained.config.level_state == "private"
    entries: list[list[dict[str, Any]]] = [[] for _ in domains]
    tensors: list[list[dict[str, Tensor]]] = []
    means = []
    for j, (level, (val, test)) in enumerate(zip(trained.levels, accuracies, strict=True)):
        masks_for = _level_masks(trained, level)
        with level_state(model, level):
            own = prune_to_compact(model, trained.masks, level.masks)
            logit_diff = compact_logit_difference(trained, own, masks_for=masks_for)
        _, latency = measure_latency(trained, own, timing)
        if j > 0:
            tensors.append(
                [
                    {n: t for n, t in named.items() if private or not n.startswith("head.")}
                    for named in own.domain_tensors
                ]
            )
        for k, data in enumerate(domains):
            mids = [len(c) for c in own.channels[k]]
            capped = resolved.fractions(mids)
            over = {name: value for name, value in capped.items() if value > level.budget + 1e-9}
            if over or any(m % resolved.group for m in mids):
                raise RunError(
                    f"domain {data.name!r} does not hold its level budget {level.budget}: {over}"
                )
            entries[k].append(
                {
                    "budget": level.budget,
                    "channels": own.channels[k],
                    "mid_channels": mids,
                    "budget_costs": capped,
                    **cost_fields(arch, mids, data.num_classes),
                    "latency": latency[k],
                    "val_accuracy": val[data.name],
                    "test_accuracy": test[data.name],
                    **(
                        {"test_accuracy_shared_bn": level.shared_bn_test[data.name]}
                        if data.name in level.shared_bn_test
                        else {}
                    ),
                    "max_compact_logit_diff": logit_diff[data.name],
                }
            )
        means.append(
            {
                "budget": level.budget,
                "mean_val_accuracy": mean(val.values()),
                "mean_test_accuracy": mean(test.values()),
                **(
                    {"mean_test_accuracy_shared_bn": mean(level.shared_bn_test.values())}
                    if level.shared_bn_test
                    else {}
                ),
            }
        )
        console.print(
            f"level {level.budget:g}: mean test accuracy {mean(test.values()):.4f}, compact "
            f"logits within {max(logit_diff.values()):.2e} of the masked model's"
        )
    return entries, tensors, means


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
