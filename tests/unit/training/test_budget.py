"""Budget-aware training and export on tiny synthetic data: the exported compact model keeps
the budget and matches the masked model; bad configurations and backbones are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from multidomain.artifact import load_artifact
from multidomain.costs import linear_cost, subnet_totals
from multidomain.preprocess import normalize_batch
from tests.unit.training.synthetic import ARCH
from training.budget import BudgetConfig, train_budget_aware
from training.data import DomainData, iterate_eval
from training.errors import RunError
from training.export import export_artifact


@pytest.mark.parametrize("variant", ["none", "union"])
def test_budget_training_exports_compact_model_within_budget(
    domains: list[DomainData], backbone: Path, tmp_path: Path, variant: str
) -> None:
    config = BudgetConfig(budget=0.4, sharing=variant, steps=25, batch_size=16, finetune_steps=3)  # type: ignore[arg-type]
    trained = train_budget_aware(domains, backbone, config)
    path, manifest = export_artifact(trained, tmp_path, "tiny", "v1")
    artifact = load_artifact(path)
    for metric in ("params", "macs"):
        cost = linear_cost(ARCH, metric)
        for entry in artifact.domains:
            assert cost.fraction(entry.mid_channels) <= 0.4 + 1e-9
            assert entry.info[f"{metric}_fraction"] <= 0.4 + 1e-9
    assert manifest["compact"]["params_fraction"] < 1.0
    for entry in artifact.domains:
        data = domains[entry.index]
        subnet = artifact.subnet(entry.name)
        masks = trained.domain_masks(entry.index)
        trained.model.eval()
        with torch.no_grad():
            for images, _ in iterate_eval(data, "test", 64):
                x = normalize_batch(images, data.mean, data.std)
                diff = (subnet(x) - trained.model(x, entry.index, masks)).abs().max()
                assert float(diff) <= 1e-4
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            subnet(torch.zeros(1, 3, 16, 16))
        counted = subnet_totals(ARCH, entry.mid_channels, entry.num_classes)
        assert counter.get_total_flops() == 2 * counted.macs == 2 * entry.info["macs"]
        assert entry.info["max_compact_logit_diff"] <= 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0.0}, r"budget must be in \(0, 1\]"),
        ({"budget": 1.5}, r"budget must be in \(0, 1\]"),
        ({"sharing": "overlap"}, "unknown sharing variant 'overlap'"),
        ({"budget_metric": "flops"}, "unknown budget metric 'flops'"),
    ],
)
def test_bad_budget_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BudgetConfig(**kwargs)


def test_backbone_of_another_architecture_is_refused(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    record = json.loads((backbone / "backbone.json").read_text())
    record["arch"]["width_mult"] = 0.25
    other = tmp_path / "other"
    other.mkdir()
    (other / "backbone.json").write_text(json.dumps(record))
    (other / "backbone.safetensors").write_bytes((backbone / "backbone.safetensors").read_bytes())
    with pytest.raises(RunError, match="does not fit architecture"):
        train_budget_aware(domains, other, BudgetConfig(steps=1))
    with pytest.raises(RunError, match="no finished backbone"):
        train_budget_aware(domains, tmp_path / "missing", BudgetConfig(steps=1))
