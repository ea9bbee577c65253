"""Fixtures of the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.artifacts import write_tiny_artifact


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the tiny test artifact (model ``tiny``, version ``v1``)."""
    root = tmp_path_factory.mktemp("model_store")
    write_tiny_artifact(root)
    return root
