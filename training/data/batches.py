"""Batches of a domain as torch tensors: endless shuffled training batches (``DomainBatches``),
augmented and normalised ones (``DomainFeeder``) and evaluation batches in stored order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from multidomain.preprocess import normalize_batch
from training.data.augment import train_augment
from training.data.domain import SPLITS, DomainData

__all__ = ["DomainBatches", "DomainFeeder", "images_to_tensor", "iterate_eval"]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] numpy -> contiguous uint8 tensor [N, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class DomainBatches:
    """Endless shuffled mini-batches of one domain split (reshuffled every epoch)."""

    def __init__(self, data: DomainData, split: str = "train", seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        self.name = data.name
        self.images = images_to_tensor(data.images[split])
        self.targets = torch.from_numpy(np.ascontiguousarray(data.targets[split]))
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(self), generator=self.generator)
        self._pos = 0
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [B, 3, H, W], int64 targets [B]); crosses epochs when needed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts: list[torch.Tensor] = []
        need = batch_size
        while need > 0:
            if self._pos >= len(self):
                self._order = torch.randperm(len(self), generator=self.generator)
                self._pos = 0
                self.epoch += 1
            take = min(need, len(self) - self._pos)
            parts.append(self._order[self._pos : self._pos + take])
            self._pos += take
            need -= take
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.images[idx], self.targets[idx]


class DomainFeeder:
    """Endless, seeded, augmented and normalised training batches of one domain."""

    def __init__(self, data: DomainData, batch_size: int, seed: int) -> None:
        self.data = data
        self.batch_size = batch_size
        self.batches = DomainBatches(data, "train", seed=seed)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def next(self) -> tuple[Tensor, Tensor]:
        images, targets = self.batches.next_batch(self.batch_size)
        images = train_augment(images, self.data.allow_flip, self.generator)
        return normalize_batch(images, self.data.mean, self.data.std), targets


def iterate_eval(
    data: DomainData, split: str, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images [B, 3, H, W], int64 targets [B]) batches in stored order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images, targets = data.images[split], data.targets[split]
    for start in range(0, len(targets), batch_size):
        stop = start + batch_size
        yield images_to_tensor(images[start:stop]), torch.from_numpy(targets[start:stop].copy())
