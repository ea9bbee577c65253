"""Small real artifacts for tests: a randomly initialised ResNet-26 with random per-domain
masks, pruned and written exactly as training exports it (no training, so it takes a second)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from multidomain.arch import ArchSpec
from multidomain.artifact import load_artifact, write_artifact
from multidomain.network import ResNet26
from multidomain.preprocess import eval_transform
from training.prune import prune_to_compact

TINY_DOMAINS = {
    "shapes": ["circle", "square", "triangle"],
    "colours": ["red", "green"],
    "digits": [str(i) for i in range(10)],
}


def random_masks(
    arch: ArchSpec, num_domains: int, keep: float, seed: int, group: int = 1
) -> list[torch.Tensor]:
    """Random channel masks, switched in groups of ``group`` channels."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for width in arch.full_mid_channels():
        mask = torch.rand(num_domains, width // group, generator=generator) < keep
        mask[:, 0] = True  # at least one group per domain and block
        masks.append(mask.repeat_interleave(group, dim=1))
    return masks


def randomise_batchnorm(model: ResNet26, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 1 + 0.2 * torch.randn(n, generator=generator)
            module.bias.data = 0.1 * torch.randn(n, generator=generator)
            module.running_mean.data = 0.1 * torch.randn(n, generator=generator)
            module.running_var.data = 1 + 0.5 * torch.rand(n, generator=generator)


def randomise_heads(model: ResNet26, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for head in model.heads:
        head.weight.data = 0.3 * torch.randn(head.weight.shape, generator=generator)
        head.bias.data = 0.1 * torch.randn(head.bias.shape, generator=generator)


def make_tiny_model(
    arch: ArchSpec | None = None,
    keep: float = 0.5,
    seed: int = 0,
    group: int = 1,
    domains: dict[str, list[str]] = TINY_DOMAINS,
) -> tuple[ResNet26, list[torch.Tensor]]:
    arch = arch or ArchSpec(width_mult=0.125, image_size=16)
    torch.manual_seed(seed)
    model = ResNet26(arch, [len(labels) for labels in domains.values()])
    randomise_batchnorm(model, seed)
    return model.eval(), random_masks(arch, len(domains), keep, seed, group)


def write_tiny_artifact(
    model_store: Path,
    model_name: str = "tiny",
    version: str = "v1",
    arch: ArchSpec | None = None,
    seed: int = 0,
    group: int = 1,
    manifest_group: int | None = None,
    labels_of: dict[str, list[str]] = TINY_DOMAINS,
    created_at: str = "2026-01-01T00:00:00+00:00",
) -> Path:
    """``group``: channels switched together; ``manifest_group``: the ``channel_group`` the
    manifest claims (default: ``group``)."""
    model, masks = make_tiny_model(arch, seed=seed, group=group, domains=labels_of)
    parts = prune_to_compact(model, masks)
    domains = []
    for k, (name, labels) in enumerate(labels_of.items()):
        domains.append(
            {
                "name": name,
                "labels": labels,
                "channels": parts.channels[k],
                "image_size": model.arch.image_size,
                "mean": [0.5, 0.4, 0.3],
                "std": [0.25, 0.2, 0.3],
                "test_accuracy": 0.5,
            }
        )
    domains[1]["budget"] = 0.4  # "colours" has its own budget
    domains[1]["latency"] = {"measured_fraction": {"1": 0.7, "32": 0.45}}
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": created_at,
        "command": "tests",
        "architecture": model.arch.to_dict(),
        "compact_mid_channels": parts.union_mid_channels,
        "channel_group": group if manifest_group is None else manifest_group,
        "budget": 0.5,
        "budget_metric": "both",
        "sharing": {"variant": "none", "weight": 0.0, "learnable_weight": False},
        "domains": domains,
    }
    return write_artifact(
        Path(model_store) / model_name / version, manifest, parts.shared, parts.domain_tensors
    )


def offline_reference(artifact_path: Path) -> Callable[[str, bytes], torch.Tensor]:
    """The offline evaluation of an artifact: a domain's class probabilities for image bytes,
    from its compact subnetwork on ``eval_transform`` (callers pick torch's thread count)."""
    artifact = load_artifact(artifact_path)
    networks = {entry.name: artifact.subnet(entry.name) for entry in artifact.domains}

    def reference(domain: str, data: bytes) -> torch.Tensor:
        entry = artifact.domain(domain)
        transform = eval_transform(entry.image_size, entry.mean, entry.std)
        with Image.open(io.BytesIO(data)) as image:
            x = transform(image).unsqueeze(0)
        with torch.no_grad():
            return torch.softmax(networks[domain](x), dim=1)[0]

    return reference


NESTED_BUDGETS = (1.0, 0.6, 0.35)


def write_tiny_nested_artifact(
    model_store: Path,
    model_name: str = "nested",
    version: str = "v1",
    budgets: tuple[float, ...] = NESTED_BUDGETS,
    seed: int = 0,
    arch: ArchSpec | None = None,
    level_state: str = "private",
) -> Path:
    """A nested artifact as training exports it: every domain's levels from random scores
    through ``nested_group_masks`` (so nested), each level with BatchNorm tensors of its own
    (random, different per level) and, with private level state, its own head (else the
    domain's one head)."""
    from multidomain.costs import linear_cost
    from training.nested import nested_group_masks

    arch = arch or ArchSpec(width_mult=0.125, image_size=16)
    model, _ = make_tiny_model(arch, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    costs = [linear_cost(arch, "params")]
    per_domain = [
        nested_group_masks(
            [torch.rand(w, generator=generator) for w in arch.full_mid_channels()],
            costs,
            budgets,
            1,
        )
        for _ in TINY_DOMAINS
    ]
    levels = [
        [torch.stack([d[j][b] for d in per_domain]) for b in range(len(arch.blocks()))]
        for j in range(len(budgets))
    ]
    parts = []
    for j in range(len(budgets)):
        randomise_batchnorm(model, seed + 10 * j)  # each level its own statistics
        if level_state == "private" and j:
            randomise_heads(model, seed + 10 * j)
        parts.append(prune_to_compact(model, levels[0], levels[j]))
    domains = []
    for k, (name, labels) in enumerate(TINY_DOMAINS.items()):
        domains.append(
            {
                "name": name,
                "labels": labels,
                "channels": parts[0].channels[k],
                "image_size": arch.image_size,
                "mean": [0.5, 0.4, 0.3],
                "std": [0.25, 0.2, 0.3],
                "budget": budgets[0],
                "levels": [
                    {
                        "budget": budget,
                        "channels": parts[j].channels[k],
                        "test_accuracy": 0.9 - 0.1 * j,
                        "params": 1000 - 100 * j,
                    }
                    for j, budget in enumerate(budgets)
                ],
            }
        )
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": "2026-01-01T00:00:00+00:00",
        "command": "tests",
        "architecture": arch.to_dict(),
        "compact_mid_channels": parts[0].union_mid_channels,
        "channel_group": 1,
        "budget": budgets[0],
        "budgets": list(budgets),
        "level_state": level_state,
        "budget_metric": "params",
        "sharing": {"variant": "none", "weight": 0.0, "learnable_weight": False},
        "domains": domains,
    }
    level_tensors = [
        [
            {
                n: t
                for n, t in named.items()
                if level_state == "private" or not n.startswith("head.")
            }
            for named in p.domain_tensors
        ]
        for p in parts[1:]
    ]
    return write_artifact(
        Path(model_store) / model_name / version,
        manifest,
        parts[0].shared,
        parts[0].domain_tensors,
        level_tensors,
    )


def nested_offline_reference(artifact_path: Path) -> Callable[[str, int, bytes], torch.Tensor]:
    """A nested artifact's offline evaluation: a domain's class probabilities at a level (its
    compact subnetwork of that level on ``eval_transform``)."""
    artifact = load_artifact(artifact_path)
    networks = {
        (entry.name, j): artifact.level_subnet(entry.name, j)
        for entry in artifact.domains
        for j in range(len(entry.levels))
    }

    def reference(domain: str, level: int, data: bytes) -> torch.Tensor:
        entry = artifact.domain(domain)
        transform = eval_transform(entry.image_size, entry.mean, entry.std)
        with Image.open(io.BytesIO(data)) as image:
            x = transform(image).unsqueeze(0)
        with torch.no_grad():
            return torch.softmax(networks[(domain, level)](x), dim=1)[0]

    return reference
