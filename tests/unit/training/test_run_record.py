"""Which data a run saw and what training learned, as the backbone record and the manifest keep
them: data digests and the refusal of a backbone pre-trained on other splits, the protocol
(same-domain, held-out), the learned sharing weight, the projection's changes and the compact
training history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from multidomain.files import read_json
from tests.unit.training.synthetic import ARCH, synthetic_domain
from training.budget import BudgetConfig, train_budget_aware
from training.data import DataError, DomainData, domain_digest
from training.export import TimingConfig, export_artifact
from training.history import StepTrace, compact_history, history_interval
from training.pretrain import BACKBONE_RECORD, PretrainConfig, backbone_record, pretrain_backbone
from training.protocol import PROTOCOLS, protocol_of

GROUP = 4
FAST_TIMING = TimingConfig(batch_sizes=(1,), repeats=1)


def small_config(**changes: object) -> BudgetConfig:
    base: dict[str, object] = {
        "budget": 0.5,
        "channel_group": GROUP,
        "steps": 10,
        "batch_size": 8,
        "finetune_steps": 1,
    }
    return BudgetConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_the_backbone_records_the_digest_of_every_domain_it_saw(
    domains: list[DomainData], backbone: Path
) -> None:
    data = backbone_record(backbone)["data"]
    assert data["split_seed"] == 0
    assert data["domains"] == {d.name: domain_digest(d) for d in domains}
    assert len(data["digest"]) == 64


def test_train_refuses_a_backbone_pre_trained_on_other_splits(
    domains: list[DomainData], backbone: Path
) -> None:
    resplit = [synthetic_domain("alpha", 3, 5), domains[1]]  # alpha's images split otherwise
    with pytest.raises(DataError) as refused:
        train_budget_aware(resplit, backbone, small_config(split_seed=1))
    message = str(refused.value)
    assert "domain 'alpha'" in message
    assert domain_digest(domains[0]) in message and domain_digest(resplit[0]) in message
    assert "--split-seed 1 here but 0 for the backbone" in message
    with pytest.raises(DataError, match="the data changed since pre-training"):
        train_budget_aware(resplit, backbone, small_config())


def test_a_backbone_without_a_data_record_is_refused(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for file in backbone.iterdir():
        (old / file.name).write_bytes(file.read_bytes())
    record = read_json(old / BACKBONE_RECORD, ValueError)
    del record["data"]
    (old / BACKBONE_RECORD).write_text(json.dumps(record))
    with pytest.raises(DataError, match="records no data digest"):
        train_budget_aware(domains, old, small_config())


def test_init_from_a_backbone_on_other_splits_is_refused_and_its_domains_are_inherited(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    config = PretrainConfig(steps=1, batch_size=8)
    with pytest.raises(DataError, match="domain 'alpha'"):
        pretrain_backbone([synthetic_domain("alpha", 3, 5)], ARCH, config, tmp_path / "a", backbone)
    gamma = synthetic_domain("gamma", 2, 7)
    record = pretrain_backbone([gamma], ARCH, config, tmp_path / "b", backbone)
    assert set(record["data"]["domains"]) == {"alpha", "beta", "gamma"}
    assert record["domains"] == ["gamma"]


def test_held_out_domains_train_with_new_heads_and_the_manifest_says_so(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    unseen = [synthetic_domain("gamma", 5, 2), synthetic_domain("delta", 2, 3)]
    trained = train_budget_aware(unseen, backbone, small_config())
    _, manifest = export_artifact(trained, tmp_path, "tiny", "held", FAST_TIMING)
    assert manifest["protocol"] == "held-out"
    assert manifest["backbone"]["domains"] == ["alpha", "beta"]
    assert manifest["backbone"]["data"] == backbone_record(backbone)["data"]
    assert manifest["data"]["domains"] == {d.name: domain_digest(d) for d in unseen}
    assert [e["seen_by_backbone"] for e in manifest["domains"]] == [False, False]
    assert [len(e["labels"]) for e in manifest["domains"]] == [5, 2]


def test_protocols() -> None:
    assert protocol_of(["a", "b"], ["a"]) == "same-domain"
    assert protocol_of(["a", "b"], ["c"]) == "held-out"
    assert protocol_of(["a", "b"], ["b", "c"]) == "mixed"
    held = PROTOCOLS["held-out"]
    assert not set(held.source) & set(held.target)
    assert held.train_domains() == ["embedded:digits", "embedded:faces", "embedded:letters"]
    same = PROTOCOLS["same-domain"]
    assert protocol_of(same.source, same.target) == "same-domain"
    assert protocol_of(held.source, held.target) == "held-out"


@pytest.mark.parametrize("learnable", [False, True])
def test_the_manifest_records_what_training_learned(
    domains: list[DomainData], backbone: Path, tmp_path: Path, learnable: bool
) -> None:
    config = small_config(
        budget=0.4,
        steps=12,
        sharing_weight=2.0,
        learnable_sharing_weight=learnable,
        lr_scores=0.1,
        history_every=5,
    )
    trained = train_budget_aware(domains, backbone, config)
    _, manifest = export_artifact(trained, tmp_path, "tiny", "v1", FAST_TIMING)
    sharing = manifest["sharing"]
    assert sharing["initial_weight"] == 2.0 and sharing["learnable_weight"] is learnable
    if learnable:  # Adam moved log(gamma) by about lr_scores per step
        assert sharing["weight"] != pytest.approx(2.0, abs=0.05)
    else:
        assert sharing["weight"] == 2.0
    history = manifest["training"]["history"]
    assert history["step"] == [5, 10, 12] and history["every"] == 5
    # gamma as each row's step used it: moving when learned, the fixed weight otherwise
    assert (len(set(history["sharing_weight"])) > 1) is learnable
    assert set(history["cost"]) == {"params", "macs"}
    for name in ("alpha", "beta"):
        assert len(history["target"][name]) == 3
        assert history["target"][name][-1] == pytest.approx(0.4)
        for metric in ("params", "macs"):
            assert len(history["cost"][metric][name]) == 3
            assert all(0 < c <= 1 for c in history["cost"][metric][name])
    for entry, learned in zip(manifest["domains"], trained.learned_costs, strict=True):
        assert entry["learned_costs"] == learned
        removed = entry["projection"]["removed"]
        assert len(removed) == len(ARCH.full_mid_channels())
        assert GROUP * sum(len(groups) for groups in removed) == entry["projected_channels"]
        for block, groups in enumerate(removed):  # removed groups are off in the export
            kept = set(entry["channels"][block])
            origin = manifest["compact_channel_origin"][block]
            used = {origin[c] // GROUP for c in kept}
            assert not used & set(groups)
    assert len(json.dumps(manifest["training"]["history"])) < 4096


def test_the_projection_change_is_recorded_when_training_stays_over_budget(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    """Two steps cannot reach a budget of 0.38: the projection switches groups off, and the
    manifest names them."""
    trained = train_budget_aware(domains, backbone, small_config(budget=0.38, steps=2))
    _, manifest = export_artifact(trained, tmp_path, "tiny", "v1", FAST_TIMING)
    for entry in manifest["domains"]:
        assert entry["learned_costs"]["params"] > 0.38
        assert entry["projected_channels"] > 0
        assert GROUP * sum(map(len, entry["projection"]["removed"])) == entry["projected_channels"]


def test_compact_history_averages_each_window() -> None:
    rows = [{"step": s, "ce": float(s), "acc": 0.5} for s in range(7)]
    traces = [StepTrace([[0.1 * s, 0.2], [0.3, 0.4]], [1.0, 0.9], s, 2.0, 0.0) for s in range(7)]
    history = compact_history(rows, traces, ["a", "b"], ["params", "macs"], 3)
    assert history["step"] == [3, 6, 7]
    assert history["ce"] == [1.0, 4.0, 6.0]  # means of steps 0-2, 3-5, 6
    assert history["cost"]["params"]["a"] == [0.2, 0.5, 0.6]
    assert history["cost"]["macs"]["b"] == [0.4, 0.4, 0.4]
    assert history["target"]["b"] == [0.9, 0.9, 0.9]
    assert history_interval(300) == 10 and history_interval(300, 7) == 7
    assert history_interval(5) == 1
    with pytest.raises(ValueError, match="7 step rows but 6 traces"):
        compact_history(rows, traces[:6], ["a", "b"], ["params", "macs"], 3)
    assert math.isclose(history["accuracy"][0], 0.5)
