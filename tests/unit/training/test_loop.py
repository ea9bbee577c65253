"""The one step loop: every domain's cross-entropy, the extra loss, the hooks, history and
checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multidomain.network import ResNet26
from tests.unit.training.synthetic import ARCH
from training.data import DomainData, TrainBatches
from training.loop import ExtraLoss, StepNetwork, train_steps


def _batches(domains: list[DomainData]) -> TrainBatches:
    return TrainBatches(dict(enumerate(domains)), 8, {k: 10 + k for k in range(len(domains))})


def test_loop_runs_the_extra_loss_hooks_and_checkpoints(domains: list[DomainData]) -> None:
    model = ResNet26(ARCH, [d.num_classes for d in domains])
    extra_weight = nn.Parameter(torch.zeros(()))  # only the extra loss moves it
    optimizer = torch.optim.SGD([*model.parameters(), extra_weight], lr=0.1)
    masked, after, saved = [], [], []

    def masks_for(domain: int) -> None:
        masked.append(domain)

    history = train_steps(
        StepNetwork(model, masks_for),
        _batches(domains),
        optimizer,
        6,
        "test",
        extra_loss=lambda step: ExtraLoss(extra_weight * 1.0, {"max_cost": step / 10}),
        after_step=after.append,
        start_step=1,
        checkpoint=saved.append,
        checkpoint_every=2,
    )
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5]
    assert list(history[0]) == ["step", "ce", "max_cost", "acc"]
    assert [row["max_cost"] for row in history] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(row["ce"] > 0 and 0 <= row["acc"] <= 1 for row in history)
    assert masked == [0, 1] * 5  # every domain, in order, every step
    assert after == [1, 2, 3, 4, 5]
    assert saved == [2, 4]  # never after the last step: the run writes its result instead
    assert float(extra_weight.detach()) == pytest.approx(-0.5)  # five steps of gradient 1 at lr 0.1


def test_loop_loss_is_the_mean_cross_entropy_over_domains(domains: list[DomainData]) -> None:
    torch.manual_seed(0)
    model = ResNet26(ARCH, [d.num_classes for d in domains])
    reference = ResNet26(ARCH, [d.num_classes for d in domains])
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: compare one step
    (row,) = train_steps(StepNetwork(model), _batches(domains), optimizer, 1, "test")
    reference.train()
    expected = 0.0
    with torch.no_grad():
        for k, (images, targets) in _batches(domains).next().items():
            expected += float(nn.functional.cross_entropy(reference(images, k), targets)) / 2
    assert row["ce"] == pytest.approx(expected, rel=1e-5)
