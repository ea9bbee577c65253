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


def random_masks(arch: ArchSpec, num_domains: int, keep: float, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for width in arch.full_mid_channels():
        mask = torch.rand(num_domains, width, generator=generator) < keep
        mask[:, 0] = True  # at least one channel per domain and block
        masks.append(mask)
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


def make_tiny_model(
    arch: ArchSpec | None = None, keep: float = 0.5, seed: int = 0
) -> tuple[ResNet26, list[torch.Tensor]]:
    arch = arch or ArchSpec(width_mult=0.125, image_size=16)
    torch.manual_seed(seed)
    model = ResNet26(arch, [len(labels) for labels in TINY_DOMAINS.values()])
    randomise_batchnorm(model, seed)
    return model.eval(), random_masks(arch, len(TINY_DOMAINS), keep, seed)


def write_tiny_artifact(
    model_store: Path,
    model_name: str = "tiny",
    version: str = "v1",
    arch: ArchSpec | None = None,
    seed: int = 0,
    created_at: str = "2026-01-01T00:00:00+00:00",
) -> Path:
    model, masks = make_tiny_model(arch, seed=seed)
    parts = prune_to_compact(model, masks)
    domains = []
    for k, (name, labels) in enumerate(TINY_DOMAINS.items()):
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
    manifest = {
        "model_name": model_name,
        "version": version,
        "created_at": created_at,
        "command": "tests",
        "architecture": model.arch.to_dict(),
        "compact_mid_channels": parts.union_mid_channels,
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
