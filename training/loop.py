"""The one training step loop, shared by pre-training, budget-aware training and the fine-tune
after projection.

One step, for every domain's feeder in turn: forward (plain, or through the domain's masks),
cross-entropy divided by the number of domains, backward. Then an optional extra loss (the
budget penalty and sharing term) is back-propagated, the optimizer steps and an optional
after-step hook runs (learning-rate schedule, clamping). The loop owns the progress bar, the
history (one stats row per step) and the checkpoint callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from multidomain.network import ResNet26
from training.common import training_progress
from training.data import DomainFeeder

__all__ = ["ExtraLoss", "train_steps"]


class ExtraLoss(NamedTuple):
    """A step's loss beyond cross-entropy and the numbers to show and record for it."""

    loss: Tensor
    stats: dict[str, float]


def _no_masks(domain: int) -> None:
    return None


def train_steps(
    model: ResNet26,
    feeders: Mapping[int, DomainFeeder],
    optimizer: torch.optim.Optimizer,
    steps: int,
    description: str,
    *,
    masks_for: Callable[[int], Sequence[Tensor] | None] = _no_masks,
    extra_loss: Callable[[int], ExtraLoss] | None = None,
    after_step: Callable[[int], None] | None = None,
    start_step: int = 0,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[dict[str, float]]:
    """Run steps ``start_step .. steps - 1``; ``feeders`` maps the model's domain index to the
    domain's batches. ``checkpoint(done)`` runs after every ``checkpoint_every`` steps but the
    last. Returns one row per step: ``step``, ``ce`` (summed over domains), the extra loss's
    stats and ``acc`` (training batches)."""
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    model.train()
    with training_progress() as progress:
        task = progress.add_task(description, total=steps, completed=start_step, stats="")
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            ce_sum, correct, count = 0.0, 0, 0
            for domain, feeder in feeders.items():
                images, targets = feeder.next()
                logits = model(images, domain, masks_for(domain))
                ce = loss_fn(logits, targets) / len(feeders)
                ce.backward()
                ce_sum += ce.item()
                correct += int((logits.argmax(1) == targets).sum())
                count += int(targets.numel())
            extra = extra_loss(step) if extra_loss is not None else None
            if extra is not None:
                extra.loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
            stats = extra.stats if extra is not None else {}
            history.append({"step": step, "ce": ce_sum, **stats, "acc": correct / count})
            rate = count / max(time.perf_counter() - t0, 1e-9)
            shown = "".join(
                f" {name.replace('_', ' ')} {value:.3f}" for name, value in stats.items()
            )
            progress.update(
                task,
                advance=1,
                stats=f"ce {ce_sum:.3f} acc {correct / count:.3f}{shown} {rate:,.0f} img/s",
            )
            done = step + 1
            if checkpoint is not None and done % checkpoint_every == 0 and done < steps:
                checkpoint(done)
    return history
