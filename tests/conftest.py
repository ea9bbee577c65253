"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import DomainData, build_embedded_benchmark


@pytest.fixture(scope="session")
def embedded_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session-wide cache folder that ``embedded_domains`` is built into."""
    return tmp_path_factory.mktemp("embedded-cache")


@pytest.fixture(scope="session")
def embedded_domains(embedded_cache_root: Path) -> dict[str, DomainData]:
    """The embedded benchmark (image_size 32, seed 0), built once per session."""
    return build_embedded_benchmark(embedded_cache_root, 32, 0)
