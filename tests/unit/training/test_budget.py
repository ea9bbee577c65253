"""Budget-aware training and export on tiny synthetic data: training itself reaches the budget,
the exported compact model keeps every domain's budget in groups of channels and matches the
masked model; bad configurations and backbones are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from multidomain.arch import ArchitectureError
from multidomain.artifact import WEIGHTS_FILE, load_artifact
from multidomain.costs import count_artifact, linear_cost, subnet_totals
from multidomain.files import safetensors_shapes
from multidomain.groups import cpu_capability
from multidomain.latency import LatencyTable
from multidomain.preprocess import normalize_batch
from tests.unit.training.synthetic import ARCH
from training.budget import BudgetConfig, budget_costs, train_budget_aware
from training.data import DomainData, iterate_eval
from training.errors import RunError
from training.export import TimingConfig, export_artifact

GROUP = 4  # the synthetic widths are 8/16/32
FAST_TIMING = TimingConfig(batch_sizes=(1, 8), repeats=2)


def linear_table(path: Path, capability: str | None = None) -> Path:
    """A latency table whose block times grow linearly with the kept groups (as if measured)."""
    groups = [m // GROUP for m in ARCH.full_mid_channels()]
    table = LatencyTable(
        ARCH,
        GROUP,
        capability or cpu_capability(),
        1,
        (1, 8),
        {1: 2.0, 8: 10.0},
        {b: [[0.1 * b * (k + 1) / g for k in range(g)] for g in groups] for b in (1, 8)},
        {},
    )
    table.save(path)
    return path


@pytest.mark.parametrize("variant", ["none", "union"])
def test_budget_training_exports_compact_model_within_every_budget(
    domains: list[DomainData], backbone: Path, tmp_path: Path, variant: str
) -> None:
    config = BudgetConfig(
        budget=0.45,
        domain_budgets=(("alpha", 0.38),),
        channel_group=GROUP,
        sharing=variant,  # type: ignore[arg-type]
        steps=25,
        batch_size=16,
        finetune_steps=3,
    )
    trained = train_budget_aware(domains, backbone, config)
    path, manifest = export_artifact(trained, tmp_path, "tiny", "v1", FAST_TIMING)
    artifact = load_artifact(path)
    shapes = safetensors_shapes(path / WEIGHTS_FILE)
    counted_weights = count_artifact(ARCH, shapes, [d.name for d in artifact.domains])
    assert counted_weights.compact_params == manifest["compact"]["params"]
    for written, domain in zip(manifest["domains"], counted_weights.domains, strict=True):
        assert (domain.params, domain.macs, domain.head_params, domain.head_macs) == (
            written["params"],
            written["macs"],
            written["head_params"],
            written["head_macs"],
        )
    assert manifest["channel_group"] == GROUP
    assert manifest["cpu_capability"] == cpu_capability()
    assert all(u % GROUP == 0 for u in manifest["compact_mid_channels"])
    budgets = {"alpha": 0.38, "beta": 0.45}
    for metric in ("params", "macs"):
        cost = linear_cost(ARCH, metric)
        for entry in artifact.domains:
            budget = budgets[entry.name]
            assert entry.info["budget"] == budget
            assert all(m % GROUP == 0 and m >= GROUP for m in entry.mid_channels)
            assert cost.fraction(entry.mid_channels) <= budget + 1e-9
            assert entry.info[f"{metric}_fraction"] <= budget + 1e-9
            assert entry.info["budget_costs"][metric] <= budget + 1e-9
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
        assert counter.get_total_flops() == 2 * counted.macs
        assert counted.macs == entry.info["macs"] + entry.info["head_macs"]
        assert counted.params == entry.info["params"] + entry.info["head_params"]
        backbone = manifest["backbone"]
        assert entry.info["macs"] / backbone["macs"] == entry.info["macs_fraction"]
        assert entry.info["params"] / backbone["params"] == entry.info["params_fraction"]
        assert entry.info["max_compact_logit_diff"] <= 1e-4
        timed = entry.info["latency"]
        assert set(timed["measured_fraction"]) == {"1", "8"}
        assert all(v > 0 for v in timed["measured_ms"].values())
        assert "predicted_fraction" not in timed  # no latency table given
    assert set(manifest["latency"]["backbone_ms"]) == {"1", "8"}


def test_training_itself_reaches_the_budget(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    """The cost learned by training, before the projection touches the masks, is at the
    budget (at most a few hundredths over, not collapsed far below): the penalty drives it
    there (with the penalty off it stays near 0.9)."""
    config = BudgetConfig(
        budget=0.5,
        budget_metric="params",
        channel_group=GROUP,
        sharing="none",
        steps=60,
        batch_size=8,
        score_init=0.5,
        finetune_steps=0,
    )
    trained = train_budget_aware(domains, backbone, config)
    for learned in trained.learned_costs:
        assert 0.5 - 0.15 <= learned["params"] <= 0.5 + 0.04, trained.learned_costs
    # the projection had little or nothing left to do
    assert sum(trained.projected_channels) <= 2 * GROUP
    _, manifest = export_artifact(trained, tmp_path, "tiny", "v1", FAST_TIMING)
    for entry in manifest["domains"]:
        assert entry["learned_costs"]["params"] == pytest.approx(
            trained.learned_costs[entry["name"] == "beta"]["params"]
        )
        assert entry["budget_costs"]["params"] <= 0.5


def test_latency_budget_caps_the_predicted_time(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    table = linear_table(tmp_path / "table.json")
    config = BudgetConfig(
        budget=0.6,
        budget_metric="latency",
        latency_table=table,
        channel_group=GROUP,
        steps=20,
        batch_size=8,
        finetune_steps=2,
    )
    trained = train_budget_aware(domains, backbone, config)
    _, manifest = export_artifact(trained, tmp_path, "tiny", "v1", FAST_TIMING)
    assert manifest["budget_caps"] == ["latency@8"]
    loaded = LatencyTable.load(table)
    for entry in manifest["domains"]:
        predicted = loaded.predicted_ms(8, entry["mid_channels"]) / loaded.backbone_ms[8]
        assert entry["budget_costs"]["latency@8"] == pytest.approx(predicted)
        assert predicted <= 0.6 + 1e-9
        assert entry["latency"]["predicted_fraction"]["8"] == pytest.approx(predicted, abs=1e-4)
        assert set(entry["latency"]["measured_fraction"]) == {"1", "8"}
    assert manifest["latency"]["table"]["batch_sizes"] == [1, 8]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0.0}, r"budget must be in \(0, 1\]"),
        ({"budget": 1.5}, r"budget must be in \(0, 1\]"),
        ({"domain_budgets": (("digits", 1.5),)}, r"budget of domain 'digits' must be in \(0, 1\]"),
        ({"domain_budgets": (("a", 0.3), ("a", 0.4))}, "a domain's budget is given twice"),
        ({"sharing": "overlap"}, "unknown sharing variant 'overlap'"),
        ({"budget_metric": "flops"}, "unknown budget metric 'flops'"),
        ({"budget_metric": "latency"}, "budget metric latency needs a latency table"),
        ({"channel_group": 3}, "channel group must be auto or one of 1, 4, 8, 16, got 3"),
    ],
)
def test_bad_budget_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BudgetConfig(**kwargs)


def test_budget_checks_that_need_only_the_architecture(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError, match="channel group 16 does not divide the mid width 8"):
        budget_costs(ARCH, BudgetConfig(channel_group=16))
    floor = linear_cost(ARCH, "macs").floor(GROUP)
    with pytest.raises(ValueError, match=f"below the least .* groups of 4: {floor:.4f} of"):
        budget_costs(ARCH, BudgetConfig(budget=floor - 0.01, channel_group=GROUP))
    config = BudgetConfig(budget=0.9, domain_budgets=(("a", floor / 2),), channel_group=GROUP)
    with pytest.raises(ValueError, match=f"budget {floor / 2:g} is below"):
        budget_costs(ARCH, config)
    with pytest.raises(ValueError, match="--budget names unknown domain 'a'; the domains are b"):
        config.check_domains(["b"])
    other = linear_table(tmp_path / "neon.json", capability="NEON")
    with pytest.raises(ValueError, match="CPU capability NEON"):
        budget_costs(ARCH, BudgetConfig(latency_table=other, channel_group=GROUP))


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
        train_budget_aware(domains, other, BudgetConfig(steps=1, channel_group=GROUP))
    with pytest.raises(RunError, match="no finished backbone"):
        train_budget_aware(domains, tmp_path / "missing", BudgetConfig(steps=1))
