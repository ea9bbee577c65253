"""Training batches through the DataLoader: the same batches as the in-memory loader they
replaced, the same at any world size (each rank's share is its part of the global batch), with
or without worker processes, from memory or from the on-disk cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multidomain.preprocess import normalize_batch
from tests.unit.training.synthetic import synthetic_domain
from training.data import DomainData, TrainBatches, images_to_tensor, train_augment
from training.data.cache import DomainSource, SplitSource, load_or_build

STEPS = 7  # domain "small" has 96 train images: batches of 24 cross an epoch boundary


def in_memory_batches(
    data: DomainData, batch_size: int, seed: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader these tests compare against: the in-memory ``DomainFeeder`` that
    ``TrainBatches`` replaced (all images as one tensor, a seeded order reshuffled every
    epoch, ``train_augment`` with the generator ``seed + 1``)."""
    images = images_to_tensor(data.images["train"][:])
    targets = torch.from_numpy(data.targets["train"])
    order_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1)
    order, position = torch.randperm(len(targets), generator=order_generator), 0
    while True:
        parts, need = [], batch_size
        while need:
            if position == len(targets):
                order, position = torch.randperm(len(targets), generator=order_generator), 0
            take = min(need, len(targets) - position)
            parts.append(order[position : position + take])
            position, need = position + take, need - take
        index = torch.cat(parts)
        x = train_augment(images[index], data.allow_flip, augment_generator)
        yield normalize_batch(x, data.mean, data.std), targets[index]


def _domains() -> dict[int, DomainData]:
    return {0: synthetic_domain("small", 3, 0), 1: synthetic_domain("other", 4, 1)}


def _steps(batches: TrainBatches) -> list[dict[int, tuple[Tensor, Tensor]]]:
    with batches:
        return [batches.next() for _ in range(STEPS)]


def test_same_batches_as_the_in_memory_loader() -> None:
    domains = _domains()
    got = _steps(TrainBatches(domains, 24, {0: 5, 1: 12}))
    for k, seed in ((0, 5), (1, 12)):
        reference = in_memory_batches(domains[k], 24, seed)
        for step in got:
            x, y = next(reference)
            assert torch.equal(step[k][0], x) and torch.equal(step[k][1], y)


def test_rank_shares_are_parts_of_the_global_batch() -> None:
    domains = _domains()
    whole = _steps(TrainBatches(domains, 24, {0: 5, 1: 12}))
    shares = [
        _steps(TrainBatches(domains, 24, {0: 5, 1: 12}, rank=r, world_size=3)) for r in range(3)
    ]
    for s, step in enumerate(whole):
        for k, (x, y) in step.items():
            assert [len(share[s][k][1]) for share in shares] == [8, 8, 8]
            assert torch.equal(torch.cat([share[s][k][0] for share in shares]), x)
            assert torch.equal(torch.cat([share[s][k][1] for share in shares]), y)


def test_worker_processes_and_the_disk_cache_give_the_same_batches(tmp_path: Path) -> None:
    domains = _domains()
    cached = {}
    for k, data in domains.items():
        splits = {s: SplitSource(data.targets[s], images=data.images[s]) for s in data.images}
        source = DomainSource(data.name, data.labels, data.allow_flip, "test", splits)
        key = {"kind": "test", "name": data.name, "image_size": 16}
        cached[k] = load_or_build(tmp_path / data.name, key, lambda s=source: s, 16).domain()
        assert np.array_equal(cached[k].images["train"][:], data.images["train"])
    reference = _steps(TrainBatches(domains, 24, {0: 5, 1: 12}))
    from_disk = _steps(TrainBatches(cached, 24, {0: 5, 1: 12}, workers=2))
    for a, b in zip(reference, from_disk, strict=True):
        for k in a:
            # the cache recomputes mean/std from its pixels; the synthetic domain's are set by hand
            assert torch.equal(a[k][1], b[k][1])
            raw_a = a[k][0] * torch.tensor(domains[k].std).view(1, 3, 1, 1)
            raw_b = b[k][0] * torch.tensor(cached[k].std).view(1, 3, 1, 1)
            raw_a += torch.tensor(domains[k].mean).view(1, 3, 1, 1)
            raw_b += torch.tensor(cached[k].mean).view(1, 3, 1, 1)
            assert torch.allclose(raw_a, raw_b, atol=1e-5)
