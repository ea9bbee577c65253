"""Backbone pre-training: the single-domain baseline (or a named set of source domains).

All weights train; each source domain has its own BN set and head and the domains' batches are
interleaved in every step. Writes ``backbone.safetensors`` + ``backbone.json`` and keeps a
``checkpoint.safetensors`` + ``checkpoint.json`` to resume from.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from multidomain.arch import ArchSpec
from multidomain.costs import backbone_totals
from multidomain.network import ResNet26
from training.common import (
    DomainFeeder,
    console,
    evaluate,
    mean,
    seed_everything,
    training_progress,
    write_json,
    write_tensors,
)
from training.data import DomainData

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_RECORD = "backbone.json"
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_RECORD = "checkpoint.json"


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used."""


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch size and checkpoint interval must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")


def load_backbone(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and weights of a finished pre-training run."""
    record_path = Path(run_dir) / BACKBONE_RECORD
    weights_path = Path(run_dir) / BACKBONE_WEIGHTS
    if not record_path.is_file() or not weights_path.is_file():
        raise RunError(f"no finished backbone in {run_dir} (expected {BACKBONE_RECORD})")
    record = json.loads(record_path.read_text())
    return record, load_file(str(weights_path))


def pretrain_backbone(
    domains: Sequence[DomainData],
    arch: ArchSpec,
    config: PretrainConfig,
    run_dir: Path,
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train (or resume training) the backbone on ``domains``; returns the JSON record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    model = ResNet26(arch, [d.num_classes for d in domains])
    if init_from is not None:
        _, weights = load_backbone(init_from)
        own = model.state_dict()
        shared = {
            k: v for k, v in weights.items() if k in own and "bn" not in k and "heads" not in k
        }
        for k, v in shared.items():
            if own[k].shape != v.shape:
                raise RunError(f"{init_from}: tensor {k} has another architecture's shape")
        model.load_state_dict(shared, strict=False)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))
    )
    identity = {
        "arch": arch.to_dict(),
        "config": asdict(config),
        "domains": [d.name for d in domains],
        "init_from": None if init_from is None else str(init_from),
    }
    finished = run_dir / BACKBONE_RECORD
    if finished.is_file():
        record = json.loads(finished.read_text())
        if {k: record.get(k) for k in identity} != identity:
            raise RunError(
                f"{run_dir} already holds a backbone of another configuration; "
                "use a new run directory"
            )
        console.print(f"reusing the finished backbone in {run_dir}")
        return dict(record)
    start_step, elapsed = _resume(run_dir, identity, model, optimizer, scheduler)
    feeders = [
        DomainFeeder(d, config.batch_size, config.seed + 7 * k + start_step)
        for k, d in enumerate(domains)
    ]
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter() - elapsed
    seen = 0
    with training_progress() as progress:
        task = progress.add_task("pretrain", total=config.steps, completed=start_step, stats="")
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_sum, correct, count = 0.0, 0, 0
            for index, feeder in enumerate(feeders):
                images, targets = feeder.next()
                logits = model(images, index)
                loss = loss_fn(logits, targets) / len(feeders)
                loss.backward()
                loss_sum += loss.item()
                correct += int((logits.argmax(1) == targets).sum())
                count += int(targets.numel())
            optimizer.step()
            scheduler.step()
            seen += count
            rate = count / max(time.perf_counter() - t0, 1e-9)
            progress.update(
                task,
                advance=1,
                stats=f"loss {loss_sum:.3f} acc {correct / count:.3f} {rate:,.0f} img/s",
            )
            done = step + 1
            if done % config.checkpoint_every == 0 and done < config.steps:
                _save_checkpoint(
                    run_dir, identity, done, time.perf_counter() - started, model, optimizer
                )
    wall = time.perf_counter() - started
    val = evaluate(model, domains, "val")
    test = evaluate(model, domains, "test")
    totals = backbone_totals(arch)
    record = {
        **identity,
        "labels": {d.name: d.labels for d in domains},
        "val_accuracy": val,
        "test_accuracy": test,
        "mean_test_accuracy": mean(test),
        "backbone_params": totals.params,
        "backbone_macs": totals.macs,
        "wall_time_s": round(wall, 2),
    }
    write_tensors(run_dir / BACKBONE_WEIGHTS, model.state_dict())
    write_json(run_dir / BACKBONE_RECORD, record)
    (run_dir / CHECKPOINT_WEIGHTS).unlink(missing_ok=True)
    (run_dir / CHECKPOINT_RECORD).unlink(missing_ok=True)
    console.print(
        f"backbone: mean test accuracy {mean(test):.4f} "
        + " ".join(f"{k}={v:.3f}" for k, v in test.items())
        + f" | {totals.params:,} params, {totals.macs:,} MACs, {wall:.0f}s"
    )
    return record


def _save_checkpoint(
    run_dir: Path,
    identity: dict[str, Any],
    step: int,
    elapsed: float,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf
    write_tensors(run_dir / CHECKPOINT_WEIGHTS, tensors)
    write_json(run_dir / CHECKPOINT_RECORD, {**identity, "step": step, "elapsed_s": elapsed})


def _resume(
    run_dir: Path,
    identity: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> tuple[int, float]:
    record_path = run_dir / CHECKPOINT_RECORD
    if not record_path.is_file():
        return 0, 0.0
    record = json.loads(record_path.read_text())
    if {k: record.get(k) for k in identity} != identity:
        raise RunError(
            f"{run_dir} holds a checkpoint of another configuration; use a new run directory "
            "or delete the checkpoint"
        )
    tensors = load_file(str(run_dir / CHECKPOINT_WEIGHTS))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for key, buf in tensors.items():
        if key.startswith("momentum."):
            optimizer.state[params[key[9:]]]["momentum_buffer"] = buf.clone()
    step = int(record["step"])
    scheduler.last_epoch = step  # continue the schedule where the checkpoint left it
    for group, base_lr, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * factor(step)
    console.print(f"resuming {run_dir} from step {step}")
    return step, float(record.get("elapsed_s", 0.0))
