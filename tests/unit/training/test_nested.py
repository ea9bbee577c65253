"""Nested budgets from one training run on tiny synthetic data: the levels' masks are nested for
every domain, each level holds its budget in groups of channels after export, pruning keeps
only what the largest level uses, each level's compact logits equal its masked model's (with
its own BatchNorm statistics and, by default, its own BN affines and heads), and bad level lists
are refused."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from multidomain.artifact import ArtifactError, load_artifact
from multidomain.costs import linear_cost
from multidomain.preprocess import normalize_batch
from tests.artifacts import write_tiny_nested_artifact
from tests.unit.training.synthetic import ARCH
from training.budget import BudgetConfig
from training.data import DomainData, iterate_eval
from training.export import TimingConfig, export_artifact
from training.nested import level_state, nested_group_masks, sandwich_levels, train_nested

GROUP = 4  # the synthetic widths are 8/16/32
LEVELS = (1.0, 0.7, 0.45)
FAST_TIMING = TimingConfig(batch_sizes=(1, 8), repeats=2)


def test_nested_group_masks_are_nested_and_within_every_budget() -> None:
    costs = [linear_cost(ARCH, "params"), linear_cost(ARCH, "macs")]
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        scores = [torch.randn(w // GROUP, generator=generator) for w in ARCH.full_mid_channels()]
        budgets = [1.0, 0.8, 0.6, 0.45, 0.36]  # the floor is 0.345 at width 0.125, groups of 4
        levels = nested_group_masks(scores, costs, budgets, GROUP)
        for budget, masks in zip(budgets, levels, strict=True):
            kept = [GROUP * int(m.sum()) for m in masks]
            assert all(k >= GROUP for k in kept)
            assert all(c.fraction(kept) <= budget + 1e-9 for c in costs)
        for upper, lower in itertools.pairwise(levels):
            assert all(bool((low & ~up).sum() == 0) for up, low in zip(upper, lower, strict=True))
            assert sum(int(m.sum()) for m in lower) <= sum(int(m.sum()) for m in upper)
        assert sum(int(m.sum()) for m in levels[-1]) < sum(int(m.sum()) for m in levels[0])


def test_nested_group_masks_spend_every_capped_cost_not_only_the_binding_one() -> None:
    """Scores that slightly favour the last stage (param-heavy, MAC-light channels): a drop
    order by score alone empties the cheaper stages first and leaves the MAC budget unused
    (params bind at 0.75 with MACs near 0.55); the cost-aware order spends both caps."""
    costs = [linear_cost(ARCH, "params"), linear_cost(ARCH, "macs")]
    widths = ARCH.full_mid_channels()
    last = max(range(len(widths)), key=widths.__getitem__)
    generator = torch.Generator().manual_seed(0)
    scores = [
        torch.full((w // GROUP,), 1.2 if w == widths[last] else 1.0)
        + 0.01 * torch.randn(w // GROUP, generator=generator)
        for w in widths
    ]
    budgets = [1.0, 0.75, 0.6]
    levels = nested_group_masks(scores, costs, budgets, GROUP)
    for budget, masks in zip(budgets, levels, strict=True):
        kept = [GROUP * int(m.sum()) for m in masks]
        fractions = [c.fraction(kept) for c in costs]
        assert max(fractions) <= budget + 1e-9
        assert min(fractions) >= budget - 0.06, (budget, fractions)


def test_sandwich_levels_take_the_largest_the_smallest_and_one_between() -> None:
    rng = random.Random(0)
    draws = [sandwich_levels(4, rng) for _ in range(50)]
    assert all(d[0] == 0 and d[-1] == 3 and len(d) == 3 for d in draws)
    assert {d[1] for d in draws} == {1, 2}
    assert sandwich_levels(2, rng) == [0, 1]


@pytest.mark.parametrize(
    ("levels", "message"),
    [((0.5,), "at least two"), ((0.5, 0.5), "at least two"), ((1.2, 0.5), r"\(0, 1\]")],
)
def test_bad_level_lists_are_refused(levels: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BudgetConfig(levels=levels)
    with pytest.raises(ValueError, match="own --budget"):
        BudgetConfig(levels=(1.0, 0.5), domain_budgets=(("alpha", 0.3),))
    assert BudgetConfig(levels=(0.5, 1.0)).levels == (1.0, 0.5)
    assert BudgetConfig(levels=(0.5, 1.0)).budget == 1.0


def test_nested_training_exports_every_level_nested_within_its_budget(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    config = BudgetConfig(
        levels=LEVELS, channel_group=GROUP, sharing="union", steps=12, batch_size=8
    )
    trained = train_nested(domains, backbone, config)
    assert [level.budget for level in trained.levels] == list(LEVELS)
    assert all(row["share"] >= 0 for row in trained.history)
    path, manifest = export_artifact(trained, tmp_path, "nested", "v1", FAST_TIMING)
    artifact = load_artifact(path)
    assert manifest["budgets"] == list(LEVELS) and manifest["budget"] == LEVELS[0]
    assert [row["budget"] for row in manifest["levels"]] == list(LEVELS)
    # pruning keeps exactly the union of the largest level's masks
    union = [int(m.any(dim=0).sum()) for m in trained.levels[0].masks]
    assert manifest["compact_mid_channels"] == union
    costs = [linear_cost(ARCH, "params"), linear_cost(ARCH, "macs")]
    for entry in artifact.domains:
        data = domains[entry.index]
        assert [level.budget for level in entry.levels] == list(LEVELS)
        for j, level in enumerate(entry.levels):
            assert all(m % GROUP == 0 and m >= GROUP for m in level.mid_channels)
            assert all(c.fraction(level.mid_channels) <= level.budget + 1e-9 for c in costs)
            assert level.info["max_compact_logit_diff"] <= 1e-4
            assert set(level.info["latency"]["measured_fraction"]) == {"1", "8"}
            assert 0 <= level.info["test_accuracy"] <= 1
            if j:
                assert "test_accuracy_shared_bn" in level.info
                upper = entry.levels[j - 1]
                for mine, theirs in zip(level.channels, upper.channels, strict=True):
                    assert set(mine) <= set(theirs)
        # each level's compact logits equal its masked model's, with the level's state
        for j, level_trained in enumerate(trained.levels):
            subnet = artifact.level_subnet(entry.name, j)
            masks = [m[entry.index].float() for m in level_trained.masks]
            trained.model.eval()
            with level_state(trained.model, level_trained), torch.no_grad():
                for images, _ in iterate_eval(data, "test", 64):
                    x = normalize_batch(images, data.mean, data.std)
                    diff = (subnet(x) - trained.model(x, entry.index, masks)).abs().max()
                    assert float(diff) <= 1e-4
        # the levels' statistics differ: a level served with the largest's would not match
        low = trained.levels[-1]
        assert any(
            not torch.equal(value, trained.levels[0].state[name])
            for name, value in low.state.items()
            if name.endswith("running_mean")
        )
    # private level state: every level trained its own heads and BN affines, all served
    assert manifest["level_state"] == "private"
    for j in range(1, len(LEVELS)):
        for k in range(len(domains)):
            own = artifact.level_domain_tensors(artifact.domains[k].name, j)
            assert not torch.equal(own["head.weight"], artifact.domain_tensors[k]["head.weight"])
            assert not torch.equal(
                own["stem.bn.weight"], artifact.domain_tensors[k]["stem.bn.weight"]
            )


def test_the_fine_tune_trains_every_level_under_its_final_masks(
    domains: list[DomainData], backbone: Path
) -> None:
    def run(finetune_steps: int):
        config = BudgetConfig(
            levels=LEVELS, channel_group=GROUP, steps=4, batch_size=8, finetune_steps=finetune_steps
        )
        return train_nested(domains, backbone, config)

    plain, tuned = run(0), run(3)
    for before, after in zip(plain.levels, tuned.levels, strict=True):
        # the masks are fixed: the scores do not train in the fine-tune
        assert all(torch.equal(a, b) for a, b in zip(before.masks, after.masks, strict=True))
        # every level's own head and affines do
        heads = [n for n in after.state if ".heads." in f".{n}" and n.endswith("weight")]
        assert heads and all(not torch.equal(before.state[n], after.state[n]) for n in heads)


def test_shared_level_state_trains_one_head_and_affine_set_for_every_level(
    domains: list[DomainData], backbone: Path, tmp_path: Path
) -> None:
    config = BudgetConfig(
        levels=LEVELS, channel_group=GROUP, steps=4, batch_size=8, level_state="shared"
    )
    trained = train_nested(domains, backbone, config)
    path, manifest = export_artifact(trained, tmp_path, "nested", "v1", FAST_TIMING)
    artifact = load_artifact(path)
    assert manifest["level_state"] == "shared"
    for j in range(1, len(LEVELS)):
        assert not any(n.startswith("head.") for n in artifact.level_tensors[j - 1][0])
        own = artifact.level_domain_tensors(artifact.domains[0].name, j)
        assert torch.equal(own["stem.bn.weight"], artifact.domain_tensors[0]["stem.bn.weight"])
    with pytest.raises(ValueError, match="level state"):
        BudgetConfig(levels=LEVELS, level_state="per-level")  # type: ignore[arg-type]


def test_a_manifest_whose_levels_are_not_nested_is_refused(tmp_path: Path) -> None:
    path = write_tiny_nested_artifact(tmp_path)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    levels = manifest["domains"][0]["levels"]
    levels[2]["channels"], levels[1]["channels"] = levels[1]["channels"], levels[2]["channels"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not nested"):
        load_artifact(path)
