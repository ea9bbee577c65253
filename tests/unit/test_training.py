"""Pre-training, budget-aware training, projection, pruning and export on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from multidomain.arch import ArchSpec
from multidomain.artifact import load_artifact
from multidomain.costs import linear_cost, subnet_totals
from multidomain.preprocess import normalize_batch
from training.budget import BudgetConfig, export_artifact, train_budget_aware
from training.data import DomainData, iterate_eval
from training.pretrain import PretrainConfig, RunError, pretrain_backbone
from training.prune import project_to_budget
from training.sharing import sharing_loss

ARCH = ArchSpec(width_mult=0.125, image_size=16)


def synthetic_domain(name: str, classes: int, seed: int, size: int = 16) -> DomainData:
    """Class ``c`` is a bright square at a class-specific place on noise: learnable, real pixels."""
    rng = np.random.default_rng(seed)
    images, targets = {}, {}
    for split, n in (("train", 96), ("val", 24), ("test", 24)):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
        for i, c in enumerate(y):
            row = (c * 5) % (size - 4)
            x[i, row : row + 4, 2:6, c % 3] = 250
        images[split], targets[split] = x, y.astype(np.int64)
    return DomainData(
        name,
        [f"c{c}" for c in range(classes)],
        images,
        targets,
        (0.15, 0.15, 0.15),
        (0.25, 0.25, 0.25),
        True,
        "synthetic",
    )


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


def test_projection_guarantees_the_budget() -> None:
    costs = [linear_cost(ARCH, "params"), linear_cost(ARCH, "macs")]
    widths = ARCH.full_mid_channels()
    scores = [torch.randn(w, generator=torch.Generator().manual_seed(w)) for w in widths]
    active = [torch.ones(w, dtype=torch.bool) for w in widths]
    masks, removed = project_to_budget(scores, active, costs, 0.3)
    counts = [float(m.sum()) for m in masks]
    assert removed > 0
    assert all(c.fraction(counts) <= 0.3 for c in costs)
    assert all(m.sum() >= 1 for m in masks)
    with pytest.raises(ValueError, match="below the least a domain can cost"):
        project_to_budget(scores, active, costs, 0.01)


def test_sharing_losses() -> None:
    same = [torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])]
    apart = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])]
    weights = [1.0]
    assert float(sharing_loss("intersection", same, weights)) == 0.0
    assert float(sharing_loss("jaccard", same, weights)) == 0.0
    assert float(sharing_loss("jaccard", apart, weights)) == 1.0
    assert float(sharing_loss("union", same, weights)) == pytest.approx(2 / 3)
    assert float(sharing_loss("union", apart, weights)) == pytest.approx(2 / 3)
    assert float(sharing_loss("intersection", apart, weights)) == pytest.approx(1 / 3)
    assert float(sharing_loss("none", apart, weights)) == 0.0


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
