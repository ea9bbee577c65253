"""Fixtures of the training tests: two synthetic domains and a backbone pre-trained on them
(once per test module that uses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.training.synthetic import ARCH, synthetic_domain
from training.data import DomainData
from training.pretrain import PretrainConfig, pretrain_backbone


@pytest.fixture(scope="module")
def domains() -> list[DomainData]:
    return [synthetic_domain("alpha", 3, 0), synthetic_domain("beta", 4, 1)]


@pytest.fixture(scope="module")
def backbone(domains: list[DomainData], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("backbone")
    record = pretrain_backbone(domains, ARCH, PretrainConfig(steps=12, batch_size=16), run)
    assert set(record["test_accuracy"]) == {"alpha", "beta"}
    assert record["backbone_params"] > 0
    return run
