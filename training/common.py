"""Pieces shared by backbone pre-training and budget-aware training: seeding, the progress bar,
weight files, evaluation and BatchNorm recalibration (both split over the ranks of a
distributed run and combined, so every rank gets the one-process result)."""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from multidomain.files import atomic_path
from multidomain.network import ResNet26
from multidomain.preprocess import normalize_batch
from training.console import console, training_progress
from training.data import DomainData, TrainBatches, iterate_eval, share_of
from training.runtime import Runtime

__all__ = [
    "command_line",
    "console",
    "evaluate",
    "recalibrate_batchnorm",
    "seed_everything",
    "training_progress",
    "write_tensors",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_tensors(target: Path, tensors: Mapping[str, Tensor]) -> None:
    with atomic_path(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


@torch.inference_mode()
def evaluate(
    model: ResNet26,
    domains: Sequence[DomainData],
    split: str,
    masks_for: Callable[[int], Sequence[Tensor] | None] = lambda d: None,
    batch_size: int = 256,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Top-1 accuracy per domain; ``model`` domain index ``k`` serves ``domains[k]``. In a
    distributed run each rank evaluates its share of every split and the counts are summed."""
    runtime = runtime or Runtime()
    was_training = model.training
    model.eval()
    counts = torch.zeros(len(domains), 2, dtype=torch.float64)
    for k, data in enumerate(domains):
        masks = masks_for(k)
        part = share_of(len(data.targets[split]), runtime.rank, runtime.world_size)
        correct = total = 0
        for images, targets in iterate_eval(data, split, batch_size, part):
            x = normalize_batch(images.to(runtime.device), data.mean, data.std)
            with runtime.autocast():
                logits = model(x.contiguous(memory_format=runtime.memory_format()), k, masks)
            correct += int((logits.argmax(1).cpu() == targets).sum())
            total += int(targets.numel())
        counts[k] = torch.tensor([correct, total], dtype=torch.float64)
    runtime.all_reduce_sum(counts)
    model.train(was_training)
    return {
        d.name: float(counts[k, 0] / max(float(counts[k, 1]), 1.0)) for k, d in enumerate(domains)
    }


@torch.no_grad()
def recalibrate_batchnorm(
    model: ResNet26,
    domains: Sequence[DomainData],
    masks_for: Callable[[int], Sequence[Tensor] | None],
    batches: int = 30,
    batch_size: int = 64,
    seed: int = 0,
    runtime: Runtime | None = None,
) -> None:
    """Re-estimate every domain's BN running statistics under its final (hard) masks, as a
    cumulative average over augmented training batches: the input distribution the BN affines
    were trained under (un-augmented statistics measurably hurt held-out accuracy). In a
    distributed run rank 0 computes them on the whole batches, exactly as one process, and
    broadcasts them (a few dozen forward passes per domain)."""
    runtime = runtime or Runtime()
    was_training = model.training
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = None  # cumulative moving average
    for k in range(len(domains)):
        for layer in model.domain_batchnorms(k):
            layer.reset_running_stats()
    seeds = {k: seed + 1000 + k for k in range(len(domains))}
    if runtime.is_main:
        options = {**runtime.loader_options(), "rank": 0, "world_size": 1}
        with TrainBatches(dict(enumerate(domains)), batch_size, seeds, **options) as feed:
            for _ in range(batches):
                for k, (images, _) in feed.next().items():
                    with runtime.autocast():
                        model(images, k, masks_for(k))
    runtime.broadcast_buffers(model)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
