"""Where training runs: torchrun's environment all or nothing, the device, the global batch
split over the ranks; one process is exactly the plain run (every collective a no-op)."""

from __future__ import annotations

import pytest
import torch

from training.errors import RunError
from training.runtime import TORCHRUN_VARIABLES, Runtime, torchrun_ranks

FULL = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}


def test_torchrun_ranks_all_or_nothing() -> None:
    assert torchrun_ranks({}) is None
    assert torchrun_ranks(FULL) == (1, 4, 1)
    with pytest.raises(RunError, match="half set: RANK set but WORLD_SIZE, LOCAL_RANK"):
        torchrun_ranks({"RANK": "0"})
    with pytest.raises(RunError, match="ranks must be integers"):
        torchrun_ranks({**FULL, "WORLD_SIZE": "four"})
    with pytest.raises(RunError, match="0 <= RANK < WORLD_SIZE"):
        torchrun_ranks({**FULL, "RANK": "4"})


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runtime = Runtime.from_environment("auto", 3)
    assert runtime == Runtime(torch.device("cpu"), 0, 1, 0, 3)
    assert not runtime.distributed and runtime.is_main and runtime.amp_dtype is None
    with pytest.raises(RunError, match="--device cuda: no CUDA device is available"):
        Runtime.from_environment("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Runtime.from_environment("tpu")
    with pytest.raises(ValueError, match="workers must be >= 0"):
        Runtime.from_environment("cpu", -1)
    for name, value in FULL.items():
        monkeypatch.setenv(name, value)
    assert Runtime.from_environment("cpu").world_size == 4  # read, nothing started


def test_global_batch_splits_evenly() -> None:
    Runtime(world_size=4, rank=1).check_batch_size(32)
    with pytest.raises(ValueError, match=r"batch size 30 .* not divisible by the world size 4"):
        Runtime(world_size=4, rank=1).check_batch_size(30)


def test_one_process_needs_no_process_group() -> None:
    runtime = Runtime()
    module = torch.nn.BatchNorm2d(3)
    with runtime.session() as same, runtime.local_first():
        assert same is runtime and not torch.distributed.is_initialized()
        assert runtime.wrap(module) is module
        counts = torch.tensor([1.0, 2.0])
        assert runtime.all_reduce_sum(counts) is counts and counts.tolist() == [1.0, 2.0]
        module.running_mean += 1
        runtime.average_buffers(module)
        assert module.running_mean.tolist() == [1.0, 1.0, 1.0]
        runtime.barrier()


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA")
def test_precision_and_layout_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU: float32, no loss scaling, contiguous layout (results unchanged). CUDA (chosen here
    without a GPU, nothing runs on it): bfloat16 autocast where supported, else float16 with a
    GradScaler; channels-last."""
    cpu = Runtime()
    assert cpu.amp_dtype is None and cpu.grad_scaler() is None
    assert cpu.memory_format() == torch.contiguous_format
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    cuda = Runtime(device=torch.device("cuda", 0))
    assert cuda.cuda and cuda.memory_format() == torch.channels_last
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert cuda.amp_dtype == torch.bfloat16 and cuda.grad_scaler() is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert cuda.amp_dtype == torch.float16
    assert isinstance(cuda.grad_scaler(), torch.amp.GradScaler)
