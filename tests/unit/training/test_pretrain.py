"""Backbone pre-training: checkpoint, resume, reuse of a finished run, refusal of another
configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.unit.training.synthetic import ARCH
from training.data import DomainData
from training.errors import RunError
from training.pretrain import PretrainConfig, pretrain_backbone


def test_pretrain_resumes_from_checkpoint(
    domains: list[DomainData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PretrainConfig(steps=6, batch_size=8, checkpoint_every=2)
    calls = {"n": 0}
    original = torch.optim.SGD.step

    def failing_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain_backbone(domains, ARCH, config, tmp_path)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 4
    assert not (tmp_path / "backbone.json").exists()
    monkeypatch.setattr(torch.optim.SGD, "step", original)
    record = pretrain_backbone(domains, ARCH, config, tmp_path)
    assert (tmp_path / "backbone.safetensors").exists()
    assert not (tmp_path / "checkpoint.json").exists()
    assert record["config"]["steps"] == 6
    weights = (tmp_path / "backbone.safetensors").read_bytes()
    assert pretrain_backbone(domains, ARCH, config, tmp_path) == record  # reused, not retrained
    assert (tmp_path / "backbone.safetensors").read_bytes() == weights
    other = PretrainConfig(steps=7, batch_size=8)
    with pytest.raises(RunError, match="another configuration"):
        pretrain_backbone(domains, ARCH, other, tmp_path)
