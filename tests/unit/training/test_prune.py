"""Projection onto the budget."""

from __future__ import annotations

import pytest
import torch

from multidomain.costs import linear_cost
from tests.unit.training.synthetic import ARCH
from training.prune import project_to_budget


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
