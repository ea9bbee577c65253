"""Batches as torch tensors: endless, seeded, augmented and normalised training steps over
several domains (``TrainBatches``, read by a ``DataLoader``) and evaluation batches in stored
order (``iterate_eval``).

A training step holds, for each domain, its rank's share of the domain's next global batch:
``StepSampler`` draws the global batches from a seeded order reshuffled every epoch (crossing
epoch boundaries), the same on every rank, and hands each rank its contiguous part; the
``DataLoader`` reads those images (``StepDataset`` over one ``SplitDataset`` per domain) in
worker processes. Augmentation draws its random numbers for the whole global batch from the
domain's generator and applies this rank's rows, so that a step sees the same crops at any
world size, and one process reproduces exactly the batches of the in-memory loader it replaced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from multidomain.preprocess import normalize_batch
from training.data.augment import augment_randoms, augment_with
from training.data.domain import SPLITS, DomainData

__all__ = [
    "SplitDataset",
    "StepDataset",
    "StepSampler",
    "TrainBatches",
    "images_to_tensor",
    "iterate_eval",
    "share_of",
]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] numpy -> contiguous uint8 tensor [N, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def share_of(count: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``count`` items (sizes differ by at most one)."""
    return slice(count * rank // world_size, count * (rank + 1) // world_size)


class SplitDataset(Dataset[tuple[Tensor, Tensor]]):
    """One domain split: uint8 image ``[3, S, S]`` and int64 target per index, read from the
    domain's images (in memory or an on-disk shard) when asked for."""

    def __init__(self, data: DomainData, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        self.images = data.images[split]
        self.targets = np.ascontiguousarray(data.targets[split])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, targets = self.batch(np.asarray([index]))
        return images[0], targets[0]

    def batch(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """(uint8 images [B, 3, S, S], int64 targets [B]) at ``indices``, in their order."""
        return images_to_tensor(self.images[indices]), torch.from_numpy(self.targets[indices])


class StepDataset(Dataset[dict[int, tuple[Tensor, Tensor]]]):
    """A step's images: ``{domain: indices}`` -> ``{domain: (uint8 images, targets)}``."""

    def __init__(self, splits: Mapping[int, SplitDataset]) -> None:
        self.splits = dict(splits)

    def __getitem__(self, plan: Mapping[int, np.ndarray]) -> dict[int, tuple[Tensor, Tensor]]:
        return {k: self.splits[k].batch(indices) for k, indices in plan.items()}


class StepSampler:
    """Endless step plans ``{domain: indices}``: each domain's next global batch of
    ``batch_size`` from a seeded order reshuffled every epoch, of which this rank takes its
    contiguous share. Every iteration starts again from the seeds."""

    def __init__(
        self,
        sizes: Mapping[int, int],
        batch_size: int,
        seeds: Mapping[int, int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = dict(sizes)
        self.batch_size = batch_size
        self.seeds = dict(seeds)
        self.share = share_of(batch_size, rank, world_size)

    def __iter__(self) -> Iterator[dict[int, np.ndarray]]:
        orders = {k: _EpochOrder(n, self.seeds[k]) for k, n in self.sizes.items()}
        while True:
            yield {
                k: order.take(self.batch_size)[self.share].numpy() for k, order in orders.items()
            }


class _EpochOrder:
    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(count, generator=self.generator)
        self.position = 0

    def take(self, batch_size: int) -> Tensor:
        parts: list[Tensor] = []
        need = batch_size
        while need > 0:
            if self.position >= self.count:
                self.order = torch.randperm(self.count, generator=self.generator)
                self.position = 0
            take = min(need, self.count - self.position)
            parts.append(self.order[self.position : self.position + take])
            self.position += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _as_is(batch: Any) -> Any:
    return batch


class TrainBatches:
    """Endless training steps over ``domains`` (model domain index -> data): ``next()`` returns
    ``{domain: (normalised float images [b, 3, S, S], targets [b])}`` on ``device``, where ``b``
    is this rank's share of ``batch_size``. Domain ``k`` draws its batches from ``seeds[k]`` and
    its augmentation from ``seeds[k] + 1``. ``close()`` stops the loader's workers."""

    def __init__(
        self,
        domains: Mapping[int, DomainData],
        batch_size: int,
        seeds: Mapping[int, int],
        *,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        device: torch.device | str = "cpu",
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.domains = dict(domains)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.memory_format = memory_format
        self.share = share_of(batch_size, rank, world_size)
        self.generators = {k: torch.Generator().manual_seed(seeds[k] + 1) for k in self.domains}
        sampler = StepSampler(
            {k: len(d.targets["train"]) for k, d in self.domains.items()},
            batch_size,
            seeds,
            rank,
            world_size,
        )
        dataset = StepDataset({k: SplitDataset(d, "train") for k, d in self.domains.items()})
        self.loader = DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            pin_memory=self.device.type == "cuda",
        )
        self._steps: Iterator[dict[int, tuple[Tensor, Tensor]]] | None = iter(self.loader)

    def next(self) -> dict[int, tuple[Tensor, Tensor]]:
        if self._steps is None:
            raise RuntimeError("TrainBatches is closed")
        step = next(self._steps)
        out = {}
        for k, (images, targets) in step.items():
            data = self.domains[k]
            randoms = augment_randoms(self.batch_size, self.generators[k])[self.share]
            images = images.to(self.device, non_blocking=True)
            images = augment_with(images, randoms, data.allow_flip)
            x = normalize_batch(images, data.mean, data.std)
            out[k] = (
                x.contiguous(memory_format=self.memory_format),
                targets.to(self.device, non_blocking=True),
            )
        return out

    def close(self) -> None:
        self._steps = None  # the loader's iterator shuts its workers down when released

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate_eval(
    data: DomainData, split: str, batch_size: int, part: slice | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images [B, 3, H, W], int64 targets [B]) batches in stored order, of the whole
    split or of its items ``part`` (a rank's share)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images, targets = data.images[split], data.targets[split]
    start, stop, _ = (part or slice(None)).indices(len(targets))
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        yield images_to_tensor(images[first:last]), torch.from_numpy(targets[first:last].copy())
