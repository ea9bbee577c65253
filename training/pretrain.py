"""Backbone pre-training: the single-domain baseline (or a named set of source domains).

All weights train; each source domain has its own BN set and head and the domains' batches are
interleaved in every step. Writes ``backbone.safetensors`` + ``backbone.json`` (whose ``data``
holds the data digest of every domain the weights were trained on, ``--init-from``'s included)
and keeps a ``checkpoint.safetensors`` + ``checkpoint.json`` to resume from. In a distributed run
(``training.runtime``) every rank trains on its share of each global batch and rank 0 writes;
the batch size is global, so a checkpoint resumes with any world size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from multidomain.arch import ArchSpec
from multidomain.costs import backbone_totals
from multidomain.files import read_json, write_json
from multidomain.network import ResNet26, domain_tensor_name
from multidomain.stats import mean
from training.checkpoint import remove_checkpoint, resume_checkpoint, write_checkpoint
from training.common import console, evaluate, seed_everything, write_tensors
from training.data import DomainData, TrainBatches, check_same_splits, data_record
from training.errors import RunError
from training.loop import StepNetwork, train_steps
from training.runtime import Runtime

__all__ = [
    "BACKBONE_RECORD",
    "BACKBONE_WEIGHTS",
    "PretrainConfig",
    "backbone_record",
    "load_backbone",
    "pretrain_backbone",
]

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_RECORD = "backbone.json"


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0  # initialisation and batch order
    split_seed: int = 0  # the splits the domains were loaded with (recorded, checked by train)
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch size and checkpoint interval must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")


def backbone_record(run_dir: Path) -> dict[str, Any]:
    """The record of a finished pre-training run (its weights not read)."""
    record_path = Path(run_dir) / BACKBONE_RECORD
    if not record_path.is_file() or not (Path(run_dir) / BACKBONE_WEIGHTS).is_file():
        raise RunError(f"no finished backbone in {run_dir} (expected {BACKBONE_RECORD})")
    record: dict[str, Any] = read_json(record_path, RunError)
    return record


def load_backbone(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and weights of a finished pre-training run."""
    record = backbone_record(run_dir)
    return record, load_file(str(Path(run_dir) / BACKBONE_WEIGHTS))


def pretrain_backbone(
    domains: Sequence[DomainData],
    arch: ArchSpec,
    config: PretrainConfig,
    run_dir: Path,
    init_from: Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train (or resume training) the backbone on ``domains``; returns the JSON record.
    ``config.batch_size`` is per domain and step over all ranks of ``runtime``."""
    runtime = runtime or Runtime()
    runtime.check_batch_size(config.batch_size)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    model = ResNet26(arch, [d.num_classes for d in domains])
    data = data_record(domains, config.split_seed)
    if init_from is not None:
        init_record, weights = load_backbone(init_from)
        check_same_splits(init_record.get("data"), data, init_from)
        data = data_record(domains, config.split_seed, init_record["data"]["domains"])
        own = model.state_dict()
        shared = {k: v for k, v in weights.items() if k in own and domain_tensor_name(k) is None}
        for k, v in shared.items():
            if own[k].shape != v.shape:
                raise RunError(f"{init_from}: tensor {k} has another architecture's shape")
        model.load_state_dict(shared, strict=False)
    runtime.place(model)
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
        "data": data,
    }
    finished = run_dir / BACKBONE_RECORD
    if finished.is_file():
        record = read_json(finished, RunError)
        if {k: record.get(k) for k in identity} != identity:
            changed = ", ".join(k for k in identity if record.get(k) != identity[k])
            raise RunError(
                f"{run_dir} already holds a backbone of another configuration (differs in: "
                f"{changed}); use a new run directory"
            )
        console.print(f"reusing the finished backbone in {run_dir}")
        return dict(record)
    start_step, elapsed = resume_checkpoint(run_dir, identity, model, optimizer, scheduler)
    seeds = {k: config.seed + 7 * k + start_step for k in range(len(domains))}
    started = time.perf_counter() - elapsed

    def checkpoint(done: int) -> None:
        runtime.average_buffers(model)
        if runtime.is_main:
            elapsed_s = time.perf_counter() - started
            write_checkpoint(
                run_dir, identity, done, elapsed_s, model, optimizer, runtime.world_size
            )

    with TrainBatches(
        dict(enumerate(domains)), config.batch_size, seeds, **runtime.loader_options()
    ) as batches:
        train_steps(
            runtime.wrap(StepNetwork(model)),
            batches,
            optimizer,
            config.steps,
            "pretrain",
            runtime=runtime,
            after_step=lambda _: scheduler.step(),
            start_step=start_step,
            checkpoint=checkpoint,
            checkpoint_every=config.checkpoint_every,
        )
    wall = time.perf_counter() - started
    runtime.average_buffers(model)
    val = evaluate(model, domains, "val", runtime=runtime)
    test = evaluate(model, domains, "test", runtime=runtime)
    totals = backbone_totals(arch)
    mean_test = mean(test.values())
    record = {
        **identity,
        "labels": {d.name: d.labels for d in domains},
        "val_accuracy": val,
        "test_accuracy": test,
        "mean_test_accuracy": mean_test,
        "backbone_params": totals.params,
        "backbone_macs": totals.macs,
        "wall_time_s": round(wall, 2),
        "world_size": runtime.world_size,
        "device": runtime.device.type,
    }
    if runtime.is_main:
        write_tensors(run_dir / BACKBONE_WEIGHTS, model.state_dict())
        write_json(run_dir / BACKBONE_RECORD, record)
        remove_checkpoint(run_dir)
    runtime.barrier()  # every rank may read the backbone from here on
    console.print(
        f"backbone: mean test accuracy {mean_test:.4f} "
        + " ".join(f"{k}={v:.3f}" for k, v in test.items())
        + f" | {totals.params:,} params, {totals.macs:,} MACs, {wall:.0f}s"
    )
    return record
