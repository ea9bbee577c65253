"""Export: evaluate a trained model, prune the channels no domain uses and write the artifact
(``model_store/<name>/<version>``, via ``multidomain.artifact.write_artifact``).

Like timm's ``clean_checkpoint``, this reduces training state to what serving needs: no switch
scores, no optimizer state.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from multidomain.artifact import check_name, subnet_state_dict, write_artifact
from multidomain.costs import backbone_totals, compact_totals, subnet_totals
from multidomain.network import ResNet26
from multidomain.preprocess import normalize_batch
from multidomain.stats import mean
from training.budget import TrainedModel
from training.common import command_line, console, evaluate
from training.data import iterate_eval
from training.errors import RunError
from training.prune import CompactParts, prune_to_compact

__all__ = ["artifact_target", "compact_logit_difference", "export_artifact"]


@torch.inference_mode()
def compact_logit_difference(
    trained: TrainedModel, parts: CompactParts, split: str = "test"
) -> dict[str, float]:
    """Max |logit difference| between each domain's compact subnetwork and the masked model."""
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
                delta = (subnet(x) - model(x, k, trained.domain_masks(k))).abs().max()
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


def export_artifact(
    trained: TrainedModel,
    model_store: Path,
    model_name: str,
    version: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate, prune and write ``model_store/<name>/<version>``; returns path and manifest.
    In a distributed run every rank evaluates its share and only rank 0 checks the compact
    model and writes (the others return the manifest without ``max_compact_logit_diff``)."""
    target = artifact_target(model_store, model_name, version)
    version = target.name
    model, arch, domains = trained.model, trained.model.arch, trained.domains
    runtime = trained.runtime
    val = evaluate(model, domains, "val", trained.domain_masks, runtime=runtime)
    test = evaluate(model, domains, "test", trained.domain_masks, runtime=runtime)
    mean_test = mean(test.values())
    parts = prune_to_compact(model, trained.masks)
    logit_diff = compact_logit_difference(trained, parts) if runtime.is_main else {}
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
                "max_compact_logit_diff": logit_diff.get(data.name),
                **(
                    {"test_split": data.provenance["test_split"]}
                    if "test_split" in data.provenance
                    else {}
                ),
            }
        )
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
        "mean_val_accuracy": mean(val.values()),
        "mean_test_accuracy": mean_test,
        "training": {
            "config": asdict(trained.config),
            "wall_time_s": round(trained.wall_time_s, 2),
            "world_size": runtime.world_size,
            "device": runtime.device.type,
        },
        "domains": entries,
    }
    if not runtime.is_main:
        return target, manifest
    write_artifact(target, manifest, parts.shared, parts.domain_tensors)
    console.print(
        f"exported {target}: compact params {compact.params:,} = "
        f"{compact.params / backbone.params:.3f} x backbone; mean test accuracy {mean_test:.4f}"
    )
    return target, manifest
