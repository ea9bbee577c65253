"""Training checkpoints in a run directory, to resume an interrupted run from.

``checkpoint.safetensors`` holds the model (``model.<name>``) and the optimizer's momentum
buffers (``momentum.<parameter name>``); ``checkpoint.json`` the run's identity, the step, the
time spent so far and the world size that wrote it (information only: any world size resumes,
as every rank holds the same state). Tensors are stored from the CPU and loaded onto the
model's device. A checkpoint is training state, never an artifact: the artifact is written
only by ``multidomain.artifact.write_artifact`` (see ``training.export``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from multidomain.files import read_json, write_json
from training.common import console, write_tensors
from training.errors import RunError

__all__ = [
    "CHECKPOINT_RECORD",
    "CHECKPOINT_WEIGHTS",
    "remove_checkpoint",
    "resume_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_RECORD = "checkpoint.json"


def write_checkpoint(
    run_dir: Path,
    identity: dict[str, Any],
    step: int,
    elapsed: float,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    world_size: int = 1,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf
    write_tensors(run_dir / CHECKPOINT_WEIGHTS, tensors)
    record = {**identity, "step": step, "elapsed_s": elapsed, "world_size": world_size}
    write_json(run_dir / CHECKPOINT_RECORD, record)


def resume_checkpoint(
    run_dir: Path,
    identity: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> tuple[int, float]:
    """Restore model, momentum and schedule from the run's checkpoint; returns the step and the
    seconds spent so far, ``(0, 0.0)`` without a checkpoint. Raises ``RunError`` if the
    checkpoint belongs to another configuration (``identity``)."""
    record_path = run_dir / CHECKPOINT_RECORD
    if not record_path.is_file():
        return 0, 0.0
    record = read_json(record_path, RunError)
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
            param = params[key[9:]]
            optimizer.state[param]["momentum_buffer"] = buf.to(param.device, copy=True)
    step = int(record["step"])
    scheduler.last_epoch = step  # continue the schedule where the checkpoint left it
    for group, base_lr, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * factor(step)
    written_by = int(record.get("world_size", 1))
    console.print(f"resuming {run_dir} from step {step} (written by {written_by} process(es))")
    return step, float(record.get("elapsed_s", 0.0))


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the checkpoint once the run it belongs to has finished."""
    (run_dir / CHECKPOINT_WEIGHTS).unlink(missing_ok=True)
    (run_dir / CHECKPOINT_RECORD).unlink(missing_ok=True)
