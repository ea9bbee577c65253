"""Projection onto the budget, in groups of channels."""

from __future__ import annotations

import pytest
import torch

from multidomain.costs import linear_cost
from tests.unit.training.synthetic import ARCH
from training.prune import project_to_budget


@pytest.mark.parametrize("group", [1, 4, 8])
def test_projection_guarantees_the_budget_in_whole_groups(group: int) -> None:
    costs = [linear_cost(ARCH, "params"), linear_cost(ARCH, "macs")]
    groups = [w // group for w in ARCH.full_mid_channels()]
    scores = [torch.randn(g, generator=torch.Generator().manual_seed(g)) for g in groups]
    active = [torch.ones(g, dtype=torch.bool) for g in groups]
    budget = max(c.floor(group) for c in costs) + 0.05
    masks, removed = project_to_budget(scores, active, costs, budget, group)
    channels = [group * int(m.sum()) for m in masks]
    assert removed > 0
    assert all(c.fraction(channels) <= budget for c in costs)
    assert all(m.sum() >= 1 for m in masks)  # at least one group per block
    assert [m.numel() for m in masks] == groups
    # the lowest-scoring groups went first (a block's last group is never removed)
    dropped = torch.cat([s[~m] for s, m in zip(scores, masks, strict=True)])
    removable = [s[m] for s, m in zip(scores, masks, strict=True) if m.sum() > 1]
    assert all(bool((kept >= dropped.max()).all()) for kept in removable)


def test_projection_keeps_one_group_in_a_block_left_without_any() -> None:
    costs = [linear_cost(ARCH, "params")]
    groups = [w // 4 for w in ARCH.full_mid_channels()]
    scores = [torch.arange(float(g)) for g in groups]
    active = [torch.zeros(g, dtype=torch.bool) for g in groups]
    masks, removed = project_to_budget(scores, active, costs, 1.0, 4)
    assert removed == 0
    assert [int(m.sum()) for m in masks] == [1] * len(groups)
    assert all(bool(m[-1]) for m in masks)  # the best-scoring group came back


def test_a_budget_below_the_group_floor_names_it() -> None:
    costs = [linear_cost(ARCH, "macs")]
    groups = [w // 8 for w in ARCH.full_mid_channels()]
    scores = [torch.zeros(g) for g in groups]
    active = [torch.ones(g, dtype=torch.bool) for g in groups]
    floor = costs[0].floor(8)
    with pytest.raises(ValueError, match=f"groups of 8 \\({floor:.4f}\\)"):
        project_to_budget(scores, active, costs, floor - 0.01, 8)
