"""Pieces shared by backbone pre-training and budget-aware training: seeding, the progress bar,
weight files, evaluation and BatchNorm recalibration."""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import save_file
from torch import Tensor

from multidomain.files import atomic_path
from multidomain.network import ResNet26
from multidomain.preprocess import normalize_batch
from training.data import DomainData, DomainFeeder, iterate_eval

__all__ = [
    "command_line",
    "console",
    "evaluate",
    "recalibrate_batchnorm",
    "seed_everything",
    "training_progress",
    "write_tensors",
]

console = Console(stderr=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def training_progress() -> Progress:
    """Progress bar showing step, loss, accuracy, throughput and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


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
) -> dict[str, float]:
    """Top-1 accuracy per domain; ``model`` domain index ``k`` serves ``domains[k]``."""
    was_training = model.training
    model.eval()
    accuracy = {}
    for k, data in enumerate(domains):
        masks = masks_for(k)
        correct = total = 0
        for images, targets in iterate_eval(data, split, batch_size):
            logits = model(normalize_batch(images, data.mean, data.std), k, masks)
            correct += int((logits.argmax(1) == targets).sum())
            total += int(targets.numel())
        accuracy[data.name] = correct / max(total, 1)
    model.train(was_training)
    return accuracy


@torch.no_grad()
def recalibrate_batchnorm(
    model: ResNet26,
    domains: Sequence[DomainData],
    masks_for: Callable[[int], Sequence[Tensor] | None],
    batches: int = 30,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Re-estimate every domain's BN running statistics under its final (hard) masks, as a
    cumulative average over augmented training batches: the input distribution the BN affines
    were trained under (un-augmented statistics measurably hurt held-out accuracy)."""
    was_training = model.training
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = None  # cumulative moving average
    for k, data in enumerate(domains):
        for layer in model.domain_batchnorms(k):
            layer.reset_running_stats()
        feeder = DomainFeeder(data, batch_size, seed + 1000 + k)
        masks = masks_for(k)
        for _ in range(batches):
            images, _ = feeder.next()
            model(images, k, masks)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
