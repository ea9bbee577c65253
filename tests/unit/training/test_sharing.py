"""Parameter-sharing losses."""

from __future__ import annotations

import pytest
import torch

from training.sharing import sharing_loss


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
