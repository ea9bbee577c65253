"""The ``.mar`` export refuses bad input before archiving (a real TorchServe serves an exported
archive in tests/integration/test_torchserve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multidomain.artifact import ArtifactError
from torchserving.export import TorchServeModelConfig, export_mar


def test_export_refuses_bad_input_before_archiving(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        export_mar(tmp_path / "missing", tmp_path / "store", "tiny")
    with pytest.raises(ArtifactError, match="invalid model name"):
        export_mar(tmp_path / "missing", tmp_path / "store", "../x")
    with pytest.raises(ValueError, match="batch_size"):
        TorchServeModelConfig(batch_size=0)
    assert not (tmp_path / "store").exists()
