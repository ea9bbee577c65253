"""The one training step loop, shared by pre-training, budget-aware training and the fine-tune
after projection.

One step takes one batch per domain (``TrainBatches``) and, for every domain in turn: forward
through the step's network, cross-entropy divided by the number of domains, backward. Then an
optional extra loss (the budget penalty and sharing term) is back-propagated, the optimizer
steps and an optional after-step hook runs (learning-rate schedule, clamping). The loop owns the
progress bar, the history (one stats row per step) and the checkpoint callback.

In a distributed run the network is DDP-wrapped (``Runtime.wrap``): the domains' backward passes
accumulate locally (``no_sync``) and the last one averages the accumulated gradients over the
ranks. The extra loss depends only on parameters every rank holds identically (switch scores),
so each rank back-propagates it locally after that average: counted once, as in one process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from multidomain.network import ChannelSwitches, ResNet26
from training.common import training_progress
from training.data import TrainBatches
from training.runtime import Runtime

__all__ = ["ExtraLoss", "StepNetwork", "train_steps"]


class ExtraLoss(NamedTuple):
    """A step's loss beyond cross-entropy and the numbers to show and record for it."""

    loss: Tensor
    stats: dict[str, float]


class StepNetwork(nn.Module):
    """What a training step runs, as one module (so that DDP sees every trained parameter):
    ``model(images, domain, masks_for(domain))``. ``switches``, when given, are registered as a
    submodule: their scores are parameters that the masks come from."""

    def __init__(
        self,
        model: ResNet26,
        masks_for: Callable[[int], Sequence[Tensor] | None] | None = None,
        switches: ChannelSwitches | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.switches = switches
        self.masks_for = masks_for

    def forward(self, images: Tensor, domain: int) -> Tensor:
        masks = self.masks_for(domain) if self.masks_for is not None else None
        return self.model(images, domain, masks)


def train_steps(
    network: nn.Module,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    steps: int,
    description: str,
    *,
    runtime: Runtime | None = None,
    extra_loss: Callable[[int], ExtraLoss] | None = None,
    after_step: Callable[[int], None] | None = None,
    start_step: int = 0,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[dict[str, float]]:
    """Run steps ``start_step .. steps - 1``; ``network(images, domain)`` gives a domain's
    logits (a ``StepNetwork``, possibly DDP-wrapped), or ``[views, N, classes]`` logits of
    several masks of the same batch (``training.nested``), the loss their mean.
    ``checkpoint(done)`` runs after every ``checkpoint_every`` steps but the last. Returns one
    row per step: ``step``, ``ce`` (summed over domains), the extra loss's stats and ``acc``
    (training batches, all ranks)."""
    runtime = runtime or Runtime()
    scaler = runtime.grad_scaler()
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    network.train()
    with training_progress() as progress:
        task = progress.add_task(description, total=steps, completed=start_step, stats="")
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_batches = batches.next()
            totals = torch.zeros(3, dtype=torch.float64, device=runtime.device)
            for i, (domain, (images, targets)) in enumerate(step_batches.items()):
                last = i == len(step_batches) - 1
                with _gradient_sync(network, last):
                    with runtime.autocast():
                        logits = network(images, domain)
                    if logits.dim() == 3:  # several masks of one batch (nested levels)
                        targets = targets.repeat(logits.shape[0])
                        logits = logits.flatten(0, 1)
                    ce = loss_fn(logits.float(), targets) / len(step_batches)
                    (scaler.scale(ce) if scaler is not None else ce).backward()
                totals[0] += ce.detach().double()
                totals[1] += (logits.argmax(1) == targets).sum()
                totals[2] += targets.numel()
            extra = extra_loss(step) if extra_loss is not None else None
            if extra is not None and extra.loss.requires_grad:  # else no parameter moves it now
                (scaler.scale(extra.loss) if scaler is not None else extra.loss).backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if after_step is not None:
                after_step(step)
            ce_sum, correct, count = runtime.all_reduce_sum(totals.cpu()).tolist()
            ce_sum /= runtime.world_size
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


def _gradient_sync(network: nn.Module, sync: bool) -> contextlib.AbstractContextManager[object]:
    """DDP averages gradients only in the step's last backward pass; the others accumulate."""
    if isinstance(network, DistributedDataParallel) and not sync:
        return network.no_sync()
    return contextlib.nullcontext()
