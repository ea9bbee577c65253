"""One compact weight set for every domain: each domain's network folded from it (per batch or
cached) computes the domain's compact subnetwork, and what stays in memory between batches is
about the artifact's weights, not one dense copy per domain."""

from __future__ import annotations

import pytest
import torch

from multidomain.artifact import Artifact, load_artifact
from multidomain.compact import DomainNetwork, storage_bytes
from multidomain.preprocess import normalize_batch
from multidomain.serving import ALL_DOMAINS, ServedArtifact
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return load_artifact(write_tiny_artifact(tmp_path_factory.mktemp("store"), group=4))


@pytest.mark.parametrize("cached", [0, 1, ALL_DOMAINS])
def test_every_domain_computes_its_compact_subnetwork(artifact: Artifact, cached: int) -> None:
    backbone = artifact.compact_backbone(cached)
    pixels = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    for _ in range(2):  # folded fresh, then (when cached) from the cache
        for entry in artifact.domains:
            network = DomainNetwork(backbone, entry.index)
            with torch.inference_mode():
                expected = artifact.subnet(entry.name)(
                    normalize_batch(pixels, entry.mean, entry.std)
                )
                torch.testing.assert_close(network(pixels), expected, atol=1e-5, rtol=1e-5)


def test_the_cache_keeps_the_most_recently_used_domains(artifact: Artifact) -> None:
    assert artifact.compact_backbone(0).cached_domains() == []
    assert artifact.compact_backbone(ALL_DOMAINS).cached_domains() == [0, 1, 2]
    backbone = artifact.compact_backbone(2)
    assert backbone.cached_domains() == [0, 1]  # filled at start
    first = backbone.network(0)
    assert backbone.network(0) is first  # a hit returns the cached network
    backbone.network(2)
    assert backbone.cached_domains() == [0, 2]  # 1 was the least recently used
    backbone.network(1)
    assert backbone.cached_domains() == [2, 1]
    assert backbone.network(0) is not first  # folded again after eviction
    with pytest.raises(ValueError, match="materialized domains must be >= 0"):
        artifact.compact_backbone(-1)


def test_resident_weights_are_about_the_artifacts(artifact: Artifact) -> None:
    artifact_bytes = storage_bytes(artifact.tensors())
    shared_bytes = storage_bytes(artifact.shared.values())
    lean = artifact.compact_backbone(0).resident_bytes()
    dense = artifact.compact_backbone(ALL_DOMAINS).resident_bytes()
    # the shared convolutions once plus small per-domain vectors and heads
    assert shared_bytes < lean <= 1.1 * artifact_bytes
    # every domain's own folded copy (the shared weights then dropped): far more
    per_domain = [
        storage_bytes(artifact.served_network(e.name).tensors()) for e in artifact.domains
    ]
    assert dense >= sum(per_domain) > 1.5 * artifact_bytes


def test_served_artifact_reports_resident_and_artifact_bytes(artifact: Artifact) -> None:
    lean = ServedArtifact.build(artifact)
    dense = ServedArtifact.build(artifact, ALL_DOMAINS)
    assert lean.artifact_weight_bytes == storage_bytes(artifact.tensors())
    assert lean.resident_weight_bytes() <= 1.1 * lean.artifact_weight_bytes
    assert dense.resident_weight_bytes() > lean.resident_weight_bytes()
    assert list(lean.domains) == list(TINY_DOMAINS)


def test_storage_bytes_counts_a_shared_storage_once() -> None:
    base = torch.zeros(100)
    assert storage_bytes([base, base[:10], base.view(10, 10)]) == 400
    assert storage_bytes([base, torch.zeros(5)]) == 420
