"""One compact weight set in memory for every domain.

The artifact holds the compact shared convolutions (the union of all domains' mid channels) once
and each domain's BatchNorm and head. A domain's served network needs its own channels of
``conv1``/``conv2`` with its BatchNorm folded in: a dense copy of about its budget's share of
the backbone. Keeping one copy per domain (what the servers did before) holds
``N_domains x budget`` backbones in memory while the artifact holds about one.

:class:`CompactBackbone` keeps the shared convolutions once (channels-last) and every domain's
:class:`~multidomain.fold.DomainFold` (its BN as scale/shift, its channel indices, its head),
and folds a domain's network when a batch needs it: a gather and a multiply per convolution,
freed after the batch. ``materialized_domains`` keeps that many most-recently-used domains'
folded networks (an LRU cache): 0 folds every batch (resident bytes about the artifact's), the
number of domains keeps them all (the fastest, the most memory: one dense copy per domain, the
shared weights then dropped). ``docs/operations.md`` has the
measured trade-off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from multidomain.arch import ArchSpec
from multidomain.fold import DomainFold, FoldedNetwork, channels_last_weights, fold_weights

__all__ = ["CompactBackbone", "DomainNetwork", "storage_bytes"]


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class CompactBackbone:
    """The shared convolutions once, every domain's fold, and an LRU cache of folded networks.
    Safe to call from several threads (the cache is locked; folding itself is not)."""

    def __init__(
        self,
        arch: ArchSpec,
        shared: Mapping[str, Tensor],
        folds: Sequence[DomainFold],
        materialized_domains: int,
    ) -> None:
        if materialized_domains < 0:
            raise ValueError(f"materialized domains must be >= 0, got {materialized_domains}")
        self.arch = arch
        self.shared = channels_last_weights(shared)
        self.folds = list(folds)
        self.materialized_domains = min(materialized_domains, len(self.folds))
        self._cache: OrderedDict[int, FoldedNetwork] = OrderedDict()
        self._lock = threading.Lock()
        for domain in range(self.materialized_domains):
            self.network(domain)
        if self.folds and self.materialized_domains == len(self.folds):
            self.shared = {}  # every domain is folded and never evicted: nothing left to fold

    def fold(self, domain: int) -> FoldedNetwork:
        """A new folded network of ``domain`` (not cached)."""
        if not self.shared:
            with self._lock:
                return self._cache[domain]  # all domains cached: the shared weights were dropped
        return fold_weights(self.arch, self.shared, self.folds[domain])

    def network(self, domain: int) -> FoldedNetwork:
        """The domain's folded network: from the cache, or folded now (and cached if the cache
        has room, the least recently used domain making way)."""
        if self.materialized_domains == 0:
            return self.fold(domain)
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None:
                self._cache.move_to_end(domain)
                return cached
        network = self.fold(domain)
        with self._lock:
            self._cache[domain] = network
            self._cache.move_to_end(domain)
            while len(self._cache) > self.materialized_domains:
                self._cache.popitem(last=False)
        return network

    def cached_domains(self) -> list[int]:
        """Domains whose folded network is cached, least recently used first."""
        with self._lock:
            return list(self._cache)

    def resident_bytes(self) -> int:
        """Bytes of every tensor this backbone keeps between batches: the shared convolutions,
        every domain's fold and the cached folded networks."""
        tensors = list(self.shared.values())
        for fold in self.folds:
            tensors += fold.tensors()
        with self._lock:
            cached = list(self._cache.values())
        for network in cached:
            tensors += network.tensors()
        return storage_bytes(tensors)


class DomainNetwork(nn.Module):
    """A domain's served network on a :class:`CompactBackbone`: uint8 pixels in, logits out;
    each call takes the domain's folded network from the backbone."""

    def __init__(self, backbone: CompactBackbone, domain: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.domain = domain
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        network: FoldedNetwork = self.backbone.network(self.domain)
        return network(images)
